package kernels

import "math"

// genericImpl is plain Go; it always compiles and is the reference the
// assembly implementations are tested against.
var genericImpl = &impl{
	name:        "generic",
	br:          32,
	bc:          64,
	nr:          1,
	gemmNN:      gemmNNGeneric,
	gemmTN:      gemmTNGeneric,
	softmaxCols: softmaxColsGeneric,
	exp:         expGeneric,
	dsoftmax:    dsoftmaxGeneric,
	roundBF16:   roundBF16Generic,
}

func gemmNNGeneric(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool, _ []float32) {
	for i := 0; i < m; i++ {
		ci := c[i*ldc : i*ldc+n]
		if !acc {
			clear(ci)
		}
		ai := a[i*lda : i*lda+k]
		for p, x := range ai {
			bp := b[p*ldb : p*ldb+n]
			for j, y := range bp {
				ci[j] += x * y
			}
		}
	}
}

func gemmTNGeneric(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, alpha []float32, _ []float32) {
	for i := 0; i < m; i++ {
		ci := c[i*ldc : i*ldc+n]
		if s := alpha[i]; s != 1 {
			for j := range ci {
				ci[j] *= s
			}
		}
		for p := 0; p < k; p++ {
			x := a[p*lda+i]
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

func softmaxColsGeneric(s []float32, lds, rows int, m, l, alpha []float32) {
	for i := range m {
		mx := m[i]
		for j := 0; j < rows; j++ {
			mx = max(mx, s[j*lds+i])
		}
		sh := max(mx, -math.MaxFloat32)
		alpha[i] = exp32(m[i] - sh)
		var sum float32
		for j := 0; j < rows; j++ {
			e := exp32(s[j*lds+i] - sh)
			s[j*lds+i] = e
			sum += e
		}
		l[i] = l[i]*alpha[i] + sum
		m[i] = mx
	}
}

func expGeneric(x []float32) {
	for i, v := range x {
		x[i] = exp32(v)
	}
}

// bf16 rounds x to the nearest bfloat16, ties to even, and widens it back:
// the top 16 bits of the rounded bit pattern. NaNs stay NaN (quiet),
// infinities stay infinite, finite values past the largest bfloat16 round
// to infinity. It is pkg/transport's f32ToBF16 followed by bf16ToF32.
func bf16(x float32) float32 {
	b := math.Float32bits(x)
	if b&0x7fffffff > 0x7f800000 {
		b |= 0x00400000
	} else {
		b += 0x7fff + (b>>16)&1
	}
	return math.Float32frombits(b &^ 0xffff)
}

func roundBF16Generic(dst, src []float32) {
	src = src[:len(dst)]
	for i, x := range src {
		dst[i] = bf16(x)
	}
}
