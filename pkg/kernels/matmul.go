package kernels

// MatMulT computes C[m×n] = A[m×k]·B[n×k]ᵀ (acc false) or C += A·Bᵀ (acc
// true), all row-major with leading dimensions lda, ldb, ldc; it is
// torch.nn.Linear's y = x·Wᵀ with W stored [out, in]:
//
//	for i < m, j < n: c[i*ldc+j] = (acc ? c[i*ldc+j] : 0) + Σ_{p<k} a[i*lda+p]·b[j*ldb+p]
//
// It packs Bᵀ once and runs the implementation's GEMM micro-kernel on all
// cores (GOMAXPROCS). Bad shapes or short slices return an error wrapping
// ErrInvalid naming the argument; C is not touched then.
func MatMulT(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool) error {
	switch {
	case m < 0:
		return invalid("matmul m = %d, expected >= 0", m)
	case n < 0:
		return invalid("matmul n = %d, expected >= 0", n)
	case k < 0:
		return invalid("matmul k = %d, expected >= 0", k)
	case lda < max(k, 1):
		return invalid("matmul lda = %d, expected >= k = %d", lda, k)
	case ldb < max(k, 1):
		return invalid("matmul ldb = %d, expected >= k = %d", ldb, k)
	case ldc < max(n, 1):
		return invalid("matmul ldc = %d, expected >= n = %d", ldc, n)
	}
	if m == 0 || n == 0 {
		return nil
	}
	if need := (m-1)*lda + k; k > 0 && len(a) < need {
		return invalid("matmul a has %d values, expected >= %d ((m-1)·lda + k)", len(a), need)
	}
	if need := (n-1)*ldb + k; k > 0 && len(b) < need {
		return invalid("matmul b has %d values, expected >= %d ((n-1)·ldb + k)", len(b), need)
	}
	if need := (m-1)*ldc + n; len(c) < need {
		return invalid("matmul c has %d values, expected >= %d ((m-1)·ldc + n)", len(c), need)
	}
	if k == 0 {
		if !acc {
			for i := 0; i < m; i++ {
				clear(c[i*ldc : i*ldc+n])
			}
		}
		return nil
	}
	im := active
	// Bᵀ packed as panels of pw columns, each [k × pw] contiguous (rows of
	// a panel at a large power-of-two stride would share L1 sets), the last
	// one zero-padded: bt[(j/pw)·pw·k + p·pw + j%pw] = b[j][p].
	const pw = 64
	np := roundUp(n, pw)
	bt := make([]float32, k*np)
	parallelFor(np/pw, 0, func(_ *scratch, u int) {
		j0, j1 := u*pw, min(u*pw+pw, n)
		panel := bt[u*pw*k : (u+1)*pw*k]
		for j := j0; j < j1; j++ {
			bj := b[j*ldb : j*ldb+k]
			for p, x := range bj {
				panel[p*pw+j-j0] = x
			}
		}
	})
	// Blocks of mb rows × nb columns of C, kb of the inner dimension at a
	// time: one packed panel block (kb × pw) stays in L1.
	const mb, nb, kb = 192, 4 * pw, 128
	mBlocks, nBlocks := (m+mb-1)/mb, (n+nb-1)/nb
	parallelFor(mBlocks*nBlocks, 0, func(_ *scratch, u int) {
		i0, jb := (u/nBlocks)*mb, (u%nBlocks)*nb
		rows := min(mb, m-i0)
		for p0 := 0; p0 < k; p0 += kb {
			kk := min(kb, k-p0)
			for j0 := jb; j0 < min(jb+nb, n); j0 += pw {
				cols := min(pw, n-j0)
				im.gemmNN(rows, cols, kk, a[i0*lda+p0:], lda, bt[j0*k+p0*pw:], pw, c[i0*ldc+j0:], ldc, acc || p0 > 0, nil)
			}
		}
	})
	return nil
}
