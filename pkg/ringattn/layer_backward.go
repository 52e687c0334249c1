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
	oc := CatHeads(o, b, l.Heads, n, l.D)
	g.DWo = MatMulT(l.DModel, hd, rows, Transpose(dy, rows, l.DModel), Transpose(oc, rows, hd), nil)
	doc := MatMulT(rows, hd, l.DModel, dy, Transpose(l.Wo, l.DModel, hd), nil)
	if l.Bo != nil {
		g.DBo = ColSums(dy, rows, l.DModel)
	}
	do := SplitHeads(doc, b, l.Heads, n, l.D)
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
	if err := kernels.AttentionBackward(p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
		return nil, nil, err
	}
	g.DX = make([]float32, rows*l.DModel)
	grads := func(dt, w, bias []float32) (dw, db []float32) {
		dc := CatHeads(dt, b, l.Heads, n, l.D)
		dw = MatMulT(hd, l.DModel, rows, Transpose(dc, rows, hd), Transpose(x, rows, l.DModel), nil)
		MatMulT(rows, l.DModel, hd, dc, Transpose(w, hd, l.DModel), g.DX)
		if bias != nil {
			db = ColSums(dc, rows, hd)
		}
		return dw, db
	}
	g.DWq, g.DBq = grads(dq, l.Wq, l.Bq)
	g.DWk, g.DBk = grads(dk, l.Wk, l.Bk)
	g.DWv, g.DBv = grads(dv, l.Wv, l.Bv)
	return y, g, nil
}
