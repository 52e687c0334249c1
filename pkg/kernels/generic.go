package kernels

import "math"

// genericImpl is plain Go; it always compiles and is the reference the
// assembly implementations are tested against.
var genericImpl = &impl{
	name:     "generic",
	br:       32,
	bc:       64,
	gemm:     gemmGeneric,
	scaleMax: scaleMaxGeneric,
	expSum:   expSumGeneric,
	scal:     scalGeneric,
}

func gemmGeneric(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool) {
	for i := 0; i < m; i++ {
		ci := c[i*ldc : i*ldc+n]
		if !acc {
			clear(ci)
		}
		ai := a[i*lda : i*lda+k]
		for p, x := range ai {
			if x == 0 {
				continue
			}
			bp := b[p*ldb : p*ldb+n]
			for j, y := range bp {
				ci[j] += x * y
			}
		}
	}
}

func scaleMaxGeneric(x []float32, scale float32) float32 {
	mx := negInf
	for i, v := range x {
		v *= scale
		x[i] = v
		if v > mx {
			mx = v
		}
	}
	return mx
}

func expSumGeneric(x []float32, shift float32) float32 {
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - shift)))
		x[i] = e
		sum += e
	}
	return sum
}

func scalGeneric(x []float32, a float32) {
	for i := range x {
		x[i] *= a
	}
}
