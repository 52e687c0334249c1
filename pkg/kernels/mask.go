package kernels

import "sort"

// maskInfo evaluates a Mask on global positions: every row's visible keys are
// one interval [lo, hi).
type maskInfo struct {
	n, nk       int
	causal      bool
	windowed    bool
	left, right int
	qStarts     []int // document starts in the query sequence, plus N
	kStarts     []int // document starts in the key sequence, plus Nk
	none        bool  // nothing is masked
}

func newMaskInfo(p *Params) *maskInfo {
	m := &p.Mask
	mi := &maskInfo{
		n: p.N, nk: p.Nk,
		causal:   m.Causal,
		windowed: m.Windowed && (m.Left >= 0 || m.Right >= 0),
		left:     m.Left, right: m.Right,
	}
	if m.SeqLens != nil {
		mi.qStarts = prefix(m.SeqLens)
		if m.SeqLensK != nil {
			mi.kStarts = prefix(m.SeqLensK)
		} else {
			mi.kStarts = mi.qStarts
		}
	}
	mi.none = !mi.causal && !mi.windowed && (mi.qStarts == nil || len(mi.qStarts) == 2)
	return mi
}

func prefix(lens []int) []int {
	s := make([]int, len(lens)+1)
	for i, l := range lens {
		s[i+1] = s[i] + l
	}
	return s
}

// rowRange returns the interval [lo, hi) of keys query i sees; lo == hi when none.
func (mi *maskInfo) rowRange(i int) (lo, hi int) {
	if mi.none {
		return 0, mi.nk
	}
	qs, ks, lq, lk := 0, 0, mi.n, mi.nk
	if mi.qStarts != nil {
		d := sort.SearchInts(mi.qStarts, i+1) - 1
		qs, lq = mi.qStarts[d], mi.qStarts[d+1]-mi.qStarts[d]
		ks, lk = mi.kStarts[d], mi.kStarts[d+1]-mi.kStarts[d]
	}
	lo, hi = ks, ks+lk
	diag := ks + (i - qs) + (lk - lq) // the key aligned with query i
	if mi.causal && diag+1 < hi {
		hi = diag + 1
	}
	if mi.windowed {
		if mi.left >= 0 && diag-mi.left > lo {
			lo = diag - mi.left
		}
		if mi.right >= 0 && diag+mi.right+1 < hi {
			hi = diag + mi.right + 1
		}
	}
	if hi < lo {
		hi = lo
	}
	return lo, hi
}

// tileClass is how a mask covers a (query tile, key tile) rectangle.
type tileClass uint8

const (
	tileHidden  tileClass = iota // no pair visible: skip without reading memory
	tileFull                     // every pair visible: no masking needed
	tilePartial                  // per-row ranges apply
)

// classify fills lo/hi with each row's visible range clipped to [k0, k1) and
// classifies the tile of rows [q0, q0+len(lo)).
func (mi *maskInfo) classify(q0 int, k0, k1 int, lo, hi []int32) tileClass {
	if mi.none {
		return tileFull
	}
	hidden, full := true, true
	for r := range lo {
		a, b := mi.rowRange(q0 + r)
		if a < k0 {
			a = k0
		}
		if b > k1 {
			b = k1
		}
		if b < a {
			b = a
		}
		lo[r], hi[r] = int32(a), int32(b)
		if b > a {
			hidden = false
		}
		if a != k0 || b != k1 {
			full = false
		}
	}
	switch {
	case hidden:
		return tileHidden
	case full:
		return tileFull
	}
	return tilePartial
}
