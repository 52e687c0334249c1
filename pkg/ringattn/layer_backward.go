package ringattn

import (
	"github.com/ringattn/ringattn/pkg/kernels"
)

// LayerGrads are the gradients of sum(y·dY) of a Layer's forward with
// respect to its input and parameters, shaped like them; the bias
// gradients are nil for a layer without biases.
type LayerGrads struct {
	DX                 []float32 // [B, N, DModel]
	DWq, DWk, DWv, DWo []float32
	DBq, DBk, DBv, DBo []float32
}

// Backward runs the layer's forward on x [B, N, DModel] and returns y and
// the gradients of sum(y·dY), dY like y. It is the unfused chain rule
//
//	dWo = dYᵀ·cat(O),  dbo = Σ_rows dY,  dO = split(dY·Wo)
//	dq, dk, dv = kernels.AttentionBackward(q, k, v, O, LSE, dO)
//	dWq = cat(dq)ᵀ·x,  dbq = Σ_rows cat(dq)   (and so for k, v)
//	dX  = cat(dq)·Wq + cat(dk)·Wk + cat(dv)·Wv
//
// where cat maps [B, Heads, N, D] to rows [B·N, Heads·D] and split is its
// inverse. p gives the mask, scale and threads; its shape must be
// B, Heads, Heads, D with Nk = N.
func (l *Layer) Backward(p *kernels.Params, x, dy []float32) (y []float32, g *LayerGrads, err error) {
	if err := l.Validate(); err != nil {
		return nil, nil, err
	}
	if err := p.Validate(); err != nil {
		return nil, nil, err
	}
	b, n, hd := p.B, p.N, l.Heads*l.D
	switch {
	case p.Hq != l.Heads || p.Hkv != l.Heads || p.D != l.D || p.Nk != n:
		return nil, nil, invalid("layer backward params Hq=%d Hkv=%d D=%d Nk=%d, expected Hq = Hkv = %d, D = %d, Nk = N = %d",
			p.Hq, p.Hkv, p.D, p.Nk, l.Heads, l.D, n)
	case len(x) != b*n*l.DModel:
		return nil, nil, invalid("layer input x has %d values, expected B·N·DModel = %d·%d·%d", len(x), b, n, l.DModel)
	case len(dy) != b*n*l.DModel:
		return nil, nil, invalid("layer dY has %d values, expected B·N·DModel = %d·%d·%d", len(dy), b, n, l.DModel)
	}
	q, k, v, err := l.Project(x, b, n)
	if err != nil {
		return nil, nil, err
	}
	o := make([]float32, len(q))
	lse := make([]float32, b*l.Heads*n)
	if err := kernels.Attention(p, q, k, v, o, lse); err != nil {
		return nil, nil, err
	}
	if y, err = l.Output(o, b, n); err != nil {
		return nil, nil, err
	}
	rows := b * n
	g = &LayerGrads{}
	oc := l.catHeads(o, b, n)
	g.DWo = matmul(l.DModel, hd, rows, transpose(dy, rows, l.DModel), transpose(oc, rows, hd), nil)
	doc := matmul(rows, hd, l.DModel, dy, transpose(l.Wo, l.DModel, hd), nil)
	if l.Bo != nil {
		g.DBo = colSums(dy, rows, l.DModel)
	}
	do := l.splitHeads(doc, b, n)
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
	if err := kernels.AttentionBackward(p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
		return nil, nil, err
	}
	g.DX = make([]float32, rows*l.DModel)
	grads := func(dt, w, bias []float32) (dw, db []float32) {
		dc := l.catHeads(dt, b, n)
		dw = matmul(hd, l.DModel, rows, transpose(dc, rows, hd), transpose(x, rows, l.DModel), nil)
		matmul(rows, l.DModel, hd, dc, transpose(w, hd, l.DModel), g.DX)
		if bias != nil {
			db = colSums(dc, rows, hd)
		}
		return dw, db
	}
	g.DWq, g.DBq = grads(dq, l.Wq, l.Bq)
	g.DWk, g.DBk = grads(dk, l.Wk, l.Bk)
	g.DWv, g.DBv = grads(dv, l.Wv, l.Bv)
	return y, g, nil
}

// catHeads maps t [B, Heads, n, D] to rows [B·n, Heads·D].
func (l *Layer) catHeads(t []float32, b, n int) []float32 {
	hd := l.Heads * l.D
	out := make([]float32, b*n*hd)
	for bi := range b {
		for h := range l.Heads {
			for r := range n {
				copy(out[(bi*n+r)*hd+h*l.D:][:l.D], t[((bi*l.Heads+h)*n+r)*l.D:][:l.D])
			}
		}
	}
	return out
}

// splitHeads maps rows [B·n, Heads·D] to [B, Heads, n, D].
func (l *Layer) splitHeads(t []float32, b, n int) []float32 {
	hd := l.Heads * l.D
	out := make([]float32, b*n*hd)
	for bi := range b {
		for h := range l.Heads {
			for r := range n {
				copy(out[((bi*l.Heads+h)*n+r)*l.D:][:l.D], t[(bi*n+r)*hd+h*l.D:][:l.D])
			}
		}
	}
	return out
}

// transpose returns the [cols, rows] transpose of t [rows, cols].
func transpose(t []float32, rows, cols int) []float32 {
	out := make([]float32, len(t))
	for r := range rows {
		for c := range cols {
			out[c*rows+r] = t[r*cols+c]
		}
	}
	return out
}

// matmul returns c [m, n] = a [m, k] · bᵀ (b [n, k]) on the kernels' GEMM,
// added into acc when acc is not nil (and returned).
func matmul(m, n, k int, a, b, acc []float32) []float32 {
	c := acc
	if c == nil {
		c = make([]float32, m*n)
	}
	if m == 0 || n == 0 {
		return c
	}
	// Shapes come from a validated layer; an error here is a bug.
	if err := kernels.MatMulT(m, n, k, a, max(k, 1), b, max(k, 1), c, n, acc != nil); err != nil {
		panic(err)
	}
	return c
}

func colSums(t []float32, rows, cols int) []float32 {
	s := make([]float64, cols)
	for r := range rows {
		for c := range cols {
			s[c] += float64(t[r*cols+c])
		}
	}
	out := make([]float32, cols)
	for c, v := range s {
		out[c] = float32(v)
	}
	return out
}
