// Package attnref is the float64 oracle every test of the project checks
// against: softmax(q·kᵀ·scale + mask)·v computed naively, one (query, key)
// pair at a time, with the mask evaluated pair by pair from its definition.
// It shares no code with pkg/kernels on purpose.
package attnref

import (
	"math"

	"gonum.org/v1/gonum/floats"
)

// Mask mirrors kernels.Mask; see DESIGN.md §2. Left/Right < 0 are unbounded
// and apply only when Windowed.
type Mask struct {
	Causal      bool
	Windowed    bool
	Left, Right int
	SeqLens     []int
	SeqLensK    []int
}

// Problem is a whole attention problem in the [B, H, rows, D] layout.
type Problem struct {
	B, Hq, Hkv, N, Nk, D int
	Scale                float64 // 0 means 1/sqrt(D)
	Mask                 Mask
}

// docs holds the document starts of a Mask (prefix sums, plus the total).
type docs struct{ q, k []int }

func prefix(l []int) []int {
	s := make([]int, len(l)+1)
	for i, x := range l {
		s[i+1] = s[i] + x
	}
	return s
}

func docOf(starts []int, i int) int {
	for d := len(starts) - 2; d >= 0; d-- {
		if i >= starts[d] {
			return d
		}
	}
	return 0
}

func (p *Problem) docs() docs {
	m := &p.Mask
	if m.SeqLens == nil {
		return docs{}
	}
	ds := docs{q: prefix(m.SeqLens)}
	ds.k = ds.q
	if m.SeqLensK != nil {
		ds.k = prefix(m.SeqLensK)
	}
	return ds
}

// visible is Visible with the document starts computed once.
func (p *Problem) visible(ds docs, i, j int) bool {
	m := &p.Mask
	qs, ks, lq, lk := 0, 0, p.N, p.Nk
	if ds.q != nil {
		dq, dk := docOf(ds.q, i), docOf(ds.k, j)
		if dq != dk {
			return false
		}
		qs, lq = ds.q[dq], ds.q[dq+1]-ds.q[dq]
		ks, lk = ds.k[dk], ds.k[dk+1]-ds.k[dk]
	}
	ip, jp := i-qs, j-ks
	off := lk - lq
	if m.Causal && jp > ip+off {
		return false
	}
	if m.Windowed {
		if m.Left >= 0 && jp < ip+off-m.Left {
			return false
		}
		if m.Right >= 0 && jp > ip+off+m.Right {
			return false
		}
	}
	return true
}

// Visible reports whether query i sees key j.
func (p *Problem) Visible(i, j int) bool { return p.visible(p.docs(), i, j) }

// Attention returns o [B,Hq,N,D] and lse [B,Hq,N] in float64 for float32
// inputs q [B,Hq,N,D], k and v [B,Hkv,Nk,D]. Rows that see no key give 0 and -inf.
func (p *Problem) Attention(q, k, v []float32) (o, lse []float64) {
	rows := make([]int, p.N)
	for i := range rows {
		rows[i] = i
	}
	return p.Rows(q, k, v, rows)
}

// MaxAbsDiff returns max |got - want| over all elements, treating equal
// infinities as equal and any NaN in got as +Inf difference.
func MaxAbsDiff(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var m float64
	for i, g := range got {
		w := want[i]
		gf := float64(g)
		if math.IsNaN(gf) {
			return math.Inf(1)
		}
		if math.IsInf(w, 0) || math.IsInf(gf, 0) {
			if gf != w {
				return math.Inf(1)
			}
			continue
		}
		m = math.Max(m, math.Abs(gf-w))
	}
	return m
}

// Rows computes the reference output and LSE of the query rows `rows`
// (positions in [0, N)) for every batch and head: o is [B, Hq, len(rows), D]
// and lse [B, Hq, len(rows)]. It costs O(len(rows)·Nk·D) per head, so large
// problems can be checked on a sample of rows.
func (p *Problem) Rows(q, k, v []float32, rows []int) (o, lse []float64) {
	d := p.D
	scale := p.Scale
	if scale == 0 {
		scale = 1 / math.Sqrt(float64(d))
	}
	ds := p.docs()
	vis := make([][]bool, len(rows))
	for ri, i := range rows {
		vis[ri] = make([]bool, p.Nk)
		for j := range vis[ri] {
			vis[ri][j] = p.visible(ds, i, j)
		}
	}
	o = make([]float64, p.B*p.Hq*len(rows)*d)
	lse = make([]float64, p.B*p.Hq*len(rows))
	s := make([]float64, p.Nk)
	qi := make([]float64, d)
	kj := make([]float64, d)
	for b := 0; b < p.B; b++ {
		for h := 0; h < p.Hq; h++ {
			kvh := h / (p.Hq / p.Hkv)
			qb := (b*p.Hq + h) * p.N * d
			kb := (b*p.Hkv + kvh) * p.Nk * d
			for ri, i := range rows {
				out := (b*p.Hq+h)*len(rows) + ri
				for t := 0; t < d; t++ {
					qi[t] = float64(q[qb+i*d+t])
				}
				mx := math.Inf(-1)
				for j := 0; j < p.Nk; j++ {
					s[j] = math.Inf(-1)
					if !vis[ri][j] {
						continue
					}
					for t := 0; t < d; t++ {
						kj[t] = float64(k[kb+j*d+t])
					}
					s[j] = floats.Dot(qi, kj) * scale
					mx = math.Max(mx, s[j])
				}
				if math.IsInf(mx, -1) {
					lse[out] = math.Inf(-1)
					continue
				}
				var sum float64
				for j := 0; j < p.Nk; j++ {
					if math.IsInf(s[j], -1) {
						continue
					}
					e := math.Exp(s[j] - mx)
					sum += e
					for t := 0; t < d; t++ {
						o[out*d+t] += e * float64(v[kb+j*d+t])
					}
				}
				for t := 0; t < d; t++ {
					o[out*d+t] /= sum
				}
				lse[out] = mx + math.Log(sum)
			}
		}
	}
	return o, lse
}
