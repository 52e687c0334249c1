package mask

import "math"

// Class is how a mask covers a tile: a rectangle of query rows by keys.
type Class uint8

const (
	// Hidden: no pair of the tile is visible; skip it without reading
	// its memory.
	Hidden Class = iota
	// Full: every pair is visible; no masking is needed.
	Full
	// Partial: some pairs are visible; each row's range applies.
	Partial
)

// String returns "hidden", "full" or "partial".
func (c Class) String() string {
	switch c {
	case Hidden:
		return "hidden"
	case Full:
		return "full"
	case Partial:
		return "partial"
	}
	return "Class(?)"
}

// Rows are the visible key ranges of a block of consecutive query rows,
// computed once (Eval.Rows) so that classifying each tile of keys costs no
// mask evaluation. Positions are int32 (the kernels' index type).
type Rows struct {
	none         bool    // nothing masked
	nk           int32   // keys in the sequence
	lo, hi       []int32 // row r sees keys [lo[r], hi[r])
	minLo, maxHi int32   // over the rows that see some key
	maxLo, minHi int32   // over all rows (a row seeing nothing spoils "full")
	empty        bool    // no row sees any key
}

// Rows fills r with the ranges of rows [q0, q0+len(lo)); lo and hi are the
// caller's buffers (of equal length), which r keeps. Unless nothing is
// masked (None), lo[i], hi[i] = Row(q0+i).
func (e *Eval) Rows(q0 int, lo, hi []int32, r *Rows) {
	*r = Rows{none: e.none, nk: int32(e.nk), lo: lo, hi: hi, empty: true,
		minLo: math.MaxInt32, maxHi: math.MinInt32, maxLo: math.MinInt32, minHi: math.MaxInt32}
	if e.none {
		r.empty = len(lo) == 0 || e.nk == 0
		r.minLo, r.maxHi, r.maxLo, r.minHi = 0, int32(e.nk), 0, int32(e.nk)
		return
	}
	c := e.Cursor()
	for i := range lo {
		a, b := c.Row(q0 + i)
		lo[i], hi[i] = int32(a), int32(b)
		r.maxLo = max(r.maxLo, int32(a))
		r.minHi = min(r.minHi, int32(b))
		if b > a {
			r.empty = false
			r.minLo = min(r.minLo, int32(a))
			r.maxHi = max(r.maxHi, int32(b))
		}
	}
}

// Empty reports whether no row sees any key.
func (r *Rows) Empty() bool { return r.empty }

// Sees is a quick test of whether some row sees some key of [k0, k1): it
// compares only the rows' bounds, so false means Classify would say
// Hidden, but true may still be a Hidden tile (rows of different
// documents, or windows, leave gaps).
func (r *Rows) Sees(k0, k1 int) bool {
	return !r.empty && k1 > k0 && int(r.maxHi) > k0 && int(r.minLo) < k1
}

// Classify classifies the tile of keys [k0, k1) (0 <= k0 < k1 <= Nk) for
// the rows of r, exactly: Hidden when no row sees a key of it, Full when
// every row sees every key of it, else Partial (a tile of no rows is
// Hidden). For a Partial tile it
// fills lo and hi (len(lo) = len(hi) = the rows) with each row's range
// clipped to [k0, k1), lo == hi == k0 when the row sees none of it; nil lo
// and hi are allowed when only the class is wanted.
func (r *Rows) Classify(k0, k1 int, lo, hi []int32) Class {
	a0, a1 := int32(k0), int32(k1)
	switch {
	case r.empty:
		return Hidden
	case r.none:
		return Full
	case a1 <= r.minLo || a0 >= r.maxHi:
		return Hidden
	case r.maxLo <= a0 && r.minHi >= a1:
		return Full
	}
	if lo == nil {
		for i := range r.lo {
			if min(r.hi[i], a1) > max(r.lo[i], a0) {
				return Partial
			}
		}
		return Hidden
	}
	hidden := true
	for i := range lo {
		a, b := max(r.lo[i], a0), min(r.hi[i], a1)
		if b <= a {
			a, b = a0, a0
		} else {
			hidden = false
		}
		lo[i], hi[i] = a, b
	}
	if hidden {
		return Hidden
	}
	return Partial
}

// FirstSeen returns the smallest key >= x0 that some row sees, or
// math.MaxInt when there is none.
func (r *Rows) FirstSeen(x0 int) int {
	if r.empty {
		return math.MaxInt
	}
	if r.none {
		if x0 < int(r.nk) {
			return max(x0, 0)
		}
		return math.MaxInt
	}
	best := math.MaxInt
	for i := range r.lo {
		a := max(int(r.lo[i]), x0)
		if a < int(r.hi[i]) && a < best {
			best = a
		}
	}
	return best
}

// Pairs counts the visible (query, key) pairs of the rows with keys
// [k0, k1).
func (r *Rows) Pairs(k0, k1 int) int64 {
	if r.empty || k1 <= k0 {
		return 0
	}
	if r.none {
		a, b := max(k0, 0), min(k1, int(r.nk))
		if b <= a {
			return 0
		}
		return int64(len(r.lo)) * int64(b-a)
	}
	var n int64
	for i := range r.lo {
		if a, b := max(int(r.lo[i]), k0), min(int(r.hi[i]), k1); b > a {
			n += int64(b - a)
		}
	}
	return n
}
