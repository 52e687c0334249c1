package attnref

// MHA is the float64 reference of a multi-head self-attention layer with
// torch.nn.MultiheadAttention (batch_first) conventions: weights are
// [out, in], y = x·Wᵀ + b, heads split evenly.
//
//	x [B, N, dModel]; wq, wk, wv [H·D, dModel]; wo [dModel, H·D]; biases may be nil.
type MHA struct {
	B, N, DModel, Heads, D int
	Mask                   Mask
	Scale                  float64
}

// Forward returns y [B, N, dModel].
func (m *MHA) Forward(x, wq, wk, wv, wo, bq, bk, bv, bo []float32) []float64 {
	hd := m.Heads * m.D
	proj := func(w, b []float32) []float32 {
		// out [B, H, N, D], rounded to float32 as a float32 pipeline would store it.
		out := make([]float32, m.B*m.Heads*m.N*m.D)
		for bi := 0; bi < m.B; bi++ {
			for n := 0; n < m.N; n++ {
				xr := x[(bi*m.N+n)*m.DModel : (bi*m.N+n+1)*m.DModel]
				for o := 0; o < hd; o++ {
					var s float64
					for t, xv := range xr {
						s += float64(xv) * float64(w[o*m.DModel+t])
					}
					if b != nil {
						s += float64(b[o])
					}
					h, d := o/m.D, o%m.D
					out[((bi*m.Heads+h)*m.N+n)*m.D+d] = float32(s)
				}
			}
		}
		return out
	}
	q, k, v := proj(wq, bq), proj(wk, bk), proj(wv, bv)
	p := &Problem{B: m.B, Hq: m.Heads, Hkv: m.Heads, N: m.N, Nk: m.N, D: m.D, Scale: m.Scale, Mask: m.Mask}
	o, _ := p.Attention(q, k, v)
	y := make([]float64, m.B*m.N*m.DModel)
	for bi := 0; bi < m.B; bi++ {
		for n := 0; n < m.N; n++ {
			for j := 0; j < m.DModel; j++ {
				var s float64
				for h := 0; h < m.Heads; h++ {
					for d := 0; d < m.D; d++ {
						s += o[((bi*m.Heads+h)*m.N+n)*m.D+d] * float64(wo[j*hd+h*m.D+d])
					}
				}
				if bo != nil {
					s += float64(bo[j])
				}
				y[(bi*m.N+n)*m.DModel+j] = s
			}
		}
	}
	return y
}
