package kernels_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// forEachImpl runs f once with every kernel implementation available here.
func forEachImpl(t *testing.T, f func(t *testing.T)) {
	for _, name := range kernels.Impls() {
		t.Run(name, func(t *testing.T) {
			restore, err := kernels.Use(name)
			if err != nil {
				t.Fatal(err)
			}
			defer restore()
			f(t)
		})
	}
}

type problem struct {
	b, hq, hkv, n, nk, d int
	mask                 kernels.Mask
	mode                 testrand.Mode
	scale                float32
}

func (p problem) String() string {
	return fmt.Sprintf("B%d_H%d-%d_N%d_Nk%d_D%d_%s_%s", p.b, p.hq, p.hkv, p.n, p.nk, p.d, maskName(p.mask), p.mode)
}

func maskName(m kernels.Mask) string {
	s := ""
	if m.Causal {
		s += "causal"
	}
	if m.Windowed {
		s += fmt.Sprintf("win(%d,%d)", m.Left, m.Right)
	}
	if m.SeqLens != nil {
		s += fmt.Sprintf("docs%d", len(m.SeqLens))
	}
	if s == "" {
		s = "none"
	}
	return s
}

func (p problem) params() *kernels.Params {
	return &kernels.Params{Shape: kernels.Shape{B: p.b, Hq: p.hq, Hkv: p.hkv, D: p.d},
		N: p.n, Nk: p.nk, Scale: p.scale, Mask: p.mask}
}

func (p problem) ref() *attnref.Problem {
	m := p.mask
	return &attnref.Problem{B: p.b, Hq: p.hq, Hkv: p.hkv, N: p.n, Nk: p.nk, D: p.d, Scale: float64(p.scale),
		Mask: attnref.Mask{Causal: m.Causal, Windowed: m.Windowed, Left: m.Left, Right: m.Right,
			SeqLens: m.SeqLens, SeqLensK: m.SeqLensK}}
}

func (p problem) inputs(seed uint64) (q, k, v []float32) {
	r := testrand.New(seed)
	q = r.Slice(p.b*p.hq*p.n*p.d, p.mode)
	kmode := p.mode
	if kmode == testrand.Large {
		kmode = testrand.Normal // logits ×30, not ×900
	}
	k = r.Slice(p.b*p.hkv*p.nk*p.d, kmode)
	v = r.Slice(p.b*p.hkv*p.nk*p.d, testrand.Normal)
	return
}

// tolerance is 1e-4 for unit-normal values (v is always unit normal here).
const tolerance = 1e-4

func checkAttention(t *testing.T, p problem) {
	t.Helper()
	q, k, v := p.inputs(uint64(p.n*7919 + p.nk*31 + p.d))
	wantO, wantLSE := p.ref().Attention(q, k, v)
	checkAgainst(t, p, q, k, v, wantO, wantLSE)
}

// checkAllImpls checks p with every implementation against one reference
// computation (the float64 oracle costs more than the kernels).
func checkAllImpls(t *testing.T, p problem) {
	t.Helper()
	q, k, v := p.inputs(uint64(p.n*7919 + p.nk*31 + p.d))
	wantO, wantLSE := p.ref().Attention(q, k, v)
	for _, name := range kernels.Impls() {
		restore, err := kernels.Use(name)
		if err != nil {
			t.Fatal(err)
		}
		checkAgainst(t, p, q, k, v, wantO, wantLSE)
		restore()
	}
}

func checkAgainst(t *testing.T, p problem, q, k, v []float32, wantO, wantLSE []float64) {
	t.Helper()
	oAll, o := testrand.Guarded(p.b*p.hq*p.n*p.d, 16)
	lseAll, lse := testrand.Guarded(p.b*p.hq*p.n, 16)
	if err := kernels.Attention(p.params(), q, k, v, o, lse); err != nil {
		t.Fatalf("%s %v: %v", kernels.Impl(), p, err)
	}
	if !testrand.Intact(oAll, 16) || !testrand.Intact(lseAll, 16) {
		t.Fatalf("%s %v: wrote outside the output", kernels.Impl(), p)
	}
	if e := attnref.MaxAbsDiff(o, wantO); !(e <= tolerance) {
		t.Fatalf("%s %v: max |o - ref| = %g > %g", kernels.Impl(), p, e, tolerance)
	}
	if e := attnref.MaxAbsDiff(lse, wantLSE); !(e <= tolerance*lseScale(wantLSE)) {
		t.Fatalf("%s %v: max |lse - ref| = %g", kernels.Impl(), p, e)
	}
}

// lseScale widens the LSE bound with the magnitude of the logits (float32
// has ~7 significant digits).
func lseScale(lse []float64) float64 {
	m := 1.0
	for _, x := range lse {
		if !math.IsInf(x, 0) {
			m = math.Max(m, math.Abs(x))
		}
	}
	return m
}

func masksFor(n, nk int) []kernels.Mask {
	ms := []kernels.Mask{
		{},
		{Causal: true},
		{Windowed: true, Left: 5, Right: 0},
		{Windowed: true, Left: 17, Right: 3},
		{Causal: true, Windowed: true, Left: 9, Right: -1},
		{Windowed: true, Left: -1, Right: 2},
	}
	if n == nk && n >= 3 {
		docs := []int{n / 3, n - n/3 - 1, 1}
		if docs[0] == 0 {
			docs = []int{1, n - 2, 1}
		}
		ms = append(ms,
			kernels.Mask{SeqLens: docs},
			kernels.Mask{Causal: true, SeqLens: docs},
			kernels.Mask{Causal: true, Windowed: true, Left: 4, Right: -1, SeqLens: docs})
	}
	if n >= 2 && nk >= 2 {
		// Cross-attention documents of different lengths.
		ms = append(ms, kernels.Mask{Causal: true, SeqLens: []int{1, n - 1}, SeqLensK: []int{nk - 1, 1}})
	}
	return ms
}

// TestKernelConformance checks every implementation (kernels.Impls) on each
// problem against one reference computation.
func TestKernelConformance(t *testing.T) {
	func() {
		lens := []int{1, 7, 63, 64, 65, 1000}
		if !testing.Short() {
			lens = append(lens, 4097)
		}
		heads := [][2]int{{1, 1}, {8, 2}, {8, 1}}
		dims := []int{1, 3, 32, 64, 80, 128, 256}
		i := 0
		for _, n := range lens {
			for _, nk := range lens {
				// Large problems only on a thin slice of the other axes.
				big := n*nk > 70000
				for hi, hh := range heads {
					for di, d := range dims {
						i++
						if big && (hi != i%3 || di != i%7) {
							continue
						}
						if !big && (i%5 != 0 && n != nk) {
							continue
						}
						for mi, m := range masksFor(n, nk) {
							if big && mi%3 != i%3 {
								continue
							}
							b := 1 + 2*(i%2)
							if big {
								b = 1
							}
							checkAllImpls(t, problem{b: b, hq: hh[0], hkv: hh[1], n: n, nk: nk, d: d, mask: m})
						}
					}
				}
			}
		}
	}()
}

func TestKernelExtremeValues(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		for _, mode := range []testrand.Mode{testrand.Large, testrand.Constant, testrand.Tiny} {
			for _, m := range masksFor(130, 130) {
				checkAttention(t, problem{b: 1, hq: 2, hkv: 1, n: 130, nk: 130, d: 64, mask: m, mode: mode})
			}
		}
		// Fully masked rows: a window that sees nothing for the first rows.
		checkAttention(t, problem{b: 1, hq: 1, hkv: 1, n: 100, nk: 40, d: 16, mask: kernels.Mask{Causal: true}})
		// A masked first tile: the first key tile is invisible to every row.
		checkAttention(t, problem{b: 1, hq: 1, hkv: 1, n: 50, nk: 300, d: 16,
			mask: kernels.Mask{Windowed: true, Left: 20, Right: 0}})
		// Scale: negative and large.
		checkAttention(t, problem{b: 1, hq: 1, hkv: 1, n: 70, nk: 70, d: 8, scale: -0.5, mask: kernels.Mask{Causal: true}})
	})
}

// randomCuts draws a ragged problem (GQA, a random mask) and cuts its keys
// into 1..most ranges at random points: cuts[0] = 0 < ... <= cuts[len-1] = Nk.
func randomCuts(r *testrand.Rand, most int) (problem, []int) {
	n, nk := 1+r.Intn(200), 1+r.Intn(300)
	ms := masksFor(n, nk)
	p := problem{b: 1 + r.Intn(2), hq: 4, hkv: 2, n: n, nk: nk, d: 1 + r.Intn(70), mask: ms[r.Intn(len(ms))]}
	cuts := []int{0}
	for c := 1 + r.Intn(most); c > 1; c-- {
		cuts = append(cuts, r.Intn(nk+1))
	}
	cuts = append(cuts, nk)
	sortInts(cuts)
	return p, cuts
}

// TestKernelSplitMerge folds key ranges into separate states and merges them
// in every order; the result equals the whole.
func TestKernelSplitMerge(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := testrand.New(7)
		for trial := 0; trial < 20; trial++ {
			p, cuts := randomCuts(r, 5)
			n, nk := p.n, p.nk
			prm := p.params()
			q, k, v := p.inputs(uint64(trial))
			var states []*kernels.State
			for i := 0; i+1 < len(cuts); i++ {
				a, e := cuts[i], cuts[i+1]
				s := kernels.NewState(p.b, p.hq, n, p.d)
				kk := sliceRows(k, p.b*p.hkv, nk, p.d, a, e)
				vv := sliceRows(v, p.b*p.hkv, nk, p.d, a, e)
				if err := s.Fold(prm, q, 0, kk, vv, a, e-a); err != nil {
					t.Fatal(err)
				}
				states = append(states, s)
			}
			// Merge in a shuffled order; also split queries into two row ranges.
			perm := make([]int, len(states))
			for i := range perm {
				perm[i] = i
			}
			for i := len(perm) - 1; i > 0; i-- {
				j := r.Intn(i + 1)
				perm[i], perm[j] = perm[j], perm[i]
			}
			acc := kernels.NewState(p.b, p.hq, n, p.d)
			for _, i := range perm {
				if err := acc.Merge(states[i]); err != nil {
					t.Fatal(err)
				}
			}
			o := make([]float32, p.b*p.hq*n*p.d)
			lse := make([]float32, p.b*p.hq*n)
			if err := acc.Finalize(o, lse); err != nil {
				t.Fatal(err)
			}
			wantO, wantLSE := p.ref().Attention(q, k, v)
			if e := attnref.MaxAbsDiff(o, wantO); !(e <= tolerance) {
				t.Fatalf("%v cuts %v: max |o - ref| = %g", p, cuts, e)
			}
			if e := attnref.MaxAbsDiff(lse, wantLSE); !(e <= tolerance*lseScale(wantLSE)) {
				t.Fatalf("%v cuts %v: max |lse - ref| = %g", p, cuts, e)
			}
		}
	})
}

// TestKernelFoldBlocks folds key ranges, in a shuffled order, with one
// FoldBlocks call: the state must be bit-identical to one Fold per range in
// the same order, and exact against the reference.
func TestKernelFoldBlocks(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := testrand.New(11)
		for trial := 0; trial < 20; trial++ {
			p, cuts := randomCuts(r, 6)
			n, nk := p.n, p.nk
			prm := p.params()
			q, k, v := p.inputs(uint64(trial))
			// Odd trials fold views into k and v instead of copies.
			view := trial%2 == 1
			var blocks []kernels.KV
			for i := 0; i+1 < len(cuts); i++ {
				a, e := cuts[i], cuts[i+1]
				b := kernels.KV{Start: a, N: e - a,
					K: sliceRows(k, p.b*p.hkv, nk, p.d, a, e), V: sliceRows(v, p.b*p.hkv, nk, p.d, a, e)}
				if view {
					b.K, b.V, b.Stride = k[a*p.d:], v[a*p.d:], nk
				}
				blocks = append(blocks, b)
			}
			for i := len(blocks) - 1; i > 0; i-- {
				j := r.Intn(i + 1)
				blocks[i], blocks[j] = blocks[j], blocks[i]
			}
			one := kernels.NewState(p.b, p.hq, n, p.d)
			if err := one.FoldBlocks(context.Background(), prm, q, 0, 0, blocks); err != nil {
				t.Fatal(err)
			}
			seq := kernels.NewState(p.b, p.hq, n, p.d)
			for i, b := range blocks {
				if view {
					a, e := b.Start, b.Start+b.N
					b = kernels.KV{Start: a, N: e - a,
						K: sliceRows(k, p.b*p.hkv, nk, p.d, a, e), V: sliceRows(v, p.b*p.hkv, nk, p.d, a, e)}
				}
				if err := seq.FoldBlocks(context.Background(), prm, q, 0, 0, []kernels.KV{b}); err != nil {
					t.Fatalf("block %d: %v", i, err)
				}
			}
			// A view of query rows [qa, qe) folds like their copy.
			qa := r.Intn(n)
			qe := qa + 1 + r.Intn(n-qa)
			sub := kernels.NewState(p.b, p.hq, qe-qa, p.d)
			if err := sub.FoldBlocks(context.Background(), prm, q[qa*p.d:], qa, n, blocks); err != nil {
				t.Fatal(err)
			}
			subSeq := kernels.NewState(p.b, p.hq, qe-qa, p.d)
			if err := subSeq.FoldBlocks(context.Background(), prm, sliceRows(q, p.b*p.hq, n, p.d, qa, qe), qa, 0, blocks); err != nil {
				t.Fatal(err)
			}
			sameBits(t, fmt.Sprintf("%v rows [%d,%d)", p, qa, qe), sub, subSeq)
			sameBits(t, fmt.Sprintf("%v cuts %v view %v", p, cuts, view), one, seq)
			o := make([]float32, p.b*p.hq*n*p.d)
			if err := one.Finalize(o, nil); err != nil {
				t.Fatal(err)
			}
			wantO, _ := p.ref().Attention(q, k, v)
			if e := attnref.MaxAbsDiff(o, wantO); !(e <= tolerance) {
				t.Fatalf("%v cuts %v: max |o - ref| = %g", p, cuts, e)
			}
		}
		// Bad blocks and strides are named.
		p := problem{b: 1, hq: 2, hkv: 2, n: 8, nk: 8, d: 4}
		q, k, v := p.inputs(1)
		s := kernels.NewState(1, 2, 8, 4)
		for _, c := range []struct {
			qStride int
			blocks  []kernels.KV
			want    string
		}{
			{0, []kernels.KV{{K: k, V: v, N: 8}, {K: k[:4], V: v, N: 8}}, "block 1: kernels: invalid argument: k has 4 values"},
			{4, []kernels.KV{{K: k, V: v, N: 8}}, "query stride 4 rows, expected >= the state's 8 rows"},
			{9, []kernels.KV{{K: k, V: v, N: 8}}, "q has 64 values, too few for 2 heads of 8 rows 9 rows apart"},
			{0, []kernels.KV{{K: k, V: v, N: 8, Stride: 5}}, "key stride 5 rows, expected >= the block's 8 rows"},
			{0, []kernels.KV{{K: k, V: v[:36], N: 4, Stride: 6}}, "v has 36 values, too few for 2 heads of 4 rows 6 rows apart"},
		} {
			err := s.FoldBlocks(context.Background(), p.params(), q, 0, c.qStride, c.blocks)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("FoldBlocks(qStride %d, %d blocks): err = %v, expected %q", c.qStride, len(c.blocks), err, c.want)
			}
		}
		// A canceled fold stops and says so.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.FoldBlocks(ctx, p.params(), q, 0, 0, []kernels.KV{{K: k, V: v, N: 8}}); !errors.Is(err, context.Canceled) {
			t.Fatalf("FoldBlocks with a canceled context: err = %v, expected context.Canceled", err)
		}
	})
}

// sameBits fails unless the two states are bit-identical.
func sameBits(t *testing.T, what string, a, b *kernels.State) {
	t.Helper()
	for _, x := range [][2][]float32{{a.M, b.M}, {a.L, b.L}, {a.O, b.O}} {
		for i := range x[0] {
			if math.Float32bits(x[0][i]) != math.Float32bits(x[1][i]) {
				t.Fatalf("%s: states differ at %d: %g != %g", what, i, x[0][i], x[1][i])
			}
		}
	}
}

// TestKernelQueryBlocks folds query row blocks at their global offsets.
func TestKernelQueryBlocks(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		for _, m := range masksFor(300, 300) {
			p := problem{b: 2, hq: 2, hkv: 1, n: 300, nk: 300, d: 24, mask: m}
			prm := p.params()
			q, k, v := p.inputs(3)
			wantO, _ := p.ref().Attention(q, k, v)
			got := make([]float32, len(wantO))
			for _, blk := range [][2]int{{0, 100}, {100, 257}, {257, 300}} {
				a, e := blk[0], blk[1]
				s := kernels.NewState(p.b, p.hq, e-a, p.d)
				if err := s.Fold(prm, sliceRows(q, p.b*p.hq, p.n, p.d, a, e), a, k, v, 0, p.nk); err != nil {
					t.Fatal(err)
				}
				o := make([]float32, p.b*p.hq*(e-a)*p.d)
				if err := s.Finalize(o, nil); err != nil {
					t.Fatal(err)
				}
				putRows(got, o, p.b*p.hq, p.n, p.d, a, e)
			}
			if e := attnref.MaxAbsDiff(got, wantO); !(e <= tolerance) {
				t.Fatalf("%v: max |o - ref| = %g", p, e)
			}
		}
	})
}

func TestKernelMergeOutputsEmpty(t *testing.T) {
	o1 := []float32{0, 0, 1, 2}
	l1 := []float32{float32(math.Inf(-1)), 0.5}
	o2 := []float32{0, 0, 3, 4}
	l2 := []float32{float32(math.Inf(-1)), 0.5}
	if err := kernels.MergeOutputs(o1, l1, o2, l2, 2); err != nil {
		t.Fatal(err)
	}
	if o1[0] != 0 || o1[1] != 0 || !math.IsInf(float64(l1[0]), -1) {
		t.Fatalf("empty rows merged into %v %v", o1[:2], l1[0])
	}
	if math.Abs(float64(o1[2]-2)) > 1e-6 || math.Abs(float64(o1[3]-3)) > 1e-6 {
		t.Fatalf("merged %v, want [2 3]", o1[2:])
	}
	if math.Abs(float64(l1[1])-(0.5+math.Log(2))) > 1e-6 {
		t.Fatalf("lse %v", l1[1])
	}
}

func TestKernelValidate(t *testing.T) {
	good := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 4, Hkv: 2, D: 8}, N: 4, Nk: 4}
	cases := []struct {
		name string
		mut  func(p *kernels.Params)
		want string
	}{
		{"hq", func(p *kernels.Params) { p.Hkv = 3 }, "not divisible"},
		{"d", func(p *kernels.Params) { p.D = 257 }, "head dim D"},
		{"seqlens", func(p *kernels.Params) { p.Mask.SeqLens = []int{1, 2} }, "seqlens sum"},
		{"seqlens0", func(p *kernels.Params) { p.Mask.SeqLens = []int{4, 0} }, "seqlens[1]"},
		{"scale", func(p *kernels.Params) { p.Scale = float32(math.NaN()) }, "scale"},
	}
	for _, c := range cases {
		p := good
		c.mut(&p)
		err := p.Validate()
		if err == nil || !contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error naming %q", c.name, err, c.want)
		}
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func sortInts(a []int) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// sliceRows copies rows [a, e) of every head of x ([heads, n, d]).
func sliceRows(x []float32, heads, n, d, a, e int) []float32 {
	out := make([]float32, 0, heads*(e-a)*d)
	for h := 0; h < heads; h++ {
		out = append(out, x[(h*n+a)*d:(h*n+e)*d]...)
	}
	return out
}

// putRows writes src ([heads, e-a, d]) into rows [a, e) of dst ([heads, n, d]).
func putRows(dst, src []float32, heads, n, d, a, e int) {
	for h := 0; h < heads; h++ {
		copy(dst[(h*n+a)*d:(h*n+e)*d], src[h*(e-a)*d:(h+1)*(e-a)*d])
	}
}
