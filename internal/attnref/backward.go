package attnref

import "math"

// Backward returns the gradients of sum(O·dO) with respect to q, k and v,
// in float64, for float32 inputs q [B,Hq,N,D], k and v [B,Hkv,Nk,D] and
// dO [B,Hq,N,D]: dq is [B,Hq,N,D], dk and dv are [B,Hkv,Nk,D] (for grouped
// heads summed over the query heads of a group). It recomputes the
// probabilities and O in float64, then for every row i and visible key j:
//
//	p_ij  = exp(s_ij - lse_i),  s_ij = scale·q_i·k_j
//	Δ_i   = Σ_t dO_it·O_it
//	ds_ij = p_ij·(dO_i·v_j - Δ_i)
//	dq_i += scale·ds_ij·k_j;  dk_j += scale·ds_ij·q_i;  dv_j += p_ij·dO_i
//
// Rows that see no key contribute nothing (their dq is 0). It costs
// O(B·Hq·N·Nk·D) and shares no code with pkg/kernels.
func (p *Problem) Backward(q, k, v, do []float32) (dq, dk, dv []float64) {
	d := p.D
	scale := p.Scale
	if scale == 0 {
		scale = 1 / math.Sqrt(float64(d))
	}
	ds := p.docs()
	dq = make([]float64, p.B*p.Hq*p.N*d)
	dk = make([]float64, p.B*p.Hkv*p.Nk*d)
	dv = make([]float64, p.B*p.Hkv*p.Nk*d)
	vis := make([]bool, p.Nk)
	s := make([]float64, p.Nk)
	o := make([]float64, d)
	for b := 0; b < p.B; b++ {
		for h := 0; h < p.Hq; h++ {
			kvh := h / (p.Hq / p.Hkv)
			qb := (b*p.Hq + h) * p.N * d
			kb := (b*p.Hkv + kvh) * p.Nk * d
			for i := 0; i < p.N; i++ {
				qi := q[qb+i*d : qb+i*d+d]
				doi := do[qb+i*d : qb+i*d+d]
				mx := math.Inf(-1)
				for j := 0; j < p.Nk; j++ {
					vis[j] = p.visible(ds, i, j)
					if !vis[j] {
						continue
					}
					kj := k[kb+j*d : kb+j*d+d]
					var dot float64
					for t := range qi {
						dot += float64(qi[t]) * float64(kj[t])
					}
					s[j] = dot * scale
					mx = math.Max(mx, s[j])
				}
				if math.IsInf(mx, -1) {
					continue // no visible key
				}
				var sum float64
				for j := 0; j < p.Nk; j++ {
					if vis[j] {
						s[j] = math.Exp(s[j] - mx)
						sum += s[j]
					}
				}
				clear(o)
				for j := 0; j < p.Nk; j++ {
					if !vis[j] {
						continue
					}
					s[j] /= sum // p_ij
					vj := v[kb+j*d : kb+j*d+d]
					for t := range o {
						o[t] += s[j] * float64(vj[t])
					}
				}
				var delta float64
				for t := range o {
					delta += float64(doi[t]) * o[t]
				}
				dqi := dq[qb+i*d : qb+i*d+d]
				for j := 0; j < p.Nk; j++ {
					if !vis[j] {
						continue
					}
					pj := s[j]
					kj := k[kb+j*d : kb+j*d+d]
					vj := v[kb+j*d : kb+j*d+d]
					var dp float64
					for t := range vj {
						dp += float64(doi[t]) * float64(vj[t])
					}
					dsj := pj * (dp - delta) * scale
					dkj := dk[kb+j*d : kb+j*d+d]
					dvj := dv[kb+j*d : kb+j*d+d]
					for t := range dqi {
						dqi[t] += dsj * float64(kj[t])
						dkj[t] += dsj * float64(qi[t])
						dvj[t] += pj * float64(doi[t])
					}
				}
			}
		}
	}
	return dq, dk, dv
}

// MaxAbs returns max |x| over the finite values of x (0 for none).
func MaxAbs(x []float64) float64 {
	var m float64
	for _, v := range x {
		if !math.IsInf(v, 0) && !math.IsNaN(v) {
			m = math.Max(m, math.Abs(v))
		}
	}
	return m
}
