package kernels

import (
	"math"
	"sort"
)

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

// spans are the visible key ranges of a block of query rows, computed once
// so that classifying each key tile costs no mask evaluation.
type spans struct {
	none         bool    // nothing masked
	lo, hi       []int32 // row r sees keys [lo[r], hi[r])
	minLo, maxHi int32   // over the rows that see some key
	maxLo, minHi int32   // over all rows (a row seeing nothing spoils "full")
	empty        bool    // no row sees any key
}

// spans fills sp with the ranges of rows [q0, q0+len(lo)); lo and hi are
// the caller's buffers.
func (mi *maskInfo) spans(q0 int, lo, hi []int32, sp *spans) {
	*sp = spans{none: mi.none, lo: lo, hi: hi, empty: true,
		minLo: math.MaxInt32, maxHi: math.MinInt32, maxLo: math.MinInt32, minHi: math.MaxInt32}
	if mi.none {
		sp.empty = len(lo) == 0 || mi.nk == 0
		sp.minLo, sp.maxHi, sp.maxLo, sp.minHi = 0, int32(mi.nk), 0, int32(mi.nk)
		return
	}
	for r := range lo {
		a, b := mi.rowRange(q0 + r)
		lo[r], hi[r] = int32(a), int32(b)
		sp.maxLo = max(sp.maxLo, int32(a))
		sp.minHi = min(sp.minHi, int32(b))
		if b > a {
			sp.empty = false
			sp.minLo = min(sp.minLo, int32(a))
			sp.maxHi = max(sp.maxHi, int32(b))
		}
	}
}

// sees reports whether some row of the spans sees some key of block b.
func (sp *spans) sees(b KV) bool {
	return !sp.empty && b.N > 0 && int(sp.maxHi) > b.Start && int(sp.minLo) < b.Start+b.N
}

// seesAny reports whether some row of the spans sees some key of the blocks.
func (sp *spans) seesAny(blocks []KV) bool {
	for _, b := range blocks {
		if sp.sees(b) {
			return true
		}
	}
	return false
}

// classify classifies the tile of keys [k0, k1) for the rows of sp; for a
// partial tile it fills lo/hi with each row's range clipped to [k0, k1)
// (lo == hi when the row sees none of it).
func (sp *spans) classify(k0, k1 int, lo, hi []int32) tileClass {
	a0, a1 := int32(k0), int32(k1)
	switch {
	case sp.none:
		return tileFull
	case sp.empty || a1 <= sp.minLo || a0 >= sp.maxHi:
		return tileHidden
	case sp.maxLo <= a0 && sp.minHi >= a1:
		return tileFull
	}
	hidden := true
	for r := range lo {
		a, b := max(sp.lo[r], a0), min(sp.hi[r], a1)
		if b <= a {
			a, b = a0, a0
		} else {
			hidden = false
		}
		lo[r], hi[r] = a, b
	}
	if hidden {
		return tileHidden
	}
	return tilePartial
}
