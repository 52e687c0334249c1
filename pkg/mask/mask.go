package mask

import (
	"fmt"
	"sort"
)

// Mask selects which keys a query may see. The zero value masks nothing.
//
// Positions are document-local: with SeqLens, query i of document d (local
// position i') and key j of document d (local position j') are aligned
// bottom-right, off = lenK(d) - lenQ(d), as FlashAttention >= 2.1 does. Without
// SeqLens the whole sequence is one document and off = Nk - N.
//
//	causal:  j' <= i' + off
//	window:  i' + off - Left <= j' <= i' + off + Right   (a negative side is unbounded)
//	docs:    query and key must lie in the same document
//
// The visible keys of a row are therefore one interval; a row whose interval
// is empty gets output 0 and LSE = -inf.
type Mask struct {
	Causal bool
	// Windowed enables the sliding window (Left, Right).
	Windowed    bool
	Left, Right int
	// SeqLens are the lengths of the packed documents of the queries; their sum
	// is N. SeqLensK are those of the keys (sum Nk); nil means SeqLens.
	SeqLens  []int
	SeqLensK []int
}

// Eval is a Mask compiled for N queries over Nk keys (a mask that Validate
// accepts for them); its methods take global positions. It is read-only and
// safe for concurrent use.
type Eval struct {
	n, nk       int
	causal      bool
	windowed    bool
	left, right int
	qStarts     []int // document starts in the query sequence, plus N
	kStarts     []int // document starts in the key sequence, plus Nk
	none        bool  // nothing is masked
}

// New compiles m for n queries over nk keys. m must be valid for them
// (Validate); New keeps no reference to m's slices.
func New(m *Mask, n, nk int) *Eval {
	e := &Eval{
		n: n, nk: nk,
		causal:   m.Causal,
		windowed: m.Windowed && (m.Left >= 0 || m.Right >= 0),
		left:     m.Left, right: m.Right,
	}
	if m.SeqLens != nil {
		e.qStarts = starts(m.SeqLens)
		if m.SeqLensK != nil {
			e.kStarts = starts(m.SeqLensK)
		} else {
			e.kStarts = e.qStarts
		}
	}
	e.none = !e.causal && !e.windowed && (e.qStarts == nil || len(e.qStarts) == 2)
	return e
}

// starts returns the prefix sums of lens: the document starts, plus the total.
func starts(lens []int) []int {
	s := make([]int, len(lens)+1)
	for i, l := range lens {
		s[i+1] = s[i] + l
	}
	return s
}

// N is the number of queries.
func (e *Eval) N() int { return e.n }

// Nk is the number of keys.
func (e *Eval) Nk() int { return e.nk }

// None reports whether the mask is plainly empty (no causal mask, no
// window, at most one document), so that every query sees every key. A
// mask whose window is wider than the sequences hides nothing either, but
// is not None.
func (e *Eval) None() bool { return e.none }

// doc returns the document of query i (0 without documents).
func (e *Eval) doc(i int) int {
	if e.qStarts == nil {
		return 0
	}
	return sort.SearchInts(e.qStarts, i+1) - 1
}

// Row returns the interval [lo, hi) of keys query i (0 <= i < N) sees;
// lo == hi when it sees none.
func (e *Eval) Row(i int) (lo, hi int) {
	if e.none {
		return 0, e.nk
	}
	return e.rowIn(i, e.doc(i))
}

// Visible reports whether query i sees key j; it is false for positions
// out of range.
func (e *Eval) Visible(i, j int) bool {
	if i < 0 || i >= e.n || j < 0 || j >= e.nk {
		return false
	}
	lo, hi := e.Row(i)
	return lo <= j && j < hi
}

// rowIn is Row for query i of document d (d = 0 without documents).
func (e *Eval) rowIn(i, d int) (lo, hi int) {
	if e.none {
		return 0, e.nk
	}
	qs, ks, lq, lk := 0, 0, e.n, e.nk
	if e.qStarts != nil {
		qs, lq = e.qStarts[d], e.qStarts[d+1]-e.qStarts[d]
		ks, lk = e.kStarts[d], e.kStarts[d+1]-e.kStarts[d]
	}
	lo, hi = ks, ks+lk
	diag := ks + (i - qs) + (lk - lq) // the key aligned with query i
	if e.causal && diag+1 < hi {
		hi = diag + 1
	}
	if e.windowed {
		if e.left >= 0 && diag-e.left > lo {
			lo = diag - e.left
		}
		if e.right >= 0 && diag+e.right+1 < hi {
			hi = diag + e.right + 1
		}
	}
	if hi < lo {
		hi = lo
	}
	return lo, hi
}

// Cursor evaluates rows in ascending order without searching for each
// row's document: a walk over rows costs O(rows + documents).
type Cursor struct {
	e *Eval
	d int // the document of the last row
}

// Cursor returns a cursor at the first row.
func (e *Eval) Cursor() Cursor { return Cursor{e: e} }

// Row is Eval.Row; it is fastest when i does not decrease between calls.
func (c *Cursor) Row(i int) (lo, hi int) {
	e := c.e
	if e.none {
		return 0, e.nk
	}
	if qs := e.qStarts; qs != nil && (i < qs[c.d] || qs[c.d+1] <= i) {
		if i >= qs[c.d] && c.d+2 < len(qs) && i < qs[c.d+2] {
			c.d++
		} else {
			c.d = e.doc(i)
		}
	}
	return e.rowIn(i, c.d)
}

// Kind is what an *Error found wrong.
type Kind uint8

const (
	// KindWindow: a window side below -1 or above the limit.
	KindWindow Kind = iota + 1
	// KindKWithoutQ: SeqLensK without SeqLens.
	KindKWithoutQ
	// KindLength: a document length below 1 (Item, Value).
	KindLength
	// KindPastTotal: a length that brings the sum past the sequence
	// length (Item, Value, Total).
	KindPastTotal
	// KindShortTotal: lengths summing to less than the sequence length
	// (Value the sum, Total).
	KindShortTotal
	// KindDocs: SeqLensK with another document count than SeqLens (Value,
	// Total the count of SeqLens).
	KindDocs
	// KindCross: SeqLens without SeqLensK while N != Nk (Value N, Total Nk).
	KindCross
)

// Error is a mask refused by Validate or CheckWindow. Field is the field
// at fault as a job spec names it ("mask.seqlens", "mask.seqlens_k",
// "mask.window_left", "mask.window_right"); Msg says what was found and
// what is expected, in one line. Kind, Item, Value and Total give the same
// facts typed, for callers that word them their own way.
type Error struct {
	Field string
	Msg   string
	Kind  Kind
	Item  int // the list entry at fault, or -1
	Value int // the value at fault (see Kind)
	Total int // the bound it was held to (see Kind)
	// TotalName names the sequence length of Total: "n" or "nk".
	TotalName string
}

func (e *Error) Error() string { return e.Field + ": " + e.Msg }

// Field names of a Mask as a job spec spells them.
const (
	FieldSeqLens     = "mask.seqlens"
	FieldSeqLensK    = "mask.seqlens_k"
	FieldWindowLeft  = "mask.window_left"
	FieldWindowRight = "mask.window_right"
)

// Validate checks the documents of m for n queries over nk keys:
// SeqLensK only with SeqLens, lengths >= 1 summing to n (SeqLens) and nk
// (SeqLensK), as many key documents as query documents, and SeqLensK when
// n != nk. The window is not checked (a negative side is unbounded; see
// CheckWindow). Errors are *Error. It allocates nothing and forms no sum
// past n or nk, so lengths cannot wrap around to them.
func (m *Mask) Validate(n, nk int) error {
	if m.SeqLensK != nil && m.SeqLens == nil {
		return &Error{Field: FieldSeqLensK, Kind: KindKWithoutQ, Item: -1,
			Msg: "given without " + FieldSeqLens + ": want both or only " + FieldSeqLens}
	}
	if m.SeqLens == nil {
		return nil
	}
	if err := CheckLens(FieldSeqLens, "n", m.SeqLens, n); err != nil {
		return err
	}
	if m.SeqLensK == nil {
		if n != nk {
			return &Error{Field: FieldSeqLens, Kind: KindCross, Item: -1, Value: n, Total: nk, TotalName: "nk",
				Msg: fmt.Sprintf("without %s needs n == nk, got n = %d, nk = %d: want %s for cross-attention", FieldSeqLensK, n, nk, FieldSeqLensK)}
		}
		return nil
	}
	if len(m.SeqLensK) != len(m.SeqLens) {
		return &Error{Field: FieldSeqLensK, Kind: KindDocs, Item: -1, Value: len(m.SeqLensK), Total: len(m.SeqLens),
			Msg: fmt.Sprintf("%d documents: want %d as %s", len(m.SeqLensK), len(m.SeqLens), FieldSeqLens)}
	}
	return CheckLens(FieldSeqLensK, "nk", m.SeqLensK, nk)
}

// CheckWindow checks, when m is windowed, that each side is -1
// (unbounded) or 0..max. Errors are *Error.
func (m *Mask) CheckWindow(max int64) error {
	if !m.Windowed {
		return nil
	}
	for _, s := range []struct {
		field string
		v     int
	}{{FieldWindowLeft, m.Left}, {FieldWindowRight, m.Right}} {
		if s.v < -1 || int64(s.v) > max {
			return &Error{Field: s.field, Kind: KindWindow, Item: -1, Value: s.v,
				Msg: fmt.Sprintf("%d: want -1 for unbounded or 0..%d", s.v, max)}
		}
	}
	return nil
}

// CheckLens checks that lens are lengths >= 1 summing to exactly total (the
// sequence length named totalName), without ever forming a sum past total.
// Errors are *Error naming field.
func CheckLens(field, totalName string, lens []int, total int) error {
	sum := 0
	for i, x := range lens {
		if x < 1 {
			return &Error{Field: field, Kind: KindLength, Item: i, Value: x, Total: total, TotalName: totalName,
				Msg: fmt.Sprintf("item %d = %d: want lengths >= 1", i, x)}
		}
		if x > total-sum {
			return &Error{Field: field, Kind: KindPastTotal, Item: i, Value: x, Total: total, TotalName: totalName,
				Msg: fmt.Sprintf("item %d = %d brings the sum past %s = %d: want lengths summing to the sequence length %d",
					i, x, totalName, total, total)}
		}
		sum += x
	}
	if sum != total {
		return &Error{Field: field, Kind: KindShortTotal, Item: -1, Value: sum, Total: total, TotalName: totalName,
			Msg: fmt.Sprintf("lengths sum to %d, expected the sequence length %d (%s)", sum, total, totalName)}
	}
	return nil
}
