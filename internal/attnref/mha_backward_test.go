package attnref

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestAttnrefMHABackwardFiniteDifferences checks MHA.Backward against
// central differences of sum(y·dY) through Forward, for x and every weight
// and bias, with and without a causal mask.
func TestAttnrefMHABackwardFiniteDifferences(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	gen := func(n int, s float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(s * r.NormFloat64())
		}
		return x
	}
	for _, m := range []MHA{
		{B: 1, N: 5, DModel: 6, Heads: 2, D: 3},
		{B: 2, N: 4, DModel: 4, Heads: 2, D: 2, Mask: Mask{Causal: true}},
	} {
		t.Run(fmt.Sprintf("B%d_N%d_causal%v", m.B, m.N, m.Mask.Causal), func(t *testing.T) {
			hd := m.Heads * m.D
			x := gen(m.B*m.N*m.DModel, 1)
			ws := [][]float32{gen(hd*m.DModel, 0.5), gen(hd*m.DModel, 0.5), gen(hd*m.DModel, 0.5), gen(m.DModel*hd, 0.5),
				gen(hd, 0.5), gen(hd, 0.5), gen(hd, 0.5), gen(m.DModel, 0.5)}
			dy := gen(m.B*m.N*m.DModel, 1)
			loss := func() float64 {
				y := m.Forward(x, ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6], ws[7])
				var f float64
				for i, v := range y {
					f += v * float64(dy[i])
				}
				return f
			}
			g := m.Backward(x, ws[0], ws[1], ws[2], ws[3], ws[4], ws[5], ws[6], ws[7], dy)
			named := []struct {
				name string
				at   []float32
				grad []float64
			}{{"x", x, g.DX}, {"wq", ws[0], g.DWq}, {"wk", ws[1], g.DWk}, {"wv", ws[2], g.DWv}, {"wo", ws[3], g.DWo},
				{"bq", ws[4], g.DBq}, {"bk", ws[5], g.DBk}, {"bv", ws[6], g.DBv}, {"bo", ws[7], g.DBo}}
			for _, c := range named {
				if len(c.grad) != len(c.at) {
					t.Fatalf("%s: gradient has %d values, want %d", c.name, len(c.grad), len(c.at))
				}
				for i := range c.at {
					old := c.at[i]
					const eps = 1.0 / 128 // exact in float32 near these values
					c.at[i] = old + eps
					up := loss()
					c.at[i] = old - eps
					down := loss()
					c.at[i] = old
					fd := (up - down) / (float64(old+eps) - float64(old-eps))
					if d := math.Abs(fd - c.grad[i]); d > 2e-3*math.Max(1, math.Abs(fd)) {
						t.Fatalf("%s[%d]: backward %.6g, finite differences %.6g", c.name, i, c.grad[i], fd)
					}
				}
			}
		})
	}
}
