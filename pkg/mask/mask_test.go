package mask_test

import (
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/mask"
)

// refVisible is the Mask's documentation taken literally, one pair at a
// time: document-local positions aligned bottom-right, same document,
// causal and window bounds (a negative side unbounded).
func refVisible(m *mask.Mask, n, nk, i, j int) bool {
	qd, ip, lq := locate(m.SeqLens, n, i)
	kl := m.SeqLensK
	if kl == nil {
		kl = m.SeqLens
	}
	kd, jp, lk := locate(kl, nk, j)
	if qd != kd {
		return false
	}
	diag := ip + lk - lq
	if m.Causal && jp > diag {
		return false
	}
	if m.Windowed {
		if m.Left >= 0 && jp < diag-m.Left {
			return false
		}
		if m.Right >= 0 && jp > diag+m.Right {
			return false
		}
	}
	return true
}

// locate returns the document of position x, its local position and the
// document's length (one document of length total without lens).
func locate(lens []int, total, x int) (doc, local, length int) {
	if lens == nil {
		return 0, x, total
	}
	start := 0
	for d, l := range lens {
		if x < start+l {
			return d, x - start, l
		}
		start += l
	}
	panic("position past the documents")
}

// compositions returns every way to cut total into parts >= 1.
func compositions(total int) [][]int {
	if total == 0 {
		return nil
	}
	var out [][]int
	for bits := 0; bits < 1<<(total-1); bits++ {
		var c []int
		l := 1
		for p := 0; p < total-1; p++ {
			if bits&(1<<p) != 0 {
				c = append(c, l)
				l = 1
			} else {
				l++
			}
		}
		out = append(out, append(c, l))
	}
	return out
}

// smallMasks returns every mask kind for n queries over nk keys: causal or
// not, no window or a window with sides in {-1, 0, 2}, and no documents or
// every pair of document cuts of n and nk with as many documents.
func smallMasks(n, nk int) []mask.Mask {
	type win struct {
		on          bool
		left, right int
	}
	wins := []win{{}}
	for _, l := range []int{-1, 0, 2} {
		for _, r := range []int{-1, 0, 2} {
			wins = append(wins, win{true, l, r})
		}
	}
	docs := [][2][]int{{nil, nil}}
	for _, q := range compositions(n) {
		if n == nk {
			docs = append(docs, [2][]int{q, nil})
		}
		for _, k := range compositions(nk) {
			if len(k) == len(q) {
				docs = append(docs, [2][]int{q, k})
			}
		}
	}
	var out []mask.Mask
	for _, causal := range []bool{false, true} {
		for _, w := range wins {
			for _, d := range docs {
				out = append(out, mask.Mask{Causal: causal, Windowed: w.on, Left: w.left, Right: w.right,
					SeqLens: d[0], SeqLensK: d[1]})
			}
		}
	}
	return out
}

func describe(m *mask.Mask, n, nk int) string {
	return fmt.Sprintf("n=%d nk=%d %+v", n, nk, *m)
}

// checkRows checks Row, Visible and a Cursor (ascending, then restarted
// and descending) against refVisible for every row, and that both bounds
// are non-decreasing.
func checkRows(t *testing.T, m *mask.Mask, n, nk int) {
	t.Helper()
	e := mask.New(m, n, nk)
	cur := e.Cursor()
	prevLo, prevHi := math.MinInt, math.MinInt
	for i := 0; i < n; i++ {
		lo, hi := e.Row(i)
		if lo < 0 || hi > nk || lo > hi {
			t.Fatalf("%s: row %d = [%d, %d): out of [0, %d]", describe(m, n, nk), i, lo, hi, nk)
		}
		for j := -1; j <= nk; j++ {
			want := j >= 0 && j < nk && refVisible(m, n, nk, i, j)
			if got := lo <= j && j < hi && j >= 0 && j < nk; got != want {
				t.Fatalf("%s: row %d = [%d, %d), key %d visible %v, the definition says %v", describe(m, n, nk), i, lo, hi, j, got, want)
			}
			if got := e.Visible(i, j); got != want {
				t.Fatalf("%s: Visible(%d, %d) = %v, want %v", describe(m, n, nk), i, j, got, want)
			}
		}
		if hi > lo && (lo < prevLo || hi < prevHi) {
			t.Fatalf("%s: row %d = [%d, %d) after [%d, %d): bounds decrease", describe(m, n, nk), i, lo, hi, prevLo, prevHi)
		}
		if hi > lo {
			prevLo, prevHi = lo, hi
		}
		if clo, chi := cur.Row(i); clo != lo || chi != hi {
			t.Fatalf("%s: cursor row %d = [%d, %d), Row says [%d, %d)", describe(m, n, nk), i, clo, chi, lo, hi)
		}
	}
	back := e.Cursor()
	for i := n - 1; i >= 0; i-- {
		lo, hi := e.Row(i)
		if clo, chi := back.Row(i); clo != lo || chi != hi {
			t.Fatalf("%s: descending cursor row %d = [%d, %d), Row says [%d, %d)", describe(m, n, nk), i, clo, chi, lo, hi)
		}
	}
	if e.N() != n || e.Nk() != nk {
		t.Fatalf("%s: N, Nk = %d, %d", describe(m, n, nk), e.N(), e.Nk())
	}
}

// checkTile checks Classify, Sees, Pairs and FirstSeen of the tile of
// rows [q0, q0+rows) and keys [k0, k1) against the pairs one by one.
func checkTile(t *testing.T, m *mask.Mask, e *mask.Eval, n, nk, q0, rows, k0, k1 int) {
	t.Helper()
	var r mask.Rows
	e.Rows(q0, make([]int32, rows), make([]int32, rows), &r)
	var visible int64
	anyRow := false
	for i := q0; i < q0+rows; i++ {
		for j := 0; j < nk; j++ {
			if refVisible(m, n, nk, i, j) {
				anyRow = true
				if j >= k0 && j < k1 {
					visible++
				}
			}
		}
	}
	want := mask.Partial
	switch {
	case visible == 0:
		want = mask.Hidden
	case visible == int64(rows)*int64(k1-k0):
		want = mask.Full
	}
	lo, hi := make([]int32, rows), make([]int32, rows)
	got := r.Classify(k0, k1, lo, hi)
	where := func() string {
		return fmt.Sprintf("%s: rows [%d, %d) keys [%d, %d)", describe(m, n, nk), q0, q0+rows, k0, k1)
	}
	if got != want {
		t.Fatalf("%s: Classify = %v, want %v (%d of %d pairs visible)", where(), got, want, visible, rows*(k1-k0))
	}
	if c := r.Classify(k0, k1, nil, nil); c != want {
		t.Fatalf("%s: Classify without buffers = %v, want %v", where(), c, want)
	}
	if got == mask.Partial {
		for x := range rows {
			for j := k0; j < k1; j++ {
				in := int(lo[x]) <= j && j < int(hi[x])
				if in != refVisible(m, n, nk, q0+x, j) {
					t.Fatalf("%s: clipped row %d = [%d, %d) disagrees at key %d", where(), q0+x, lo[x], hi[x], j)
				}
			}
			if lo[x] < int32(k0) || hi[x] > int32(k1) || lo[x] > hi[x] {
				t.Fatalf("%s: clipped row %d = [%d, %d) outside the tile", where(), q0+x, lo[x], hi[x])
			}
		}
	}
	if visible > 0 && !r.Sees(k0, k1) {
		t.Fatalf("%s: Sees = false with %d pairs visible", where(), visible)
	}
	if p := r.Pairs(k0, k1); p != visible {
		t.Fatalf("%s: Pairs = %d, want %d", where(), p, visible)
	}
	if r.Empty() == anyRow {
		t.Fatalf("%s: Empty = %v, but some row sees a key: %v", where(), r.Empty(), anyRow)
	}
	wantFirst := math.MaxInt
	for j := nk - 1; j >= k0; j-- {
		for i := q0; i < q0+rows; i++ {
			if refVisible(m, n, nk, i, j) {
				wantFirst = j
			}
		}
	}
	if f := r.FirstSeen(k0); f != wantFirst {
		t.Fatalf("%s: FirstSeen(%d) = %d, want %d", where(), k0, f, wantFirst)
	}
}

// TestMaskExhaustiveSmall checks, for every mask kind on every shape up to
// 5×5 (ragged and cross-attention documents included), every row against
// the definition and every tile's classification against its pairs.
func TestMaskExhaustiveSmall(t *testing.T) {
	masks, tiles := 0, 0
	for n := 0; n <= 5; n++ {
		for nk := 0; nk <= 5; nk++ {
			for _, m := range smallMasks(n, nk) {
				if err := m.Validate(n, nk); err != nil {
					t.Fatalf("%s: %v", describe(&m, n, nk), err)
				}
				masks++
				checkRows(t, &m, n, nk)
				e := mask.New(&m, n, nk)
				for q0 := 0; q0 < n; q0++ {
					for rows := 1; q0+rows <= n; rows++ {
						for k0 := 0; k0 < nk; k0++ {
							for k1 := k0 + 1; k1 <= nk; k1++ {
								checkTile(t, &m, e, n, nk, q0, rows, k0, k1)
								tiles++
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d masks, %d tiles", masks, tiles)
}

// TestMaskRaggedDocuments spells out the rows of packed documents of
// different lengths for queries and keys.
func TestMaskRaggedDocuments(t *testing.T) {
	// Queries 2+3+1, keys 3+1+4: off = 1, -2, 3 per document.
	m := mask.Mask{Causal: true, SeqLens: []int{2, 3, 1}, SeqLensK: []int{3, 1, 4}}
	if err := m.Validate(6, 8); err != nil {
		t.Fatal(err)
	}
	want := [][2]int{
		{0, 2}, {0, 3}, // doc 0: keys 0..2, diag = local+1
		{3, 3}, {3, 3}, {3, 4}, // doc 1: one key; the first two rows see none
		{4, 8}, // doc 2: all four keys
	}
	e := mask.New(&m, 6, 8)
	for i, w := range want {
		if lo, hi := e.Row(i); lo != w[0] || hi != w[1] {
			t.Errorf("row %d = [%d, %d), want [%d, %d)", i, lo, hi, w[0], w[1])
		}
	}
	checkRows(t, &m, 6, 8)
	// Rows 2..3 see nothing: hidden everywhere, and Rows says so.
	var r mask.Rows
	e.Rows(2, make([]int32, 2), make([]int32, 2), &r)
	if !r.Empty() || r.Classify(0, 8, nil, nil) != mask.Hidden || r.Sees(0, 8) || r.FirstSeen(0) != math.MaxInt {
		t.Errorf("rows 2..3 see no key, but Rows says empty=%v class=%v sees=%v first=%d",
			r.Empty(), r.Classify(0, 8, nil, nil), r.Sees(0, 8), r.FirstSeen(0))
	}
	// Rows 1..4 span documents 0 and 1; key 3 (doc 1) is seen by row 4 only.
	e.Rows(1, make([]int32, 4), make([]int32, 4), &r)
	lo, hi := make([]int32, 4), make([]int32, 4)
	if c := r.Classify(3, 4, lo, hi); c != mask.Partial || lo[3] != 3 || hi[3] != 4 || lo[0] != hi[0] {
		t.Errorf("rows 1..4, key 3: %v, lo %v hi %v", c, lo, hi)
	}
	if p := r.Pairs(0, 8); p != 3+1 {
		t.Errorf("rows 1..4 see %d pairs, want 4", p)
	}
}

// TestMaskWindowEdges checks the window's sides at 0 (the diagonal only),
// one past the sequence, and unbounded, with and without causal.
func TestMaskWindowEdges(t *testing.T) {
	const n = 6
	cases := []struct {
		m    mask.Mask
		row  int
		want [2]int
	}{
		{mask.Mask{Windowed: true, Left: 0, Right: 0}, 3, [2]int{3, 4}},
		{mask.Mask{Windowed: true, Left: 1, Right: 0}, 0, [2]int{0, 1}},
		{mask.Mask{Windowed: true, Left: 1, Right: 1}, 5, [2]int{4, 6}},
		{mask.Mask{Windowed: true, Left: n, Right: n}, 2, [2]int{0, n}},
		{mask.Mask{Windowed: true, Left: -1, Right: 0}, 2, [2]int{0, 3}},
		{mask.Mask{Windowed: true, Left: 0, Right: -1}, 2, [2]int{2, n}},
		{mask.Mask{Windowed: true, Left: -1, Right: -1}, 2, [2]int{0, n}},
		{mask.Mask{Causal: true, Windowed: true, Left: 2, Right: 5}, 4, [2]int{2, 5}},
		{mask.Mask{Windowed: false, Left: 0, Right: 0}, 2, [2]int{0, n}}, // a window needs Windowed
	}
	for _, c := range cases {
		lo, hi := mask.New(&c.m, n, n).Row(c.row)
		if lo != c.want[0] || hi != c.want[1] {
			t.Errorf("%+v row %d = [%d, %d), want %v", c.m, c.row, lo, hi, c.want)
		}
		checkRows(t, &c.m, n, n)
	}
	// Cross-attention: Nk > N shifts the diagonal right by Nk - N.
	m := mask.Mask{Windowed: true, Left: 1, Right: 0}
	if lo, hi := mask.New(&m, 2, 5).Row(0); lo != 2 || hi != 4 {
		t.Errorf("N=2 Nk=5 window (1, 0) row 0 = [%d, %d), want [2, 4)", lo, hi)
	}
}

// TestMaskRowsSeeNoKey checks rows that see nothing: causal with N > Nk,
// and a window wholly left of the keys.
func TestMaskRowsSeeNoKey(t *testing.T) {
	m := mask.Mask{Causal: true}
	e := mask.New(&m, 7, 3) // off = -4: rows 0..3 see nothing
	for i := 0; i < 7; i++ {
		lo, hi := e.Row(i)
		if want := max(0, i-4+1); hi-lo != want {
			t.Errorf("causal 7×3 row %d sees %d keys, want %d", i, hi-lo, want)
		}
	}
	var r mask.Rows
	e.Rows(0, make([]int32, 4), make([]int32, 4), &r)
	if !r.Empty() || r.Classify(0, 3, nil, nil) != mask.Hidden || r.Pairs(0, 3) != 0 {
		t.Errorf("rows 0..3 of causal 7×3: empty=%v, class %v", r.Empty(), r.Classify(0, 3, nil, nil))
	}
	// One row that sees nothing spoils Full for a block that otherwise would be.
	e.Rows(3, make([]int32, 4), make([]int32, 4), &r)
	if c := r.Classify(0, 1, nil, nil); c != mask.Partial {
		t.Errorf("rows 3..6, key 0: %v, want partial (row 3 sees nothing)", c)
	}
	checkRows(t, &m, 7, 3)
	// Nk = 0: no row sees anything, with or without a mask.
	for _, m := range []mask.Mask{{}, {Causal: true}} {
		e := mask.New(&m, 3, 0)
		e.Rows(0, make([]int32, 3), make([]int32, 3), &r)
		if lo, hi := e.Row(1); lo != hi || !r.Empty() || r.FirstSeen(0) != math.MaxInt {
			t.Errorf("%+v over no keys: row 1 = [%d, %d), empty %v", m, lo, hi, r.Empty())
		}
	}
}

// TestMaskNone checks that only masks hiding nothing report None, and
// that Rows of such a mask are Full on every tile.
func TestMaskNone(t *testing.T) {
	for _, c := range []struct {
		m    mask.Mask
		none bool
	}{
		{mask.Mask{}, true},
		{mask.Mask{Windowed: true, Left: -1, Right: -1}, true},
		{mask.Mask{SeqLens: []int{4}, SeqLensK: []int{6}}, true},
		{mask.Mask{SeqLens: []int{2, 2}, SeqLensK: []int{3, 3}}, false},
		{mask.Mask{Causal: true}, false},
		{mask.Mask{Windowed: true, Left: -1, Right: 9}, false},
	} {
		e := mask.New(&c.m, 4, 6)
		if e.None() != c.none {
			t.Errorf("%+v: None = %v, want %v", c.m, e.None(), c.none)
		}
		checkRows(t, &c.m, 4, 6)
	}
	var r mask.Rows
	mask.New(&mask.Mask{}, 4, 6).Rows(1, make([]int32, 2), make([]int32, 2), &r)
	if r.Classify(2, 5, nil, nil) != mask.Full || r.Pairs(0, 6) != 12 || r.FirstSeen(5) != 5 || r.FirstSeen(6) != math.MaxInt {
		t.Errorf("no mask: class %v, pairs %d", r.Classify(2, 5, nil, nil), r.Pairs(0, 6))
	}
}

// wantErr checks that err is a *mask.Error with field, kind and a message
// containing msg.
func wantErr(t *testing.T, name string, err error, field string, kind mask.Kind, msg string) {
	t.Helper()
	var me *mask.Error
	if !errors.As(err, &me) {
		t.Fatalf("%s: error %v (%T), want a *mask.Error", name, err, err)
	}
	if me.Field != field || me.Kind != kind || !strings.Contains(me.Msg, msg) {
		t.Fatalf("%s: %q (field %q, kind %d), want field %q, kind %d, message with %q", name, err, me.Field, me.Kind, field, kind, msg)
	}
	if strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), field+": ") {
		t.Fatalf("%s: %q: want one line starting with the field", name, err)
	}
}

// TestMaskValidate checks every refusal at its limit and just past it.
func TestMaskValidate(t *testing.T) {
	ok := func(name string, m mask.Mask, n, nk int) {
		t.Helper()
		if err := m.Validate(n, nk); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	ok("zero", mask.Mask{}, 0, 0)
	ok("cross without docs", mask.Mask{Causal: true}, 3, 9)
	ok("sum = n", mask.Mask{SeqLens: []int{3, 4}}, 7, 7)
	ok("sums = n, nk", mask.Mask{SeqLens: []int{3, 4}, SeqLensK: []int{1, 1}}, 7, 2)
	ok("negative window (validated by CheckWindow)", mask.Mask{Windowed: true, Left: -5}, 4, 4)

	wantErr(t, "k without q", (&mask.Mask{SeqLensK: []int{4}}).Validate(4, 4),
		mask.FieldSeqLensK, mask.KindKWithoutQ, "given without mask.seqlens")
	wantErr(t, "zero length", (&mask.Mask{SeqLens: []int{4, 0}}).Validate(4, 4),
		mask.FieldSeqLens, mask.KindLength, "item 1 = 0: want lengths >= 1")
	wantErr(t, "negative length", (&mask.Mask{SeqLens: []int{-1, 5}}).Validate(4, 4),
		mask.FieldSeqLens, mask.KindLength, "item 0 = -1")
	wantErr(t, "sum = n+1", (&mask.Mask{SeqLens: []int{3, 5}}).Validate(7, 7),
		mask.FieldSeqLens, mask.KindPastTotal, "item 1 = 5 brings the sum past n = 7")
	wantErr(t, "sum = n-1", (&mask.Mask{SeqLens: []int{3, 3}}).Validate(7, 7),
		mask.FieldSeqLens, mask.KindShortTotal, "lengths sum to 6, expected the sequence length 7 (n)")
	wantErr(t, "k sum = nk+1", (&mask.Mask{SeqLens: []int{3, 4}, SeqLensK: []int{1, 2}}).Validate(7, 2),
		mask.FieldSeqLensK, mask.KindPastTotal, "item 1 = 2 brings the sum past nk = 2")
	wantErr(t, "doc counts", (&mask.Mask{SeqLens: []int{3, 4}, SeqLensK: []int{2}}).Validate(7, 2),
		mask.FieldSeqLensK, mask.KindDocs, "1 documents: want 2 as mask.seqlens")
	wantErr(t, "cross without seqlens_k", (&mask.Mask{SeqLens: []int{7}}).Validate(7, 8),
		mask.FieldSeqLens, mask.KindCross, "needs n == nk, got n = 7, nk = 8")
	// Lengths that wrap around 2^64 to nk are refused, not summed.
	wantErr(t, "wrapping", (&mask.Mask{SeqLens: []int{1, 1, 1, 1}, SeqLensK: []int{1, math.MaxInt, math.MaxInt, 5}}).Validate(4, 4),
		mask.FieldSeqLensK, mask.KindPastTotal, "item 1 = 9223372036854775807 brings the sum past nk = 4")

	// CheckWindow: -1 and max are the limits, -2 and max+1 past them.
	const max = 1 << 24
	for _, v := range []int{-1, 0, max} {
		if err := (&mask.Mask{Windowed: true, Left: v, Right: v}).CheckWindow(max); err != nil {
			t.Errorf("window %d: %v", v, err)
		}
	}
	wantErr(t, "left past", (&mask.Mask{Windowed: true, Left: max + 1}).CheckWindow(max),
		mask.FieldWindowLeft, mask.KindWindow, "16777217: want -1 for unbounded or 0..16777216")
	wantErr(t, "right below -1", (&mask.Mask{Windowed: true, Right: -2}).CheckWindow(max),
		mask.FieldWindowRight, mask.KindWindow, "-2: want -1 for unbounded")
	if err := (&mask.Mask{Left: -7, Right: max + 1}).CheckWindow(max); err != nil {
		t.Errorf("window sides without Windowed: %v", err)
	}
}

// TestMaskIsLeaf checks that the package imports nothing of this module
// (DESIGN §1: the kernels and the planner both import it).
func TestMaskIsLeaf(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(p, "github.com/ringattn/") {
				t.Errorf("%s imports %s: pkg/mask must import nothing of this module", name, p)
			}
		}
	}
}
