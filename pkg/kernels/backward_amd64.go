//go:build !noasm && gc

package kernels

// dsoftmax is dsoftmaxGeneric with the exponentials in assembly.
func (s *simd) dsoftmax(sc, dp []float32, ld, rows, cols int, lse, delta []float32, scale float32) {
	for i := 0; i < rows; i++ {
		si, di := sc[i*ld:i*ld+cols], dp[i*ld:i*ld+cols]
		l, dl := lse[i], delta[i]
		for j := range si {
			si[j] -= l
		}
		s.exp(si)
		for j, e := range si {
			di[j] = scale * e * (di[j] - dl)
		}
	}
}
