package kernels

import (
	"math"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// forEachSIMD runs f with every implementation other than generic.
func forEachSIMD(t *testing.T, f func(t *testing.T, im *impl)) {
	t.Helper()
	n := 0
	for _, name := range order {
		if name == "generic" {
			continue
		}
		n++
		t.Run(name, func(t *testing.T) { f(t, impls[name]) })
	}
	if n == 0 {
		t.Log("no SIMD implementation on this CPU or build; generic only")
	}
}

// relClose reports whether got is within tol of want, relative to scale.
func relClose(got, want, scale, tol float64) bool {
	if math.IsNaN(want) {
		return math.IsNaN(got)
	}
	if math.IsInf(want, 0) {
		return got == want
	}
	return math.Abs(got-want) <= tol*math.Max(scale, math.Abs(want))
}

const guard = 16

func TestKernelPrimExpLengths(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		r := testrand.New(1)
		for n := 0; n <= 300; n++ {
			all, x := testrand.Guarded(n, guard)
			src := r.Slice(n, testrand.Large)
			copy(x, src)
			im.exp(x)
			if !testrand.Intact(all, guard) {
				t.Fatalf("n=%d: wrote outside the slice", n)
			}
			for i := range x {
				if u := expULPs(x[i], src[i]); u > maxExpULPs {
					t.Fatalf("n=%d: exp(%g) = %g, %d ulp from %g", n, src[i], x[i], u, exp32(src[i]))
				}
			}
		}
	})
}

// maxExpULPs bounds the error of the SIMD exp against the correctly rounded
// float32 result.
const maxExpULPs = 2

// expULPs is the distance in units in the last place between got and the
// correctly rounded exp(x) (both are >= 0, so their bit patterns are ordered).
func expULPs(got, x float32) int64 {
	want := exp32(x)
	if math.IsNaN(float64(want)) {
		if math.IsNaN(float64(got)) {
			return 0
		}
		return math.MaxInt64
	}
	d := int64(math.Float32bits(got)) - int64(math.Float32bits(want))
	if d < 0 {
		d = -d
	}
	return d
}

// TestKernelPrimExpRange checks the SIMD exp on a sample of every float32
// bit pattern (both signs, denormals, infinities, NaN) and at the edges.
func TestKernelPrimExpRange(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		stride := uint32(1021)
		if testing.Short() {
			stride = 4093
		}
		var xs []float32
		for b := uint64(0); b < 1<<32; b += uint64(stride) {
			xs = append(xs, math.Float32frombits(uint32(b)))
		}
		inf := float32(math.Inf(1))
		xs = append(xs, 0, -0.0, inf, -inf, float32(math.NaN()), 88.72, 88.73, 89, -87.3, -103.9, -104, -150,
			math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32, 0.34657359, -0.34657359)
		for x := float32(-104); x < 89; x += 0.0137 {
			xs = append(xs, x)
		}
		got := append([]float32(nil), xs...)
		im.exp(got)
		worst, at := int64(0), float32(0)
		for i, x := range xs {
			if u := expULPs(got[i], x); u > worst {
				worst, at = u, x
			}
		}
		t.Logf("%d values, worst %d ulp at exp(%g)", len(xs), worst, at)
		if worst > maxExpULPs {
			t.Fatalf("exp(%g) = %g is %d ulp from %g", at, got[indexOf(xs, at)], worst, exp32(at))
		}
	})
}

func indexOf(xs []float32, x float32) int {
	for i, v := range xs {
		if v == x || (v != v && x != x) {
			return i
		}
	}
	return -1
}
