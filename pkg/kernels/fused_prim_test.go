package kernels

import (
	"math"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// TestKernelPrimFusedMax checks that gemmNNMax followed by softmaxColsPre
// (the forward's full tiles) is bit-identical to gemmNN followed by
// softmaxCols, over ragged row counts, several column panels and columns
// that have seen nothing yet (m = -inf), and that gemmNNMax's maxima are
// the columns' maxima.
func TestKernelPrimFusedMax(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		if im.gemmNNMax == nil {
			t.Skip("no fused GEMM in this implementation")
		}
		r := testrand.New(7)
		for _, sh := range [][3]int{{1, 1, 1}, {5, 2, 3}, {6, 1, 128}, {7, 2, 64}, {192, 3, 128}, {100, 1, 17}, {13, 2, 4}} {
			rows, panels, k := sh[0], sh[1], sh[2]
			n := panels * im.nr
			a := r.Slice(rows*k, testrand.Large)
			b := r.Slice(k*n, testrand.Normal)
			m := r.Slice(n, testrand.Large)
			for i := range m {
				if i%3 == 1 {
					m[i] = float32(math.Inf(-1))
				}
			}
			l := r.Slice(n, testrand.Normal)
			for i := range l {
				l[i] = float32(math.Abs(float64(l[i])))
			}
			ldc := n + 5
			c1, c2 := make([]float32, rows*ldc), make([]float32, rows*ldc)
			mx := append([]float32(nil), m...)
			im.gemmNNMax(rows, n, k, a, k, b, n, c1, ldc, mx, nil)
			im.gemmNN(rows, n, k, a, k, b, n, c2, ldc, false, nil)
			for i := range c1 {
				if c1[i] != c2[i] {
					t.Fatalf("rows=%d n=%d k=%d: c[%d] = %g, want %g", rows, n, k, i, c1[i], c2[i])
				}
			}
			for j := 0; j < n; j++ {
				want := m[j]
				for i := 0; i < rows; i++ {
					want = max(want, c2[i*ldc+j])
				}
				if mx[j] != want {
					t.Fatalf("rows=%d n=%d k=%d: mx[%d] = %g, want %g", rows, n, k, j, mx[j], want)
				}
			}
			m1, l1, al1 := append([]float32(nil), m...), append([]float32(nil), l...), make([]float32, n)
			m2, l2, al2 := append([]float32(nil), m...), append([]float32(nil), l...), make([]float32, n)
			im.softmaxColsPre(c1, ldc, rows, m1, l1, al1, mx)
			im.softmaxCols(c2, ldc, rows, m2, l2, al2)
			for _, x := range [][2][]float32{{c1, c2}, {m1, m2}, {l1, l2}, {al1, al2}} {
				for i := range x[0] {
					if math.Float32bits(x[0][i]) != math.Float32bits(x[1][i]) {
						t.Fatalf("rows=%d n=%d k=%d: fused softmax differs at %d: %g, want %g", rows, n, k, i, x[0][i], x[1][i])
					}
				}
			}
		}
	})
}
