package ringattn

import (
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// Layer is a multi-head self-attention layer with torch.nn.MultiheadAttention
// conventions (batch first, weights [out, in], y = x·Wᵀ + b):
//
//	q, k, v = split_heads(x·Wqᵀ + bq), split_heads(x·Wkᵀ + bk), split_heads(x·Wvᵀ + bv)
//	y       = merge_heads(attention(q, k, v))·Woᵀ + bo
//
// with x [B, N, DModel], Wq, Wk, Wv [Heads·D, DModel], Wo [DModel, Heads·D];
// biases may be nil. The projections are row-wise, so a rank projects only
// its own sequence blocks (Project on [B, len, DModel] rows) and applies
// Output to its own output rows.
type Layer struct {
	DModel, Heads, D int
	Wq, Wk, Wv, Wo   []float32
	Bq, Bk, Bv, Bo   []float32
}

// Validate reports the first field of l with a wrong value or length.
func (l *Layer) Validate() error {
	switch {
	case l.DModel < 1:
		return invalid("layer DModel = %d, expected >= 1", l.DModel)
	case l.Heads < 1:
		return invalid("layer Heads = %d, expected >= 1", l.Heads)
	case l.D < 1 || l.D > kernels.MaxHeadDim:
		return invalid("layer head dim D = %d, expected 1..%d", l.D, kernels.MaxHeadDim)
	}
	hd := l.Heads * l.D
	for _, w := range []struct {
		name string
		x    []float32
		want int
		opt  bool
	}{
		{"wq", l.Wq, hd * l.DModel, false}, {"wk", l.Wk, hd * l.DModel, false},
		{"wv", l.Wv, hd * l.DModel, false}, {"wo", l.Wo, hd * l.DModel, false},
		{"bq", l.Bq, hd, true}, {"bk", l.Bk, hd, true}, {"bv", l.Bv, hd, true}, {"bo", l.Bo, l.DModel, true},
	} {
		if w.opt && w.x == nil {
			continue
		}
		if len(w.x) != w.want {
			return invalid("layer %s has %d values, expected %d", w.name, len(w.x), w.want)
		}
	}
	return nil
}

// linear returns y [rows, out] = x [rows, in] · wᵀ + bias, w [out, in], with
// the kernels' SIMD GEMM (kernels.MatMulT) on all cores.
func linear(x []float32, rows, in int, w, bias []float32, out int) []float32 {
	y := make([]float32, rows*out)
	if rows == 0 {
		return y
	}
	if bias != nil {
		for r := range rows {
			copy(y[r*out:(r+1)*out], bias)
		}
	}
	// Shapes are checked by Validate and the callers; an error here is a bug.
	if err := kernels.MatMulT(rows, out, in, x, in, w, in, y, out, bias != nil); err != nil {
		panic(err)
	}
	return y
}

// Project maps x [B, n, DModel] (any n consecutive rows of the sequence) to
// q, k, v [B, Heads, n, D].
func (l *Layer) Project(x []float32, b, n int) (q, k, v []float32, err error) {
	if err := l.Validate(); err != nil {
		return nil, nil, nil, err
	}
	if b < 1 || n < 0 || len(x) != b*n*l.DModel {
		return nil, nil, nil, invalid("layer input x has %d values, expected B·n·DModel = %d·%d·%d", len(x), b, n, l.DModel)
	}
	hd := l.Heads * l.D
	split := func(w, bias []float32) []float32 {
		y := linear(x, b*n, l.DModel, w, bias, hd)
		out := make([]float32, len(y))
		for bi := range b {
			for r := range n {
				for h := range l.Heads {
					copy(out[((bi*l.Heads+h)*n+r)*l.D:][:l.D], y[(bi*n+r)*hd+h*l.D:][:l.D])
				}
			}
		}
		return out
	}
	return split(l.Wq, l.Bq), split(l.Wk, l.Bk), split(l.Wv, l.Bv), nil
}

// Output maps attention output rows o [B, Heads, n, D] to y [B, n, DModel].
func (l *Layer) Output(o []float32, b, n int) ([]float32, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	hd := l.Heads * l.D
	if b < 1 || n < 0 || len(o) != b*n*hd {
		return nil, invalid("layer attention output has %d values, expected B·Heads·n·D = %d·%d·%d·%d", len(o), b, l.Heads, n, l.D)
	}
	cat := make([]float32, b*n*hd)
	for bi := range b {
		for h := range l.Heads {
			for r := range n {
				copy(cat[(bi*n+r)*hd+h*l.D:][:l.D], o[((bi*l.Heads+h)*n+r)*l.D:][:l.D])
			}
		}
	}
	return linear(cat, b*n, hd, l.Wo, l.Bo, l.DModel), nil
}

// String describes the layer's shape.
func (l *Layer) String() string {
	return fmt.Sprintf("Layer[d_model=%d heads=%d D=%d bias=%v]", l.DModel, l.Heads, l.D, l.Bq != nil)
}
