package ringattn_test

import (
	"errors"
	"math"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
)

// TestRingLayerBackward: the layer's gradients (dX, every weight and bias)
// equal the float64 reference's within 2e-4 × max(1, max|ref|), for every
// mask kind, with and without biases, on a ragged length.
func TestRingLayerBackward(t *testing.T) {
	const b, n, dModel, heads, d = 2, 77, 24, 3, 8
	r := testrand.New(202)
	scaled := func(n int, s float64) []float32 {
		x := r.Slice(n, testrand.Normal)
		for i := range x {
			x[i] *= float32(s)
		}
		return x
	}
	hd := heads * d
	masks := []struct {
		name string
		k    kernels.Mask
		a    attnref.Mask
	}{
		{"none", kernels.Mask{}, attnref.Mask{}},
		{"causal", kernels.Mask{Causal: true}, attnref.Mask{Causal: true}},
		{"window", kernels.Mask{Windowed: true, Left: 9, Right: 2}, attnref.Mask{Windowed: true, Left: 9, Right: 2}},
		{"causal+docs", kernels.Mask{Causal: true, SeqLens: []int{30, 46, 1}}, attnref.Mask{Causal: true, SeqLens: []int{30, 46, 1}}},
	}
	for _, bias := range []bool{true, false} {
		for _, m := range masks {
			ws := 1 / math.Sqrt(dModel)
			l := &ringattn.Layer{DModel: dModel, Heads: heads, D: d,
				Wq: scaled(hd*dModel, ws), Wk: scaled(hd*dModel, ws), Wv: scaled(hd*dModel, ws), Wo: scaled(dModel*hd, 1/math.Sqrt(float64(hd)))}
			if bias {
				l.Bq, l.Bk, l.Bv, l.Bo = scaled(hd, 0.1), scaled(hd, 0.1), scaled(hd, 0.1), scaled(dModel, 0.1)
			}
			x := r.Slice(b*n*dModel, testrand.Normal)
			dy := r.Slice(b*n*dModel, testrand.Normal)
			p := &kernels.Params{Shape: kernels.Shape{B: b, Hq: heads, Hkv: heads, D: d}, N: n, Nk: n, Mask: m.k}
			y, g, err := l.Backward(p, x, dy)
			if err != nil {
				t.Fatalf("%s bias=%v: %v", m.name, bias, err)
			}
			mha := &attnref.MHA{B: b, N: n, DModel: dModel, Heads: heads, D: d, Mask: m.a}
			check := func(what string, got []float32, want []float64) {
				t.Helper()
				if len(got) != len(want) {
					t.Fatalf("%s bias=%v %s: %d values, want %d", m.name, bias, what, len(got), len(want))
				}
				tol := 2e-4 * math.Max(1, attnref.MaxAbs(want))
				if diff := attnref.MaxAbsDiff(got, want); !(diff <= tol) {
					t.Fatalf("%s bias=%v %s: max |got - ref| = %.3g > %.3g", m.name, bias, what, diff, tol)
				}
			}
			check("y", y, mha.Forward(x, l.Wq, l.Wk, l.Wv, l.Wo, l.Bq, l.Bk, l.Bv, l.Bo))
			ref := mha.Backward(x, l.Wq, l.Wk, l.Wv, l.Wo, l.Bq, l.Bk, l.Bv, l.Bo, dy)
			check("dx", g.DX, ref.DX)
			check("dwq", g.DWq, ref.DWq)
			check("dwk", g.DWk, ref.DWk)
			check("dwv", g.DWv, ref.DWv)
			check("dwo", g.DWo, ref.DWo)
			if bias {
				check("dbq", g.DBq, ref.DBq)
				check("dbk", g.DBk, ref.DBk)
				check("dbv", g.DBv, ref.DBv)
				check("dbo", g.DBo, ref.DBo)
			} else if g.DBq != nil || g.DBo != nil {
				t.Fatalf("%s: bias gradients of a layer without biases", m.name)
			}
		}
	}
	// A dY of the wrong size is refused naming it.
	l := &ringattn.Layer{DModel: 4, Heads: 1, D: 4, Wq: make([]float32, 16), Wk: make([]float32, 16), Wv: make([]float32, 16), Wo: make([]float32, 16)}
	p := &kernels.Params{Shape: kernels.Shape{B: 1, Hq: 1, Hkv: 1, D: 4}, N: 3, Nk: 3}
	if _, _, err := l.Backward(p, make([]float32, 12), make([]float32, 11)); !errors.Is(err, ringattn.ErrInvalid) {
		t.Fatalf("short dY: %v, want ErrInvalid", err)
	}
}
