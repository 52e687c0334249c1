package worker

import (
	"errors"
	"math"
	"testing"
)

// TestCheckFinite: every non-finite value is found at every position and
// reported at its offset; finite extremes pass.
func TestCheckFinite(t *testing.T) {
	finite := []float32{0, float32(math.Copysign(0, -1)), 1, -1, math.MaxFloat32, -math.MaxFloat32,
		math.SmallestNonzeroFloat32, 1e-40, -1e-40, math.Float32frombits(0x7f7fffff)}
	bad := []float32{float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		math.Float32frombits(0x7fc00001), math.Float32frombits(0xff800001)}
	for n := range 21 {
		x := make([]float32, n)
		for i := range x {
			x[i] = finite[i%len(finite)]
		}
		if err := checkFinite("q", 0, x); err != nil {
			t.Fatalf("%d finite values: %v", n, err)
		}
		for at := range n {
			for _, b := range bad {
				y := append([]float32(nil), x...)
				y[at] = b
				err := checkFinite("k", 3, y)
				var nf *nonFiniteError
				if !errors.As(err, &nf) || nf.index != at || nf.tensor != "k" || nf.block != 3 {
					t.Fatalf("%v at %d of %d: err %v, expected a nonFiniteError at offset %d", b, at, n, err, at)
				}
			}
		}
	}
}

func BenchmarkCheckFinite(b *testing.B) {
	x := make([]float32, 1<<20)
	for i := range x {
		x[i] = float32(i) * 1e-3
	}
	b.SetBytes(4 << 20)
	for b.Loop() {
		if err := checkFinite("q", 0, x); err != nil {
			b.Fatal(err)
		}
	}
}
