package kernels

import (
	"math"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// TestKernelPrimDsoftmax checks every SIMD dsoftmax against the generic
// one on every width 0..130 (whole vectors and tails), several row counts
// and leading dimensions, with NaN guards around both tiles, masked (-inf)
// scores and rows whose lse is +inf (no visible key: P = 0).
func TestKernelPrimDsoftmax(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		r := testrand.New(3)
		inf := float32(math.Inf(1))
		for _, rows := range []int{0, 1, 2, 5} {
			for cols := 0; cols <= 130; cols++ {
				ld := cols + r.Intn(3)
				n := max(0, (rows-1)*ld+cols)
				sAll, s := testrand.Guarded(n, guard)
				dAll, dp := testrand.Guarded(n, guard)
				copy(s, r.Slice(n, testrand.Normal))
				copy(dp, r.Slice(n, testrand.Large))
				for i := 0; i < n; i += 7 {
					s[i] = negInf
				}
				lse := r.Slice(rows, testrand.Normal)
				delta := r.Slice(rows, testrand.Normal)
				if rows > 2 {
					lse[2] = inf
				}
				ws, wd := append([]float32(nil), s...), append([]float32(nil), dp...)
				dsoftmaxGeneric(ws, wd, ld, rows, cols, lse, delta, 0.3)
				im.dsoftmax(s, dp, ld, rows, cols, lse, delta, 0.3)
				if !testrand.Intact(sAll, guard) || !testrand.Intact(dAll, guard) {
					t.Fatalf("rows %d cols %d ld %d: wrote outside the tiles", rows, cols, ld)
				}
				for i := 0; i < rows; i++ {
					for j := 0; j < cols; j++ {
						x := i*ld + j
						if !relClose(float64(s[x]), float64(ws[x]), 0, 3e-7) || !relClose(float64(dp[x]), float64(wd[x]), 1e-30, 1e-6) {
							t.Fatalf("rows %d cols %d ld %d at (%d,%d): p %g dS %g, generic %g %g", rows, cols, ld, i, j, s[x], dp[x], ws[x], wd[x])
						}
					}
					for j := cols; j < ld && i+1 < rows; j++ {
						if x := i*ld + j; s[x] != ws[x] || dp[x] != wd[x] {
							t.Fatalf("rows %d cols %d ld %d: wrote between rows at (%d,%d)", rows, cols, ld, i, j)
						}
					}
				}
			}
		}
	})
}
