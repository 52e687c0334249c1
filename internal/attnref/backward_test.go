package attnref

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// lossOf is sum(O·dO) in float64 with O from Attention (code independent of
// Backward).
func lossOf(p *Problem, q, k, v, do []float32) float64 {
	o, _ := p.Attention(q, k, v)
	var f float64
	for i, x := range o {
		f += x * float64(do[i])
	}
	return f
}

// TestAttnrefBackwardFiniteDifferences checks Backward against central
// differences of sum(O·dO) on tiny problems: every mask kind, grouped heads,
// cross attention and a row that sees no key.
func TestAttnrefBackwardFiniteDifferences(t *testing.T) {
	cases := []Problem{
		{B: 1, Hq: 1, Hkv: 1, N: 5, Nk: 5, D: 3},
		{B: 1, Hq: 2, Hkv: 1, N: 4, Nk: 6, D: 4, Mask: Mask{Causal: true}},
		{B: 2, Hq: 4, Hkv: 2, N: 6, Nk: 6, D: 2, Mask: Mask{Windowed: true, Left: 2, Right: 1}},
		{B: 1, Hq: 2, Hkv: 2, N: 7, Nk: 7, D: 3, Scale: 0.7, Mask: Mask{Causal: true, SeqLens: []int{3, 4}}},
		{B: 1, Hq: 1, Hkv: 1, N: 5, Nk: 4, D: 2, Mask: Mask{Causal: true, SeqLens: []int{2, 3}, SeqLensK: []int{3, 1}}},
		// N > Nk causal: the first row sees no key.
		{B: 1, Hq: 1, Hkv: 1, N: 6, Nk: 5, D: 3, Mask: Mask{Causal: true}},
	}
	r := rand.New(rand.NewPCG(1, 2))
	gen := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		return x
	}
	for ci, p := range cases {
		t.Run(fmt.Sprint(ci), func(t *testing.T) {
			q := gen(p.B * p.Hq * p.N * p.D)
			k := gen(p.B * p.Hkv * p.Nk * p.D)
			v := gen(p.B * p.Hkv * p.Nk * p.D)
			do := gen(p.B * p.Hq * p.N * p.D)
			dq, dk, dv := p.Backward(q, k, v, do)
			worst := 0.0
			for _, x := range []struct {
				name string
				in   []float32
				grad []float64
			}{{"q", q, dq}, {"k", k, dk}, {"v", v, dv}} {
				for i := range x.in {
					orig := x.in[i]
					const h = 1e-3
					hi, lo := orig+h, orig-h
					x.in[i] = hi
					fp := lossOf(&p, q, k, v, do)
					x.in[i] = lo
					fm := lossOf(&p, q, k, v, do)
					x.in[i] = orig
					fd := (fp - fm) / (float64(hi) - float64(lo))
					e := math.Abs(fd-x.grad[i]) / math.Max(1, math.Abs(fd))
					worst = math.Max(worst, e)
					if !(e <= 1e-5) {
						t.Fatalf("%+v: d/d%s[%d] = %g, finite difference %g", p, x.name, i, x.grad[i], fd)
					}
				}
			}
			t.Logf("worst relative difference %.2g", worst)
			if p.N == 6 && p.Nk == 5 {
				for t2 := 0; t2 < p.D; t2++ {
					if dq[t2] != 0 {
						t.Fatalf("row 0 sees no key but dq = %v", dq[:p.D])
					}
				}
			}
		})
	}
}
