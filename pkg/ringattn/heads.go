package ringattn

import "github.com/ringattn/ringattn/pkg/kernels"

// Row layouts of a layer's tensors: attention works on [B, H, n, D], the
// projections on rows [B·n, H·D]. These helpers convert between them and
// do the small products of a layer's gradients; Layer.Backward and the
// worker's per-block gradient shares use the same ones.

// CatHeads maps t [B, H, n, D] to rows [B·n, H·D].
func CatHeads(t []float32, b, h, n, d int) []float32 {
	hd := h * d
	out := make([]float32, b*n*hd)
	for bi := range b {
		for hi := range h {
			for r := range n {
				copy(out[(bi*n+r)*hd+hi*d:][:d], t[((bi*h+hi)*n+r)*d:][:d])
			}
		}
	}
	return out
}

// CatHeadsT maps t [B, H, n, D] to cat(t)ᵀ [H·D, B·n].
func CatHeadsT(t []float32, b, h, n, d int) []float32 {
	rows := b * n
	out := make([]float32, h*d*rows)
	for bi := range b {
		for hi := range h {
			for r := range n {
				for c, v := range t[((bi*h+hi)*n+r)*d:][:d] {
					out[(hi*d+c)*rows+bi*n+r] = v
				}
			}
		}
	}
	return out
}

// SplitHeads maps rows [B·n, H·D] to [B, H, n, D].
func SplitHeads(t []float32, b, h, n, d int) []float32 {
	hd := h * d
	out := make([]float32, b*n*hd)
	for bi := range b {
		for hi := range h {
			for r := range n {
				copy(out[((bi*h+hi)*n+r)*d:][:d], t[(bi*n+r)*hd+hi*d:][:d])
			}
		}
	}
	return out
}

// Transpose returns the [cols, rows] transpose of t [rows, cols].
func Transpose(t []float32, rows, cols int) []float32 {
	out := make([]float32, len(t))
	for r := range rows {
		for c := range cols {
			out[c*rows+r] = t[r*cols+c]
		}
	}
	return out
}

// MatMulT returns c [m, n] = a [m, k] · bᵀ (b [n, k]) on the kernels'
// GEMM, added into acc when acc is not nil (and returned). The shapes come
// from a validated layer and checked blocks: a GEMM error is a bug, and
// panics (contained by the caller's guards).
func MatMulT(m, n, k int, a, b, acc []float32) []float32 {
	c := acc
	if c == nil {
		c = make([]float32, m*n)
	}
	if m == 0 || n == 0 || k == 0 {
		return c
	}
	if err := kernels.MatMulT(m, n, k, a, k, b, k, c, n, acc != nil); err != nil {
		panic(err)
	}
	return c
}

// ColSums returns the column sums of t [rows, cols], summed in float64.
func ColSums(t []float32, rows, cols int) []float32 {
	s := make([]float64, cols)
	for r := range rows {
		for c, v := range t[r*cols : (r+1)*cols] {
			s[c] += float64(v)
		}
	}
	out := make([]float32, cols)
	for c, v := range s {
		out[c] = float32(v)
	}
	return out
}
