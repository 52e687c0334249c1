//go:build !noasm && gc

package kernels

// dsoftmax runs the assembly on the columns in whole vectors and the
// generic code on the rest (callers pad to nr, so there is none in the
// backward pass).
func (s *simd) dsoftmax(sc, dp []float32, ld, rows, cols int, lse, delta []float32, scale float32) {
	if rows <= 0 || cols <= 0 {
		return
	}
	full := cols - cols%s.w
	if full > 0 {
		sp := sc[:(rows-1)*ld+full]
		dq := dp[:(rows-1)*ld+full]
		if raceEnabled {
			raceTile(sp, rows, full, ld, true)
			raceTile(dq, rows, full, ld, true)
			raceTile(lse, 1, rows, rows, false)
			raceTile(delta, 1, rows, rows, false)
		}
		s.ds(sp, dq, ld, rows, full, lse[:rows], delta[:rows], scale)
	}
	if full < cols {
		dsoftmaxGeneric(sc[full:], dp[full:], ld, rows, cols-full, lse, delta, scale)
	}
}
