package ringattn_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const tolerance = 1e-4

// problem is one attention problem with seeded unit-normal inputs and its
// float64 reference.
type problem struct {
	name    string
	p       kernels.Params
	q, k, v []float32
	refO    []float64
	refLSE  []float64
}

func newProblem(name string, b, hq, hkv, n, nk, d int, m kernels.Mask, seed uint64) *problem {
	pr := &problem{name: name, p: kernels.Params{Shape: kernels.Shape{B: b, Hq: hq, Hkv: hkv, D: d}, N: n, Nk: nk, Mask: m}}
	r := testrand.New(seed)
	pr.q = r.Slice(b*hq*n*d, testrand.Normal)
	pr.k = r.Slice(b*hkv*nk*d, testrand.Normal)
	pr.v = r.Slice(b*hkv*nk*d, testrand.Normal)
	ref := attnref.Problem{B: b, Hq: hq, Hkv: hkv, N: n, Nk: nk, D: d, Mask: attnref.Mask{
		Causal: m.Causal, Windowed: m.Windowed, Left: m.Left, Right: m.Right, SeqLens: m.SeqLens, SeqLensK: m.SeqLensK}}
	pr.refO, pr.refLSE = ref.Attention(pr.q, pr.k, pr.v)
	return pr
}

func newNet(t testing.TB, size int, opts ringattn.MemOptions) *ringattn.MemNet {
	t.Helper()
	n, err := ringattn.NewMemNet(size, opts)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (pr *problem) request(ranks, block int, s shard.Strategy) shard.Request {
	m := pr.p.Mask
	return shard.Request{B: pr.p.B, Hq: pr.p.Hq, Hkv: pr.p.Hkv, D: pr.p.D, N: pr.p.N, Nk: pr.p.Nk,
		Block: block, Ranks: ranks, Strategy: s,
		Mask: shard.Mask{Causal: m.Causal, Windowed: m.Windowed, Left: m.Left, Right: m.Right,
			SeqLens: m.SeqLens, SeqLensK: m.SeqLensK}}
}

func (pr *problem) plan(t testing.TB, req shard.Request) *shard.Plan {
	t.Helper()
	plan, err := shard.NewPlan(req)
	if err != nil {
		t.Fatalf("%s: NewPlan: %v", pr.name, err)
	}
	return plan
}

func (pr *problem) check(t *testing.T, what string, o, lse []float32) {
	t.Helper()
	if d := attnref.MaxAbsDiff(o, pr.refO); !(d <= tolerance) {
		t.Fatalf("%s: max |o - ref| = %.3g > %g", what, d, tolerance)
	}
	if d := attnref.MaxAbsDiff(lse, pr.refLSE); !(d <= tolerance) {
		t.Fatalf("%s: max |lse - ref| = %.3g > %g", what, d, tolerance)
	}
}

// problems covers ragged lengths, every mask and combination, GQA and
// cross-attention.
func problems() []*problem {
	win := func(l, r int) kernels.Mask { return kernels.Mask{Windowed: true, Left: l, Right: r} }
	docs := []int{40, 61, 1, 55}
	return []*problem{
		newProblem("full", 1, 4, 2, 157, 157, 16, kernels.Mask{}, 1),
		newProblem("causal", 2, 4, 1, 157, 157, 16, kernels.Mask{Causal: true}, 2),
		newProblem("window", 1, 4, 2, 157, 157, 16, win(20, 7), 3),
		newProblem("window-left", 1, 2, 2, 157, 157, 16, win(33, -1), 4),
		newProblem("docs", 1, 4, 2, 157, 157, 16, kernels.Mask{SeqLens: docs}, 5),
		newProblem("causal+window", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, Windowed: true, Left: 25, Right: -1}, 6),
		newProblem("causal+docs", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, SeqLens: docs}, 7),
		newProblem("window+docs", 1, 4, 4, 157, 157, 16, kernels.Mask{Windowed: true, Left: 9, Right: 4, SeqLens: docs}, 8),
		newProblem("causal+window+docs", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, Windowed: true, Left: 17, Right: -1, SeqLens: docs}, 9),
		newProblem("cross", 1, 4, 2, 93, 211, 16, kernels.Mask{}, 10),
		newProblem("cross-causal", 2, 4, 2, 93, 211, 16, kernels.Mask{Causal: true}, 11),
		newProblem("cross-causal-longq", 1, 4, 2, 211, 93, 16, kernels.Mask{Causal: true}, 12),
		newProblem("cross-docs+window", 1, 4, 2, 93, 211, 16, kernels.Mask{Windowed: true, Left: 30, Right: 3,
			SeqLens: []int{30, 50, 13}, SeqLensK: []int{100, 11, 100}}, 13),
	}
}

var strategies = []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV, shard.Auto}

// TestRingLocalMatchesReference: every rank count, strategy, mask, GQA and
// cross-attention shape equals the float64 reference within 1e-4.
func TestRingLocalMatchesReference(t *testing.T) {
	ctx := context.Background()
	for _, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			for _, ranks := range []int{1, 2, 3, 4, 7, 8} {
				for _, s := range strategies {
					plan := pr.plan(t, pr.request(ranks, 16, s))
					o, lse, err := ringattn.RunLocal(ctx, &pr.p, plan, pr.q, pr.k, pr.v)
					if err != nil {
						t.Fatalf("R=%d %s: %v", ranks, s, err)
					}
					pr.check(t, fmt.Sprintf("R=%d %s", ranks, plan.Strategy), o, lse)
				}
			}
		})
	}
}

// TestRingMatchesKernel: the ring computes what the local kernel computes.
func TestRingMatchesKernel(t *testing.T) {
	pr := newProblem("causal-512", 1, 4, 2, 500, 500, 32, kernels.Mask{Causal: true}, 21)
	o := make([]float32, len(pr.q))
	lse := make([]float32, pr.p.B*pr.p.Hq*pr.p.N)
	if err := kernels.Attention(&pr.p, pr.q, pr.k, pr.v, o, lse); err != nil {
		t.Fatal(err)
	}
	for _, s := range strategies {
		plan := pr.plan(t, pr.request(4, 64, s))
		ro, rlse, err := ringattn.RunLocal(context.Background(), &pr.p, plan, pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatal(err)
		}
		pr.check(t, string(plan.Strategy), ro, rlse)
		var d float64
		for i := range o {
			d = max(d, math.Abs(float64(o[i]-ro[i])))
		}
		if d > 1e-5 {
			t.Fatalf("%s: max |ring - kernel| = %.3g", s, d)
		}
	}
}

// TestRingWeightedAndReplan: weighted plans, and a re-plan of a subset of
// query blocks, are exact; blocks outside the subset are not written.
func TestRingWeightedAndReplan(t *testing.T) {
	pr := newProblem("causal+docs", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, SeqLens: []int{70, 87}}, 31)
	for _, s := range strategies {
		req := pr.request(3, 16, s)
		req.Weights = []float64{1, 3.5, 0.5}
		o, lse, err := ringattn.RunLocal(context.Background(), &pr.p, pr.plan(t, req), pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatal(err)
		}
		pr.check(t, "weighted "+string(s), o, lse)

		req.QBlocks = []int{9, 0, 4, 5}
		plan := pr.plan(t, req)
		o, lse, err = ringattn.RunLocal(context.Background(), &pr.p, plan, pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatal(err)
		}
		d := pr.p.D
		for qi := range plan.QBlockCount {
			start, n := plan.QSpan(qi)
			for bh := range pr.p.B * pr.p.Hq {
				for i := start; i < start+n; i++ {
					row := bh*pr.p.N + i
					for c := range d {
						got, want := float64(o[row*d+c]), pr.refO[row*d+c]
						if !slices.Contains(req.QBlocks, qi) {
							want = 0
						}
						if math.Abs(got-want) > tolerance {
							t.Fatalf("%s re-plan: block %d row %d: o = %v, expected %v", s, qi, i, got, want)
						}
					}
					if slices.Contains(req.QBlocks, qi) && math.Abs(float64(lse[row])-pr.refLSE[row]) > tolerance {
						t.Fatalf("%s re-plan: block %d row %d: lse = %v, expected %v", s, qi, i, lse[row], pr.refLSE[row])
					}
				}
			}
		}
	}
}

// runNet runs a plan over net with a fresh sink and returns the outputs
// and the source (for its fetch counters).
func runNet(t *testing.T, pr *problem, plan *shard.Plan, net *ringattn.MemNet) (o, lse []float32, src *ringattn.MemSource) {
	t.Helper()
	src, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
	if err != nil {
		t.Fatal(err)
	}
	o, lse, err = ringattn.RunLocalNet(context.Background(), ringattn.LocalConfig{Net: net, Source: src}, &pr.p, plan, pr.q, pr.k, pr.v)
	if err != nil {
		t.Fatal(err)
	}
	return o, lse, src
}

// TestRingFaults: with frames dropped, delayed past the timeout, delayed
// within it, duplicated and reordered, the result is still exact — and
// bit-identical to the clean run of the same plan — via Source fallbacks.
func TestRingFaults(t *testing.T) {
	pr := newProblem("causal+window", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, Windowed: true, Left: 60, Right: -1}, 41)
	faults := map[string]func(from, to int, key ringattn.Key) ringattn.Fault{
		"drop": func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Drop: (from+key.Step+key.Block)%3 == 0}
		},
		"delay-past-timeout": func(from, to int, key ringattn.Key) ringattn.Fault {
			if (from+key.Block+key.Step)%4 == 1 {
				return ringattn.Fault{Delay: 150 * time.Millisecond}
			}
			return ringattn.Fault{}
		},
		"delay-within-timeout": func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Delay: time.Duration(key.Block%3) * time.Millisecond}
		},
		"duplicate": func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Duplicate: key.Block%2 == 0}
		},
		"reorder": func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Reorder: key.Block%2 == 1}
		},
	}
	for _, s := range []shard.Strategy{shard.Zigzag, shard.Striped, shard.SplitKV} {
		plan := pr.plan(t, pr.request(4, 16, s))
		clean := newNet(t, 4, ringattn.MemOptions{})
		wantO, wantLSE, cleanSrc := runNet(t, pr, plan, clean)
		clean.Close()
		pr.check(t, "clean "+string(s), wantO, wantLSE)
		for name, f := range faults {
			t.Run(string(s)+"/"+name, func(t *testing.T) {
				// Receive timeout: long against the frame delays within it,
				// short against the test.
				timeout := 60 * time.Millisecond
				if name == "delay-within-timeout" {
					timeout = 5 * time.Second
				}
				net := newNet(t, 4, ringattn.MemOptions{RecvTimeout: timeout, Fault: f})
				defer net.Close()
				o, lse, src := runNet(t, pr, plan, net)
				pr.check(t, name, o, lse)
				if !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
					t.Fatalf("%s: output differs from the clean run of the same plan", name)
				}
				st := net.Stats()
				extra := src.Fetches("k") - cleanSrc.Fetches("k")
				t.Logf("stats %+v, extra key fetches %d", st, extra)
				switch name {
				case "drop":
					if st.Dropped == 0 || extra == 0 && s != shard.SplitKV {
						t.Fatalf("no frame dropped (%+v) or no fallback (%d)", st, extra)
					}
				case "delay-past-timeout":
					if st.Timeouts == 0 || extra == 0 && s != shard.SplitKV {
						t.Fatalf("no timeout (%+v) or no fallback (%d)", st, extra)
					}
				case "delay-within-timeout":
					if st.Timeouts != 0 || extra != 0 {
						t.Fatalf("delays within the timeout caused fallbacks: %+v, %d", st, extra)
					}
				case "duplicate":
					if st.Duplicated == 0 {
						t.Fatalf("nothing duplicated: %+v", st)
					}
				case "reorder":
					if st.Reordered == 0 {
						t.Fatalf("nothing reordered: %+v", st)
					}
				}
			})
		}
	}
}

// TestRingSplitKVPartialLost: a dropped partial is recomputed from the
// Source by the receiving rank, subtree included.
func TestRingSplitKVPartialLost(t *testing.T) {
	pr := newProblem("decode", 1, 4, 2, 9, 300, 16, kernels.Mask{Causal: true}, 51)
	plan := pr.plan(t, pr.request(7, 16, shard.SplitKV))
	clean := newNet(t, 7, ringattn.MemOptions{})
	wantO, wantLSE, _ := runNet(t, pr, plan, clean)
	clean.Close()
	pr.check(t, "clean", wantO, wantLSE)
	var dropped atomic.Int64
	net := newNet(t, 7, ringattn.MemOptions{RecvTimeout: 50 * time.Millisecond,
		Fault: func(from, to int, key ringattn.Key) ringattn.Fault {
			if key.Kind == ringattn.KindPartial && (from == 4 || from == 3) {
				dropped.Add(1)
				return ringattn.Fault{Drop: true}
			}
			return ringattn.Fault{}
		}})
	defer net.Close()
	o, lse, _ := runNet(t, pr, plan, net)
	if dropped.Load() != 2 {
		t.Fatalf("dropped %d partials, expected 2", dropped.Load())
	}
	if !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
		t.Fatal("output differs from the clean run")
	}
}

// TestRingKilledRank: a rank dies mid-job; every other rank returns an
// error promptly (long before the receive timeout), and no goroutine is
// left behind. The harness kills a rank in the net when its RunRank fails,
// as the cluster's failure detector would.
func TestRingKilledRank(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pr := newProblem("causal", 1, 4, 2, 400, 400, 32, kernels.Mask{Causal: true}, 61)
	for _, s := range []shard.Strategy{shard.Zigzag, shard.SplitKV} {
		t.Run(string(s), func(t *testing.T) {
			plan := pr.plan(t, pr.request(4, 32, s))
			var net *ringattn.MemNet
			net = newNet(t, 4, ringattn.MemOptions{RecvTimeout: time.Minute,
				Fault: func(from, to int, key ringattn.Key) ringattn.Fault {
					// Rank 2 dies as it starts passing its blocks on, while
					// every rank computes its first step: its key/value set
					// never reaches anyone, so every other rank needs it.
					if from == 2 && (key.Step == 1 || key.Kind == ringattn.KindPartial) {
						net.Kill(2)
					}
					return ringattn.Fault{}
				}})
			defer net.Close()
			src, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
			if err != nil {
				t.Fatal(err)
			}
			sink, err := ringattn.NewMemSink(&pr.p, plan.Block)
			if err != nil {
				t.Fatal(err)
			}
			errs := make([]error, 4)
			var wg sync.WaitGroup
			start := time.Now()
			for r := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[r] = ringattn.RunRank(context.Background(), ringattn.RankConfig{
						Params: &pr.p, Plan: plan, Ring: net.Rank(r), Source: src, Sink: sink})
					if errs[r] != nil {
						net.Kill(r)
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			if elapsed > 10*time.Second {
				t.Fatalf("ranks took %v to stop", elapsed)
			}
			failed := 0
			for r, err := range errs {
				switch {
				case err == nil:
					// Split-KV: a leaf that sent its partial before the death finished.
					if s != shard.SplitKV {
						t.Fatalf("rank %d returned nil", r)
					}
				case errors.Is(err, ringattn.ErrPeerGone) || errors.Is(err, ringattn.ErrKilled):
					failed++
				default:
					t.Fatalf("rank %d: unexpected error %v", r, err)
				}
				t.Logf("rank %d: %v", r, err)
			}
			if !errors.Is(errs[2], ringattn.ErrKilled) || !errors.Is(errs[0], ringattn.ErrPeerGone) {
				t.Fatalf("rank 2: %v, rank 0: %v", errs[2], errs[0])
			}
			t.Logf("%d ranks failed in %v", failed, elapsed)
		})
	}
}

// cancelingSource cancels a context on the n-th key fetch.
type cancelingSource struct {
	ringattn.Source
	n      atomic.Int64
	at     int64
	cancel context.CancelFunc
	when   atomic.Int64
}

func (c *cancelingSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	if tensor == "k" && c.n.Add(1) == c.at {
		c.when.Store(time.Now().UnixNano())
		c.cancel()
	}
	return c.Source.Fetch(ctx, tensor, block)
}

// TestRingCancel: canceling the context — between ring steps, or while
// split-KV ranks are fetching and folding their ranges — stops every rank
// promptly with the context's error and no goroutine left.
func TestRingCancel(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pr := newProblem("full", 1, 4, 4, 600, 600, 32, kernels.Mask{}, 71)
	t.Run("ring", func(t *testing.T) {
		plan := pr.plan(t, pr.request(3, 32, shard.Contiguous))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		net := newNet(t, 3, ringattn.MemOptions{})
		defer net.Close()
		var canceledAt atomic.Int64
		_, _, err := ringattn.RunLocalNet(ctx, ringattn.LocalConfig{Net: net, Progress: func(p ringattn.Progress) {
			if p.Step == 1 && canceledAt.CompareAndSwap(0, time.Now().UnixNano()) {
				cancel()
			}
		}}, &pr.p, plan, pr.q, pr.k, pr.v)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, expected context.Canceled", err)
		}
		if d := time.Since(time.Unix(0, canceledAt.Load())); d > 5*time.Second {
			t.Fatalf("stopped %v after cancel", d)
		}
	})
	t.Run("splitkv", func(t *testing.T) {
		plan := pr.plan(t, pr.request(3, 32, shard.SplitKV))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		src, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatal(err)
		}
		cs := &cancelingSource{Source: src, at: 5, cancel: cancel}
		net := newNet(t, 3, ringattn.MemOptions{})
		defer net.Close()
		_, _, err = ringattn.RunLocalNet(ctx, ringattn.LocalConfig{Net: net, Source: cs}, &pr.p, plan, pr.q, pr.k, pr.v)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, expected context.Canceled", err)
		}
		if d := time.Since(time.Unix(0, cs.when.Load())); d > 5*time.Second {
			t.Fatalf("stopped %v after cancel", d)
		}
	})
}

// TestRingProgress: the progress counters add up to the plan's work.
func TestRingProgress(t *testing.T) {
	pr := newProblem("causal", 1, 2, 2, 157, 157, 16, kernels.Mask{Causal: true}, 81)
	for _, s := range []shard.Strategy{shard.Zigzag, shard.SplitKV} {
		plan := pr.plan(t, pr.request(3, 16, s))
		var mu sync.Mutex
		last := map[int]ringattn.Progress{}
		net := newNet(t, 3, ringattn.MemOptions{})
		_, _, err := ringattn.RunLocalNet(context.Background(), ringattn.LocalConfig{Net: net, Progress: func(p ringattn.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := last[p.Rank]; ok && (p.Pairs < prev.Pairs || p.Step < prev.Step) {
				t.Errorf("progress went backwards: %+v after %+v", p, prev)
			}
			last[p.Rank] = p
		}}, &pr.p, plan, pr.q, pr.k, pr.v)
		net.Close()
		if err != nil {
			t.Fatal(err)
		}
		var pairs, skipped int
		var flops float64
		for r := range 3 {
			p := last[r]
			if !p.Done || p.Pairs != p.TotalPairs || p.Step != plan.Steps {
				t.Fatalf("%s rank %d final progress %+v", s, r, p)
			}
			if p.FLOPs != plan.Ranks[r].Cost {
				t.Fatalf("%s rank %d folded %v FLOPs, plan says %v", s, r, p.FLOPs, plan.Ranks[r].Cost)
			}
			pairs += p.Pairs
			skipped += p.Skipped
			flops += p.FLOPs
		}
		want := 0
		for qi := range plan.QBlockCount {
			for _, c := range plan.PairsRow(qi) {
				if c > 0 {
					want++
				}
			}
		}
		if pairs != want || skipped == 0 {
			t.Fatalf("%s: %d pairs folded (expected %d), %d skipped", s, pairs, want, skipped)
		}
		if vf := pr.p.VisibleFLOPs(); math.Abs(flops-vf) > 1e-9*vf {
			t.Fatalf("%s: %v FLOPs folded, expected %v", s, flops, vf)
		}
	}
}

// badSource returns blocks of the wrong length.
type badSource struct{}

func (badSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	return make([]float32, 3), nil
}

func TestRingBadConfig(t *testing.T) {
	pr := newProblem("causal", 1, 2, 2, 64, 64, 8, kernels.Mask{Causal: true}, 91)
	plan := pr.plan(t, pr.request(2, 16, shard.Zigzag))
	net := newNet(t, 2, ringattn.MemOptions{})
	defer net.Close()
	src, _ := ringattn.NewMemSource(&pr.p, 16, pr.q, pr.k, pr.v)
	sink, _ := ringattn.NewMemSink(&pr.p, 16)
	good := ringattn.RankConfig{Params: &pr.p, Plan: plan, Ring: net.Rank(0), Source: src, Sink: sink}
	other := pr.p
	other.Mask.Causal = false
	wider := pr.p
	wider.N = 65
	cases := map[string]func(c *ringattn.RankConfig){
		"Params is nil":       func(c *ringattn.RankConfig) { c.Params = nil },
		"Plan is nil":         func(c *ringattn.RankConfig) { c.Plan = nil },
		"Ring is nil":         func(c *ringattn.RankConfig) { c.Ring = nil },
		"Source is nil":       func(c *ringattn.RankConfig) { c.Source = nil },
		"Sink is nil":         func(c *ringattn.RankConfig) { c.Sink = nil },
		"plan mask":           func(c *ringattn.RankConfig) { c.Params = &other },
		"expected N=65":       func(c *ringattn.RankConfig) { c.Params = &wider },
		"ring size 3":         func(c *ringattn.RankConfig) { c.Ring = newNet(t, 3, ringattn.MemOptions{}).Rank(0) },
		"query block 0 has 3": func(c *ringattn.RankConfig) { c.Source = badSource{} },
		"elem_bytes: 3: want 2 (bf16) or 4": func(c *ringattn.RankConfig) {
			c.Plan = &shard.Plan{Request: shard.Request{B: 1, Hq: 1, Hkv: 1, D: 1, N: 1, Nk: 1, Ranks: 1, ElemBytes: 3}}
		},
	}
	for want, edit := range cases {
		c := good
		edit(&c)
		err := ringattn.RunRank(context.Background(), c)
		if !errors.Is(err, ringattn.ErrInvalid) || !contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	if _, err := ringattn.NewMemSource(&pr.p, 16, pr.q[:5], pr.k, pr.v); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("short q: %v", err)
	}
	if _, err := src.Fetch(context.Background(), "x", 0); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("tensor x: %v", err)
	}
	if _, err := src.Fetch(context.Background(), "k", 4); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("block 4: %v", err)
	}
	if err := sink.Put(context.Background(), 0, make([]float32, 2), nil); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("short put: %v", err)
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

// blockOnly hides the optional RunSource of the Source it wraps, as a
// store-backed source (one object per block) would.
type blockOnly struct{ ringattn.Source }

// blockSink hides the optional RunSink of the MemSink it wraps.
type blockSink struct{ ms *ringattn.MemSink }

func (b blockSink) Put(ctx context.Context, block int, o, lse []float32) error {
	return b.ms.Put(ctx, block, o, lse)
}

// TestRingBlockSource: with a Source that serves single blocks only and a
// Sink that takes single blocks only, ranks assemble and split their query
// runs themselves; results are unchanged.
func TestRingBlockSource(t *testing.T) {
	pr := newProblem("causal+docs", 2, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, SeqLens: []int{70, 87}}, 111)
	for _, s := range strategies {
		plan := pr.plan(t, pr.request(3, 16, s))
		src, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatal(err)
		}
		net := newNet(t, 3, ringattn.MemOptions{})
		o, lse, err := ringattn.RunLocalNet(context.Background(), ringattn.LocalConfig{Net: net, Source: blockOnly{src}},
			&pr.p, plan, pr.q, pr.k, pr.v)
		net.Close()
		if err != nil {
			t.Fatal(err)
		}
		pr.check(t, string(plan.Strategy), o, lse)
		wantO, wantLSE, err := ringattn.RunLocal(context.Background(), &pr.p, plan, pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
			t.Fatalf("%s: block-by-block source changed the result", plan.Strategy)
		}

		ms, err := ringattn.NewMemSink(&pr.p, plan.Block)
		if err != nil {
			t.Fatal(err)
		}
		net = newNet(t, 3, ringattn.MemOptions{})
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for r := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = ringattn.RunRank(context.Background(), ringattn.RankConfig{Params: &pr.p, Plan: plan,
					Ring: net.Rank(r), Source: blockOnly{src}, Sink: blockSink{ms}})
			}()
		}
		wg.Wait()
		net.Close()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		for _, qi := range plan.Planned {
			if ms.Puts(qi) != 1 {
				t.Fatalf("%s: block %d written %d times", plan.Strategy, qi, ms.Puts(qi))
			}
		}
		if o, lse := ms.Result(); !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
			t.Fatalf("%s: block-by-block sink changed the result", plan.Strategy)
		}

		// A view-lending source with a ring that copies frames, as NATS
		// does: ranks send contiguous copies of their views.
		ms, err = ringattn.NewMemSink(&pr.p, plan.Block)
		if err != nil {
			t.Fatal(err)
		}
		net = newNet(t, 3, ringattn.MemOptions{})
		for r := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = ringattn.RunRank(context.Background(), ringattn.RankConfig{Params: &pr.p, Plan: plan,
					Ring: copyRing{net.Rank(r)}, Source: src, Sink: ms})
			}()
		}
		wg.Wait()
		net.Close()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if o, lse := ms.Result(); !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
			t.Fatalf("%s: a copying ring changed the result", plan.Strategy)
		}
	}
}

// copyRing hides the FrameSharer of the ring it wraps and copies every
// frame it sends, like a ring that serializes frames; it refuses views.
type copyRing struct{ ringattn.Ring }

func (c copyRing) Send(ctx context.Context, to int, f ringattn.Frame) error {
	if f.Stride != 0 {
		return fmt.Errorf("frame %+v has views (stride %d)", f.Key, f.Stride)
	}
	ts := make([][]float32, len(f.Tensors))
	for i, t := range f.Tensors {
		ts[i] = slices.Clone(t)
	}
	f.Tensors = ts
	return c.Ring.Send(ctx, to, f)
}
