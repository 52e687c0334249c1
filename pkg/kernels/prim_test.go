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

// gemmCase is one GEMM shape; ld* exceed the minimum so that writes into
// the gaps between rows are caught too.
type gemmCase struct{ m, n, k int }

func gemmCases() []gemmCase {
	var cs []gemmCase
	for x := 0; x <= 300; x++ {
		cs = append(cs, gemmCase{x, 67, 5}, gemmCase{7, x, 3}, gemmCase{13, 70, x})
	}
	return cs
}

// guardedMatrix returns an m×ld matrix inside guards, with the columns in
// [n, ld) of every row set to NaN as well; intactMatrix checks all of them.
func guardedMatrix(r *testrand.Rand, m, n, ld int) (all, x []float32) {
	all, x = testrand.Guarded(max(m*ld, 0), guard)
	for i := 0; i < m; i++ {
		copy(x[i*ld:i*ld+n], r.Slice(n, testrand.Normal))
		for j := n; j < ld; j++ {
			x[i*ld+j] = float32(math.NaN())
		}
	}
	return all, x
}

func intactMatrix(all, x []float32, m, n, ld int) bool {
	if !testrand.Intact(all, guard) {
		return false
	}
	for i := 0; i < m; i++ {
		for j := n; j < ld; j++ {
			if !math.IsNaN(float64(x[i*ld+j])) {
				return false
			}
		}
	}
	return true
}

// TestKernelPrimGemmNN checks gemmNN against a float64 loop on every length
// 0..300 of each dimension, with and without accumulation.
func TestKernelPrimGemmNN(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		r := testrand.New(2)
		for _, c := range gemmCases() {
			for _, acc := range []bool{false, true} {
				lda, ldb, ldc := c.k+3, c.n+5, c.n+2
				a := r.Slice(c.m*lda, testrand.Normal)
				b := r.Slice(max(c.k*ldb, 0), testrand.Normal)
				all, cm := guardedMatrix(r, c.m, c.n, ldc)
				c0 := append([]float32(nil), cm...)
				im.gemmNN(c.m, c.n, c.k, a, lda, b, ldb, cm, ldc, acc, nil)
				if !intactMatrix(all, cm, c.m, c.n, ldc) {
					t.Fatalf("%+v acc=%v: wrote outside C", c, acc)
				}
				for i := 0; i < c.m; i++ {
					for j := 0; j < c.n; j++ {
						var want, mag float64
						if acc {
							want, mag = float64(c0[i*ldc+j]), math.Abs(float64(c0[i*ldc+j]))
						}
						for p := 0; p < c.k; p++ {
							x := float64(a[i*lda+p]) * float64(b[p*ldb+j])
							want += x
							mag += math.Abs(x)
						}
						if got := float64(cm[i*ldc+j]); math.Abs(got-want) > 1e-6*mag+1e-30 {
							t.Fatalf("%+v acc=%v: c[%d][%d] = %g, want %g", c, acc, i, j, got, want)
						}
					}
				}
			}
		}
	})
}

// TestKernelPrimGemmTN checks gemmTN (k-major A, alpha row scale) likewise.
func TestKernelPrimGemmTN(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		r := testrand.New(3)
		for _, c := range gemmCases() {
			lda, ldb, ldc := c.m+3, c.n+5, c.n+2
			a := r.Slice(c.k*lda, testrand.Normal)
			b := r.Slice(c.k*ldb, testrand.Normal)
			alpha := r.Slice(c.m, testrand.Normal)
			if c.m > 2 {
				alpha[0], alpha[1] = 0, 1
			}
			all, cm := guardedMatrix(r, c.m, c.n, ldc)
			c0 := append([]float32(nil), cm...)
			im.gemmTN(c.m, c.n, c.k, a, lda, b, ldb, cm, ldc, alpha, nil)
			if !intactMatrix(all, cm, c.m, c.n, ldc) {
				t.Fatalf("%+v: wrote outside C", c)
			}
			for i := 0; i < c.m; i++ {
				for j := 0; j < c.n; j++ {
					want := float64(alpha[i]) * float64(c0[i*ldc+j])
					mag := math.Abs(want)
					for p := 0; p < c.k; p++ {
						x := float64(a[p*lda+i]) * float64(b[p*ldb+j])
						want += x
						mag += math.Abs(x)
					}
					if got := float64(cm[i*ldc+j]); math.Abs(got-want) > 1e-6*mag+1e-30 {
						t.Fatalf("%+v: c[%d][%d] = %g, want %g", c, i, j, got, want)
					}
				}
			}
		}
	})
}

// TestKernelPrimSoftmaxCols checks softmaxCols against the generic code on
// every column count and row count 0..300, with masked (-inf) entries,
// fully masked columns and columns whose running max is still -inf.
func TestKernelPrimSoftmaxCols(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		r := testrand.New(4)
		ninf := float32(math.Inf(-1))
		var shapes [][2]int
		for x := 0; x <= 300; x++ {
			shapes = append(shapes, [2]int{x, 37}, [2]int{3 * im.nr, x})
		}
		for _, sh := range shapes {
			cols, rows := sh[0], sh[1]
			lds := cols + 3
			s := r.Slice(rows*lds, testrand.Large)
			m := r.Slice(cols, testrand.Large)
			l := r.Slice(cols, testrand.Normal)
			for i := range m {
				l[i] = float32(math.Abs(float64(l[i])))
				switch i % 5 {
				case 1:
					m[i], l[i] = ninf, 0 // nothing seen yet
				case 2: // column fully masked in this tile
					for j := 0; j < rows; j++ {
						s[j*lds+i] = ninf
					}
				case 3: // masked at the ends
					for j := 0; j < rows; j++ {
						if j < rows/3 || j > 2*rows/3 {
							s[j*lds+i] = ninf
						}
					}
				}
			}
			if cols > 6 { // never seen anything and fully masked
				m[6], l[6] = ninf, 0
				for j := 0; j < rows; j++ {
					s[j*lds+6] = ninf
				}
			}
			s2, m2, l2 := append([]float32(nil), s...), append([]float32(nil), m...), append([]float32(nil), l...)
			allA, alpha := testrand.Guarded(cols, guard)
			alpha2 := make([]float32, cols)
			allS, sg := testrand.Guarded(len(s), guard)
			copy(sg, s)
			allM, mg := testrand.Guarded(cols, guard)
			copy(mg, m)
			allL, lg := testrand.Guarded(cols, guard)
			copy(lg, l)
			im.softmaxCols(sg, lds, rows, mg, lg, alpha)
			softmaxColsGeneric(s2, lds, rows, m2, l2, alpha2)
			for _, a := range [][]float32{allA, allS, allM, allL} {
				if !testrand.Intact(a, guard) {
					t.Fatalf("cols=%d rows=%d: wrote outside an argument", cols, rows)
				}
			}
			for i := 0; i < cols; i++ {
				if mg[i] != m2[i] && !(math.IsInf(float64(mg[i]), -1) && math.IsInf(float64(m2[i]), -1)) {
					t.Fatalf("cols=%d rows=%d: m[%d] = %g, want %g", cols, rows, i, mg[i], m2[i])
				}
				if !relClose(float64(alpha[i]), float64(alpha2[i]), 1e-30, 1e-6) {
					t.Fatalf("cols=%d rows=%d: alpha[%d] = %g, want %g", cols, rows, i, alpha[i], alpha2[i])
				}
				if !relClose(float64(lg[i]), float64(l2[i]), 1e-30, 1e-5) {
					t.Fatalf("cols=%d rows=%d: l[%d] = %g, want %g", cols, rows, i, lg[i], l2[i])
				}
				for j := 0; j < rows; j++ {
					if !relClose(float64(sg[j*lds+i]), float64(s2[j*lds+i]), 1e-30, 1e-6) {
						t.Fatalf("cols=%d rows=%d: p[%d][%d] = %g, want %g", cols, rows, j, i, sg[j*lds+i], s2[j*lds+i])
					}
				}
			}
			// The gap columns [cols, lds) are untouched.
			for j := 0; j < rows; j++ {
				for i := cols; i < lds; i++ {
					if sg[j*lds+i] != s[j*lds+i] && !(sg[j*lds+i] != sg[j*lds+i]) {
						t.Fatalf("cols=%d rows=%d: wrote s[%d][%d] outside the columns", cols, rows, j, i)
					}
				}
			}
		}
	})
}
