package attnref

// MHAGrads are the gradients of sum(y·dY) for a layer's forward, in
// float64; a bias gradient is nil when the layer has no biases.
type MHAGrads struct {
	DX                 []float64 // [B, N, dModel]
	DWq, DWk, DWv, DWo []float64 // like the weights
	DBq, DBk, DBv, DBo []float64 // like the biases
}

// Backward returns the gradients of sum(y·dY) with respect to x, the
// weights and the biases (when given) of the layer's Forward:
//
//	dWo = dYᵀ·cat(O), dbo = Σ_rows dY, dO = split(dY·Wo)
//	dq, dk, dv = attention backward of dO (Problem.Backward)
//	dWq = cat(dq)ᵀ·x, dbq = Σ_rows cat(dq)   (and so for k, v)
//	dX  = cat(dq)·Wq + cat(dk)·Wk + cat(dv)·Wv
//
// The projections are rounded to float32 as Forward rounds them (a float32
// pipeline stores them so); every sum is in float64.
func (m *MHA) Backward(x, wq, wk, wv, wo, bq, bk, bv, bo, dy []float32) MHAGrads {
	hd := m.Heads * m.D
	rows := m.B * m.N
	proj := func(w, b []float32) []float32 {
		out := make([]float32, m.B*m.Heads*m.N*m.D)
		for r := 0; r < rows; r++ {
			bi, n := r/m.N, r%m.N
			xr := x[r*m.DModel : (r+1)*m.DModel]
			for o := 0; o < hd; o++ {
				var s float64
				for t, xv := range xr {
					s += float64(xv) * float64(w[o*m.DModel+t])
				}
				if b != nil {
					s += float64(b[o])
				}
				out[((bi*m.Heads+o/m.D)*m.N+n)*m.D+o%m.D] = float32(s)
			}
		}
		return out
	}
	// cat maps [B, H, N, D] to rows [B·N, H·D].
	cat := func(t []float64) []float64 {
		out := make([]float64, rows*hd)
		for r := 0; r < rows; r++ {
			bi, n := r/m.N, r%m.N
			for o := 0; o < hd; o++ {
				out[r*hd+o] = t[((bi*m.Heads+o/m.D)*m.N+n)*m.D+o%m.D]
			}
		}
		return out
	}
	q, k, v := proj(wq, bq), proj(wk, bk), proj(wv, bv)
	p := &Problem{B: m.B, Hq: m.Heads, Hkv: m.Heads, N: m.N, Nk: m.N, D: m.D, Scale: m.Scale, Mask: m.Mask}
	o, _ := p.Attention(q, k, v)
	oc := cat(o)
	var g MHAGrads
	g.DWo = make([]float64, m.DModel*hd)
	do := make([]float32, m.B*m.Heads*m.N*m.D)
	for r := 0; r < rows; r++ {
		bi, n := r/m.N, r%m.N
		dyr := dy[r*m.DModel : (r+1)*m.DModel]
		for j, dv := range dyr {
			for c := 0; c < hd; c++ {
				g.DWo[j*hd+c] += float64(dv) * oc[r*hd+c]
			}
		}
		for c := 0; c < hd; c++ {
			var s float64
			for j, dv := range dyr {
				s += float64(dv) * float64(wo[j*hd+c])
			}
			do[((bi*m.Heads+c/m.D)*m.N+n)*m.D+c%m.D] = float32(s)
		}
	}
	if bo != nil {
		g.DBo = colSums(dy, rows, m.DModel)
	}
	dq, dk, dv := p.Backward(q, k, v, do)
	dx := make([]float64, rows*m.DModel)
	grads := func(dt []float64, w, b []float32) (dw, db []float64) {
		dc := cat(dt)
		dw = make([]float64, hd*m.DModel)
		for r := 0; r < rows; r++ {
			xr := x[r*m.DModel : (r+1)*m.DModel]
			for c := 0; c < hd; c++ {
				g := dc[r*hd+c]
				for t, xv := range xr {
					dw[c*m.DModel+t] += g * float64(xv)
					dx[r*m.DModel+t] += g * float64(w[c*m.DModel+t])
				}
			}
		}
		if b != nil {
			db = make([]float64, hd)
			for r := 0; r < rows; r++ {
				for c := 0; c < hd; c++ {
					db[c] += dc[r*hd+c]
				}
			}
		}
		return dw, db
	}
	g.DWq, g.DBq = grads(dq, wq, bq)
	g.DWk, g.DBk = grads(dk, wk, bk)
	g.DWv, g.DBv = grads(dv, wv, bv)
	g.DX = dx
	return g
}

func colSums(t []float32, rows, cols int) []float64 {
	s := make([]float64, cols)
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			s[c] += float64(t[r*cols+c])
		}
	}
	return s
}
