package kernels_test

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// bwdTolerance is the bound of DESIGN §2 for gradients: 2e-4 × max(1, max|ref|).
const bwdTolerance = 2e-4

// bwdCase is one backward problem with its inputs, the forward's o and lse
// (float32, from kernels.Attention) and the float64 reference gradients.
type bwdCase struct {
	p                    problem
	q, k, v, do, o, lse  []float32
	wantQ, wantK, wantV  []float64
	boundQ, boundK, boun float64
}

func newBwdCase(t testing.TB, p problem, seed uint64) *bwdCase {
	t.Helper()
	q, k, v := p.inputs(seed)
	return newBwdCaseFrom(t, p, q, k, v, testrand.New(seed^0xd0).Slice(len(q), testrand.Normal))
}

func newBwdCaseFrom(t testing.TB, p problem, q, k, v, do []float32) *bwdCase {
	t.Helper()
	c := &bwdCase{p: p, q: q, k: k, v: v, do: do}
	c.o = make([]float32, len(c.q))
	c.lse = make([]float32, p.b*p.hq*p.n)
	restore, err := kernels.Use("generic")
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	if err := kernels.Attention(p.params(), c.q, c.k, c.v, c.o, c.lse); err != nil {
		t.Fatalf("%v: forward: %v", p, err)
	}
	c.wantQ, c.wantK, c.wantV = p.ref().Backward(c.q, c.k, c.v, c.do)
	c.boundQ = bwdTolerance * math.Max(1, attnref.MaxAbs(c.wantQ))
	c.boundK = bwdTolerance * math.Max(1, attnref.MaxAbs(c.wantK))
	c.boun = bwdTolerance * math.Max(1, attnref.MaxAbs(c.wantV))
	return c
}

// grads runs AttentionBackward on outputs pre-filled with garbage between
// NaN guards and returns dq, dk, dv.
func (c *bwdCase) grads(t testing.TB, threads int) (dq, dk, dv []float32) {
	t.Helper()
	p := c.p
	prm := p.params()
	prm.Threads = threads
	dqAll, dq := testrand.Guarded(len(c.q), 16)
	dkAll, dk := testrand.Guarded(len(c.k), 16)
	dvAll, dv := testrand.Guarded(len(c.v), 16)
	for _, x := range [][]float32{dq, dk, dv} {
		for i := range x {
			x[i] = 7
		}
	}
	if err := kernels.AttentionBackward(prm, c.q, c.k, c.v, c.o, c.lse, c.do, dq, dk, dv); err != nil {
		t.Fatalf("%s %v: %v", kernels.Impl(), p, err)
	}
	if !testrand.Intact(dqAll, 16) || !testrand.Intact(dkAll, 16) || !testrand.Intact(dvAll, 16) {
		t.Fatalf("%s %v: wrote outside the gradients", kernels.Impl(), p)
	}
	return dq, dk, dv
}

// errors returns max |got - ref| of dq, dk and dv.
func (c *bwdCase) errors(dq, dk, dv []float32) (eq, ek, ev float64) {
	return attnref.MaxAbsDiff(dq, c.wantQ), attnref.MaxAbsDiff(dk, c.wantK), attnref.MaxAbsDiff(dv, c.wantV)
}

func (c *bwdCase) check(t testing.TB, what string, dq, dk, dv []float32) {
	t.Helper()
	eq, ek, ev := c.errors(dq, dk, dv)
	if !(eq <= c.boundQ) || !(ek <= c.boundK) || !(ev <= c.boun) {
		t.Fatalf("%s %v %s: max error dq %.3g (bound %.3g), dk %.3g (bound %.3g), dv %.3g (bound %.3g)",
			kernels.Impl(), c.p, what, eq, c.boundQ, ek, c.boundK, ev, c.boun)
	}
}

// checkBackwardAllImpls checks p's gradients with every implementation
// against one reference computation.
func checkBackwardAllImpls(t *testing.T, p problem) {
	t.Helper()
	c := newBwdCase(t, p, uint64(p.n*7919+p.nk*31+p.d))
	for _, name := range kernels.Impls() {
		restore, err := kernels.Use(name)
		if err != nil {
			t.Fatal(err)
		}
		dq, dk, dv := c.grads(t, 0)
		c.check(t, "", dq, dk, dv)
		restore()
	}
}

// TestKernelBackwardConformance checks every implementation's gradients
// against the float64 reference: every mask, grouped heads and MQA, cross
// attention, ragged lengths and head dimensions 1 to 256.
func TestKernelBackwardConformance(t *testing.T) {
	lens := []int{1, 7, 64, 65, 200}
	if !testing.Short() {
		lens = append(lens, 450)
	}
	heads := [][2]int{{1, 1}, {4, 2}, {4, 1}}
	dims := []int{1, 3, 16, 64, 128, 256}
	i := 0
	for _, n := range lens {
		for _, nk := range lens {
			for hi, hh := range heads {
				for di, d := range dims {
					i++
					big := n*nk*d > 2e6
					if big && (hi != i%3 || di != i%6) {
						continue
					}
					if !big && n != nk && i%4 != 0 {
						continue
					}
					for mi, m := range masksFor(n, nk) {
						if (big || n*nk > 10000) && mi%3 != i%3 {
							continue
						}
						checkBackwardAllImpls(t, problem{b: 1 + i%2, hq: hh[0], hkv: hh[1], n: n, nk: nk, d: d, mask: m})
					}
				}
			}
		}
	}
}

// TestKernelBackwardAccuracy logs the largest error against the float64
// reference, relative to max(1, max|ref|), per mask and implementation
// (B=1, Hq=4, Hkv=2, N=Nk=300, D=64, unit-normal inputs).
func TestKernelBackwardAccuracy(t *testing.T) {
	for _, m := range masksFor(300, 300) {
		c := newBwdCase(t, problem{b: 1, hq: 4, hkv: 2, n: 300, nk: 300, d: 64, mask: m}, 5)
		var line []string
		for _, name := range kernels.Impls() {
			restore, err := kernels.Use(name)
			if err != nil {
				t.Fatal(err)
			}
			dq, dk, dv := c.grads(t, 0)
			c.check(t, "", dq, dk, dv)
			eq, ek, ev := c.errors(dq, dk, dv)
			rel := func(e, bound float64) float64 { return e / (bound / bwdTolerance) }
			line = append(line, fmt.Sprintf("%s dq %.2g dk %.2g dv %.2g", name, rel(eq, c.boundQ), rel(ek, c.boundK), rel(ev, c.boun)))
			restore()
		}
		t.Logf("%-28s %s", maskName(m), strings.Join(line, " | "))
	}
}

// TestKernelBackwardExtremeValues covers large logits, ties, tiny values,
// rows that see no key (zero gradient, never NaN), a first key tile no row
// sees and negative scales.
func TestKernelBackwardExtremeValues(t *testing.T) {
	for _, mode := range []testrand.Mode{testrand.Large, testrand.Constant, testrand.Tiny} {
		for mi, m := range masksFor(130, 130) {
			if mi%2 == 1 && mode != testrand.Large {
				continue
			}
			checkBackwardAllImpls(t, problem{b: 1, hq: 2, hkv: 1, n: 130, nk: 130, d: 64, mask: m, mode: mode})
		}
	}
	checkBackwardAllImpls(t, problem{b: 1, hq: 1, hkv: 1, n: 50, nk: 300, d: 16,
		mask: kernels.Mask{Windowed: true, Left: 20, Right: 0}})
	checkBackwardAllImpls(t, problem{b: 1, hq: 1, hkv: 1, n: 70, nk: 70, d: 8, scale: -0.5, mask: kernels.Mask{Causal: true}})

	// NaN keys and values in the first 192 keys, which no row sees: the
	// tiles holding them are skipped (dQ += dS·K would turn 0·NaN into NaN).
	p := problem{b: 1, hq: 2, hkv: 1, n: 50, nk: 300, d: 16, mask: kernels.Mask{Windowed: true, Left: 20, Right: 0}}
	q, k, v := p.inputs(8)
	for h := 0; h < p.b*p.hkv; h++ {
		for i := h * p.nk * p.d; i < (h*p.nk+192)*p.d; i++ {
			k[i], v[i] = float32(math.NaN()), float32(math.NaN())
		}
	}
	nanCase := newBwdCaseFrom(t, p, q, k, v, testrand.New(8).Slice(len(q), testrand.Normal))
	forEachImpl(t, func(t *testing.T) {
		dq, dk, dv := nanCase.grads(t, 0)
		nanCase.check(t, "NaN in hidden keys", dq, dk, dv)
	})

	// N > Nk causal: the first 60 rows see no key; their dq is exactly 0.
	p = problem{b: 2, hq: 2, hkv: 1, n: 100, nk: 40, d: 16, mask: kernels.Mask{Causal: true}}
	c := newBwdCase(t, p, 9)
	forEachImpl(t, func(t *testing.T) {
		dq, dk, dv := c.grads(t, 0)
		c.check(t, "", dq, dk, dv)
		for bh := 0; bh < p.b*p.hq; bh++ {
			for _, x := range dq[bh*p.n*p.d : (bh*p.n+60)*p.d] {
				if x != 0 {
					t.Fatalf("a row that sees no key has dq %g", x)
				}
			}
		}
		for _, x := range append(append(dq, dk...), dv...) {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("gradient %g", x)
			}
		}
	})
}

// TestKernelBackwardBlocks cuts the keys into random blocks and sums
// BackwardBlock over them: in increasing key order the gradients are
// bit-identical to AttentionBackward, in a shuffled order equal within the
// bound; query rows cut in order are bit-identical too when Hq = Hkv.
// Trials cycle through four layouts: blocks copied; views into k and v
// (KV.Stride) with the gradients in place; views with the gradients in
// buffers of their own (BackwardBlockTo); copies with the gradients
// written in place into dk and dv (BackwardBlockTo). The second and fourth
// also read Q and dO in place (BackwardRows.Stride).
func TestKernelBackwardBlocks(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := testrand.New(13)
		for trial := 0; trial < 16; trial++ {
			p, cuts := randomCuts(r, 5)
			if trial%4 == 3 {
				p.hq, p.hkv = 2, 2
			}
			c := newBwdCase(t, p, uint64(trial))
			prm := p.params()
			wq, wk, wv := c.grads(t, 0)
			c.check(t, "whole", wq, wk, wv)
			delta := make([]float32, p.b*p.hq*p.n)
			if err := kernels.BackwardDelta(c.o, c.do, delta, p.d); err != nil {
				t.Fatal(err)
			}
			mode := trial % 4
			run := func(order []int, rowCuts []int) (dq, dk, dv []float32) {
				dq, dk, dv = make([]float32, len(c.q)), make([]float32, len(c.k)), make([]float32, len(c.v))
				heads := p.b * p.hq
				for ri := 0; ri+1 < len(rowCuts); ri++ {
					qa, qe := rowCuts[ri], rowCuts[ri+1]
					rows := &kernels.BackwardRows{Start: qa, Rows: qe - qa,
						Q:   sliceRows(c.q, heads, p.n, p.d, qa, qe),
						DO:  sliceRows(c.do, heads, p.n, p.d, qa, qe),
						LSE: sliceRows(c.lse, heads, p.n, 1, qa, qe), Delta: sliceRows(delta, heads, p.n, 1, qa, qe),
						DQ: make([]float32, heads*(qe-qa)*p.d)}
					if mode%2 == 1 {
						// Q and dO read in place: views ending at the last
						// head's last row.
						end := ((heads-1)*p.n + qe) * p.d
						rows.Q, rows.DO, rows.Stride = c.q[qa*p.d:end], c.do[qa*p.d:end], p.n
					}
					for _, bi := range order {
						a, e := cuts[bi], cuts[bi+1]
						kvh := p.b * p.hkv
						var err error
						switch mode {
						case 1:
							err = prm.BackwardBlock(rows, kernels.KV{K: c.k[a*p.d:], V: c.v[a*p.d:], Start: a, N: e - a, Stride: p.nk},
								dk[a*p.d:], dv[a*p.d:])
						case 2:
							bk, bv := make([]float32, kvh*(e-a)*p.d), make([]float32, kvh*(e-a)*p.d)
							err = prm.BackwardBlockTo(rows, kernels.KV{K: c.k[a*p.d:], V: c.v[a*p.d:], Start: a, N: e - a, Stride: p.nk}, bk, bv, 0)
							addRows(dk, bk, kvh, p.nk, p.d, a, e)
							addRows(dv, bv, kvh, p.nk, p.d, a, e)
						case 3:
							err = prm.BackwardBlockTo(rows, kernels.KV{K: sliceRows(c.k, kvh, p.nk, p.d, a, e), V: sliceRows(c.v, kvh, p.nk, p.d, a, e), Start: a, N: e - a},
								dk[a*p.d:], dv[a*p.d:], p.nk)
						default:
							bk, bv := make([]float32, kvh*(e-a)*p.d), make([]float32, kvh*(e-a)*p.d)
							err = prm.BackwardBlock(rows, kernels.KV{K: sliceRows(c.k, kvh, p.nk, p.d, a, e), V: sliceRows(c.v, kvh, p.nk, p.d, a, e), Start: a, N: e - a}, bk, bv)
							addRows(dk, bk, kvh, p.nk, p.d, a, e)
							addRows(dv, bv, kvh, p.nk, p.d, a, e)
						}
						if err != nil {
							t.Fatal(err)
						}
					}
					putRows(dq, rows.DQ, heads, p.n, p.d, qa, qe)
				}
				return dq, dk, dv
			}
			inOrder := make([]int, len(cuts)-1)
			for i := range inOrder {
				inOrder[i] = i
			}
			what := fmt.Sprintf("cuts %v layout %d", cuts, mode)
			dq, dk, dv := run(inOrder, []int{0, p.n})
			sameFloats(t, what+" dq", dq, wq)
			sameFloats(t, what+" dk", dk, wk)
			sameFloats(t, what+" dv", dv, wv)
			shuffled := append([]int(nil), inOrder...)
			for i := len(shuffled) - 1; i > 0; i-- {
				j := r.Intn(i + 1)
				shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
			}
			qa := r.Intn(p.n + 1)
			rowCuts := []int{0, qa, p.n}
			dq, dk, dv = run(shuffled, rowCuts)
			c.check(t, what+fmt.Sprintf(" shuffled %v rows %v", shuffled, rowCuts), dq, dk, dv)
			if p.hq == p.hkv {
				dq, dk, dv = run(inOrder, rowCuts)
				sameFloats(t, what+" split rows dq", dq, wq)
				sameFloats(t, what+" split rows dk", dk, wk)
				sameFloats(t, what+" split rows dv", dv, wv)
			}
		}
	})
}

// TestKernelBackwardDeterministic runs the same problems on 1, 2 and 5
// goroutines, twice each: the gradients are bit-identical.
func TestKernelBackwardDeterministic(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		for _, p := range []problem{
			{b: 1, hq: 4, hkv: 1, n: 700, nk: 650, d: 32, mask: kernels.Mask{Causal: true}},
			{b: 2, hq: 2, hkv: 2, n: 500, nk: 500, d: 24, mask: kernels.Mask{SeqLens: []int{100, 399, 1}}},
			{b: 1, hq: 2, hkv: 1, n: 600, nk: 600, d: 16, mask: kernels.Mask{Windowed: true, Left: 70, Right: 30}},
		} {
			c := &bwdCase{p: p}
			c.q, c.k, c.v = p.inputs(3)
			c.do = testrand.New(4).Slice(len(c.q), testrand.Normal)
			c.o, c.lse = make([]float32, len(c.q)), make([]float32, p.b*p.hq*p.n)
			if err := kernels.Attention(p.params(), c.q, c.k, c.v, c.o, c.lse); err != nil {
				t.Fatal(err)
			}
			wq, wk, wv := c.grads(t, 1)
			for _, threads := range []int{2, 5, 5, 2} {
				dq, dk, dv := c.grads(t, threads)
				what := fmt.Sprintf("%v threads %d", p, threads)
				sameFloats(t, what+" dq", dq, wq)
				sameFloats(t, what+" dk", dk, wk)
				sameFloats(t, what+" dv", dv, wv)
			}
		}
	})
}

// TestKernelBackwardInvalid checks that bad arguments are refused, naming
// the field, and that nothing is written then.
func TestKernelBackwardInvalid(t *testing.T) {
	p := problem{b: 1, hq: 2, hkv: 1, n: 8, nk: 6, d: 4}
	prm := p.params()
	q, k, v := p.inputs(1)
	o, lse, do := make([]float32, len(q)), make([]float32, 16), make([]float32, len(q))
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
	for _, c := range []struct {
		name string
		call func() error
		want string
	}{
		{"dq short", func() error {
			return kernels.AttentionBackward(prm, q, k, v, o, lse, do, dq[:63], dk, dv)
		}, "dq has 63 values, expected 64"},
		{"lse long", func() error {
			return kernels.AttentionBackward(prm, q, k, v, o, make([]float32, 17), do, dq, dk, dv)
		}, "lse has 17 values, expected 16"},
		{"dv short", func() error {
			return kernels.AttentionBackward(prm, q, k, v, o, lse, do, dq, dk, dv[:20])
		}, "dv has 20 values, expected 24"},
		{"k short", func() error {
			return kernels.AttentionBackward(prm, q, k[:20], v, o, lse, do, dq, dk, dv)
		}, "k has 20 values, expected 24"},
		{"bad params", func() error {
			bad := *prm
			bad.D = 0
			return kernels.AttentionBackward(&bad, q, k, v, o, lse, do, dq, dk, dv)
		}, "head dim D = 0"},
		{"rows outside", func() error {
			return prm.BackwardBlock(&kernels.BackwardRows{Start: 4, Rows: 5, Q: make([]float32, 40), DO: make([]float32, 40),
				DQ: make([]float32, 40), LSE: make([]float32, 10), Delta: make([]float32, 10)}, kernels.KV{K: k, V: v, N: 6}, dk, dv)
		}, "query rows [4,9) outside the sequence of 8"},
		{"delta short", func() error {
			return prm.BackwardBlock(&kernels.BackwardRows{Start: 0, Rows: 8, Q: q, DO: do, DQ: dq, LSE: lse, Delta: lse[:15]},
				kernels.KV{K: k, V: v, N: 6}, dk, dv)
		}, "delta has 15 values, expected 16"},
		{"dk view short", func() error {
			return prm.BackwardBlock(&kernels.BackwardRows{Start: 0, Rows: 8, Q: q, DO: do, DQ: dq, LSE: lse, Delta: lse},
				kernels.KV{K: k, V: v, N: 3, Stride: 6}, dk[:11], dv)
		}, "dk has 11 values, too few for 1 heads of 3 rows 6 rows apart"},
		{"grad stride short", func() error {
			return prm.BackwardBlockTo(&kernels.BackwardRows{Start: 0, Rows: 8, Q: q, DO: do, DQ: dq, LSE: lse, Delta: lse},
				kernels.KV{K: k, V: v, N: 3, Stride: 6}, dk, dv[:11], 5)
		}, "dv has 11 values, too few for 1 heads of 3 rows 5 rows apart"},
		{"query view short", func() error {
			return prm.BackwardBlock(&kernels.BackwardRows{Start: 0, Rows: 8, Stride: 10, Q: q, DO: make([]float32, 72), DQ: dq, LSE: lse, Delta: lse},
				kernels.KV{K: k, V: v, N: 6}, dk, dv)
		}, "q has 64 values, too few for 2 heads of 8 rows 10 rows apart"},
		{"query stride below the rows", func() error {
			return prm.BackwardBlock(&kernels.BackwardRows{Start: 0, Rows: 8, Stride: 7, Q: q, DO: do, DQ: dq, LSE: lse, Delta: lse},
				kernels.KV{K: k, V: v, N: 6}, dk, dv)
		}, "query stride 7 below the 8 rows"},
		{"grad stride below the keys", func() error {
			return prm.BackwardBlockTo(&kernels.BackwardRows{Start: 0, Rows: 8, Q: q, DO: do, DQ: dq, LSE: lse, Delta: lse},
				kernels.KV{K: k, V: v, N: 3, Stride: 6}, dk, dv, 2)
		}, "gradient stride 2 below the block's 3 keys"},
		{"overflow", func() error {
			huge := *prm
			huge.N, huge.Nk = math.MaxInt/4, math.MaxInt/4 // B·Hq·N·D = 2·MaxInt wraps around
			return kernels.AttentionBackward(&huge, q, k, v, o, lse, do, dq, dk, dv)
		}, "has more values than an int holds"},
		{"delta D", func() error { return kernels.BackwardDelta(o, do, lse, 0) }, "head dim D = 0"},
		{"delta rows", func() error { return kernels.BackwardDelta(o, do, lse[:15], 4) }, "delta of 15 rows needs o and do of 60 values"},
	} {
		for i := range dq {
			dq[i] = 3
		}
		err := c.call()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, expected %q", c.name, err, c.want)
		}
		if dq[0] != 3 {
			t.Errorf("%s: dq written on error", c.name)
		}
	}
	// At the limit: D = MaxHeadDim works, just past it is refused.
	big := problem{b: 1, hq: 1, hkv: 1, n: 3, nk: 3, d: kernels.MaxHeadDim}
	c := newBwdCase(t, big, 2)
	dqb, dkb, dvb := c.grads(t, 0)
	c.check(t, "", dqb, dkb, dvb)
	over := big.params()
	over.D = kernels.MaxHeadDim + 1
	if err := kernels.AttentionBackward(over, c.q, c.k, c.v, c.o, c.lse, c.do, dqb, dkb, dvb); err == nil {
		t.Fatal("D = MaxHeadDim+1 accepted")
	}
}

func sameFloats(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: differs at %d: %g != %g", what, i, got[i], want[i])
		}
	}
}

// addRows adds src ([heads, e-a, d]) into rows [a, e) of dst ([heads, n, d]).
func addRows(dst, src []float32, heads, n, d, a, e int) {
	for h := 0; h < heads; h++ {
		dr := dst[(h*n+a)*d : (h*n+e)*d]
		for i, x := range src[h*(e-a)*d : (h+1)*(e-a)*d] {
			dr[i] += x
		}
	}
}
