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

// gradTolerance is relative to max(1, max|ref|) of each gradient.
const gradTolerance = 2e-4

// gradProblem is a problem with the forward's float32 outputs, a seeded
// output gradient and the float64 reference gradients.
type gradProblem struct {
	*problem
	o, lse, do         []float32
	refQ, refK, refV   []float64
	dq, dk, dv, inputs int
}

func newGradProblem(t testing.TB, pr *problem, seed uint64) *gradProblem {
	t.Helper()
	p := &pr.p
	g := &gradProblem{problem: pr}
	g.o = make([]float32, len(pr.q))
	g.lse = make([]float32, p.B*p.Hq*p.N)
	if err := kernels.Attention(p, pr.q, pr.k, pr.v, g.o, g.lse); err != nil {
		t.Fatal(err)
	}
	g.do = testrand.New(seed).Slice(len(pr.q), testrand.Normal)
	m := p.Mask
	ref := attnref.Problem{B: p.B, Hq: p.Hq, Hkv: p.Hkv, N: p.N, Nk: p.Nk, D: p.D, Mask: attnref.Mask{
		Causal: m.Causal, Windowed: m.Windowed, Left: m.Left, Right: m.Right, SeqLens: m.SeqLens, SeqLensK: m.SeqLensK}}
	g.refQ, g.refK, g.refV = ref.Backward(pr.q, pr.k, pr.v, g.do)
	return g
}

// gradErr returns the first gradient off its reference by more than
// gradTolerance × max(1, max|ref|), or nil.
func (g *gradProblem) gradErr(dq, dk, dv []float32) error {
	for _, x := range []struct {
		name string
		got  []float32
		ref  []float64
	}{{"dq", dq, g.refQ}, {"dk", dk, g.refK}, {"dv", dv, g.refV}} {
		tol := gradTolerance * max(1, attnref.MaxAbs(x.ref))
		if d := attnref.MaxAbsDiff(x.got, x.ref); !(d <= tol) {
			return fmt.Errorf("max |%s - ref| = %.3g > %.3g", x.name, d, tol)
		}
	}
	return nil
}

func (g *gradProblem) runBackward(t testing.TB, plan *shard.Plan) (dq, dk, dv []float32) {
	t.Helper()
	dq, dk, dv, err := ringattn.RunLocalBackward(context.Background(), &g.p, plan, g.q, g.k, g.v, g.o, g.lse, g.do)
	if err != nil {
		t.Fatalf("%s %s R=%d: %v", g.name, plan.Strategy, len(plan.Ranks), err)
	}
	return dq, dk, dv
}

// TestRingBackwardMatchesReference: every strategy, rank count, mask, GQA,
// cross and ragged shape gives gradients within 2e-4 × max(1, max|ref|) of
// the float64 reference, bit-identical from run to run.
func TestRingBackwardMatchesReference(t *testing.T) {
	for i, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			g := newGradProblem(t, pr, uint64(1000+i))
			for _, ranks := range []int{1, 2, 3, 4, 7} {
				for _, s := range strategies {
					plan := pr.plan(t, pr.request(ranks, 16, s))
					dq, dk, dv := g.runBackward(t, plan)
					if err := g.gradErr(dq, dk, dv); err != nil {
						t.Fatalf("R=%d %s: %v", ranks, plan.Strategy, err)
					}
					if ranks == 3 {
						dq2, dk2, dv2 := g.runBackward(t, plan)
						if !slices.Equal(dq, dq2) || !slices.Equal(dk, dk2) || !slices.Equal(dv, dv2) {
							t.Fatalf("R=%d %s: a second run differs", ranks, plan.Strategy)
						}
					}
				}
			}
		})
	}
}

// TestRingBackwardMatchesKernel: the ring's gradients agree with the local
// backward kernel's, and the weighted plans' too.
func TestRingBackwardMatchesKernel(t *testing.T) {
	pr := newProblem("causal-500", 1, 4, 2, 500, 500, 32, kernels.Mask{Causal: true}, 21)
	g := newGradProblem(t, pr, 22)
	dq := make([]float32, len(pr.q))
	dk := make([]float32, len(pr.k))
	dv := make([]float32, len(pr.v))
	if err := kernels.AttentionBackward(&pr.p, pr.q, pr.k, pr.v, g.o, g.lse, g.do, dq, dk, dv); err != nil {
		t.Fatal(err)
	}
	if err := g.gradErr(dq, dk, dv); err != nil {
		t.Fatalf("kernel: %v", err)
	}
	for _, s := range strategies {
		req := pr.request(4, 64, s)
		req.Weights = []float64{1, 2.5, 0.5, 1}
		rq, rk, rv := g.runBackward(t, pr.plan(t, req))
		if err := g.gradErr(rq, rk, rv); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		for _, x := range [][2][]float32{{dq, rq}, {dk, rk}, {dv, rv}} {
			var d, m float64
			for i := range x[0] {
				d = max(d, math.Abs(float64(x[0][i]-x[1][i])))
				m = max(m, math.Abs(float64(x[0][i])))
			}
			if d > 2e-5*max(1, m) {
				t.Fatalf("%s: max |ring - kernel| = %.3g", s, d)
			}
		}
	}
}

// runBackwardNet runs a plan's backward over net with a fresh sink.
func (g *gradProblem) runBackwardNet(t *testing.T, plan *shard.Plan, net *ringattn.MemNet) (dq, dk, dv []float32, src *ringattn.MemSource) {
	t.Helper()
	src, err := ringattn.NewMemGradSource(&g.p, plan.Block, g.q, g.k, g.v, g.o, g.lse, g.do)
	if err != nil {
		t.Fatal(err)
	}
	var falls atomic.Int64
	dq, dk, dv, err = ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net, Source: src,
		Progress: func(p ringattn.Progress) {
			if p.Done {
				falls.Add(int64(p.Fallbacks))
			}
		}}, &g.p, plan, g.q, g.k, g.v, g.o, g.lse, g.do)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d fallbacks", plan.Strategy, falls.Load())
	return dq, dk, dv, src
}

// TestRingBackwardFaults: with key/value frames, dK/dV accumulators and dQ
// partials dropped, delayed past the timeout, delayed within it, duplicated
// and reordered, the gradients are bit-identical to the clean run of the
// same plan (lost frames are fetched or recomputed from the Source).
func TestRingBackwardFaults(t *testing.T) {
	pr := newProblem("causal+window", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, Windowed: true, Left: 60, Right: -1}, 41)
	g := newGradProblem(t, pr, 42)
	faults := map[string]ringattn.FaultFunc{
		"drop": func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Drop: (from+key.Step+key.Block)%3 == 0}
		},
		"drop-grads": func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Drop: key.Kind != ringattn.KindKV && (from+key.Block)%2 == 0}
		},
		"delay-past-timeout": func(from, to int, key ringattn.Key) ringattn.Fault {
			if (from+key.Block+key.Step)%4 == 1 {
				return ringattn.Fault{Delay: 400 * time.Millisecond}
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
	for _, s := range []shard.Strategy{shard.Zigzag, shard.Striped, shard.Contiguous, shard.SplitKV} {
		plan := pr.plan(t, pr.request(4, 16, s))
		clean := newNet(t, 4, ringattn.MemOptions{})
		wq, wk, wv, cleanSrc := g.runBackwardNet(t, plan, clean)
		clean.Close()
		if err := g.gradErr(wq, wk, wv); err != nil {
			t.Fatalf("clean %s: %v", s, err)
		}
		for name, f := range faults {
			t.Run(string(s)+"/"+name, func(t *testing.T) {
				timeout := 40 * time.Millisecond
				if name == "delay-within-timeout" {
					timeout = 5 * time.Second
				}
				net := newNet(t, 4, ringattn.MemOptions{RecvTimeout: timeout, Fault: f})
				defer net.Close()
				dq, dk, dv, src := g.runBackwardNet(t, plan, net)
				if !slices.Equal(dq, wq) || !slices.Equal(dk, wk) || !slices.Equal(dv, wv) {
					t.Fatalf("gradients differ from the clean run of the same plan (%v)", g.gradErr(dq, dk, dv))
				}
				st := net.Stats()
				extra := src.Fetches("q") - cleanSrc.Fetches("q") + src.Fetches("k") - cleanSrc.Fetches("k")
				t.Logf("stats %+v, extra q+k fetches %d", st, extra)
				switch name {
				case "drop", "drop-grads":
					if st.Dropped == 0 || extra == 0 {
						t.Fatalf("no frame dropped (%+v) or no fallback (%d)", st, extra)
					}
				case "delay-past-timeout":
					if st.Timeouts == 0 || extra == 0 {
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

// captureRing records the dK/dV accumulators a rank sends (copies).
type captureRing struct {
	ringattn.Ring
	mu   *sync.Mutex
	sent map[int]ringattn.Frame // by key block: the latest step sent
}

func (c captureRing) Send(ctx context.Context, to int, f ringattn.Frame) error {
	if f.Kind == ringattn.KindGrad {
		c.mu.Lock()
		if old, ok := c.sent[f.Block]; !ok || old.Step < f.Step {
			c.sent[f.Block] = ringattn.Frame{Key: f.Key, Tensors: [][]float32{slices.Clone(f.Tensors[0]), slices.Clone(f.Tensors[1])}}
		}
		c.mu.Unlock()
	}
	return c.Ring.Send(ctx, to, f)
}

// TestRingBackwardFencing: epoch 1 loses a rank while the dK/dV
// accumulators are on their last hop; epoch 2 re-plans over the live ranks
// as the fencing rule says — every query block, dK/dV of every key block
// not written complete, dQ not rewritten where written — and the assembled
// gradients match the reference. A harness variant that adds the abandoned
// epoch's partial accumulators into the result (resuming instead of
// recomputing) is caught by the same check. A plan over a subset of the
// query blocks is refused while some dK/dV is missing.
func TestRingBackwardFencing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pr := newProblem("causal+docs", 1, 4, 2, 157, 157, 16, kernels.Mask{Causal: true, SeqLens: []int{70, 87}}, 131)
	g := newGradProblem(t, pr, 132)
	type variant struct {
		s    shard.Strategy
		full bool // epoch 1 on the full ring (else the short-circuit schedule)
	}
	var variants []variant
	for _, s := range []shard.Strategy{shard.Zigzag, shard.Contiguous, shard.Striped} {
		variants = append(variants, variant{s, true}, variant{s, false})
	}
	variants = append(variants, variant{shard.SplitKV, false})
	for _, vr := range variants {
		s := vr.s
		t.Run(fmt.Sprintf("%s/fullring=%v", s, vr.full), func(t *testing.T) {
			plan1 := pr.plan(t, pr.request(4, 16, s))
			src, err := ringattn.NewMemGradSource(&pr.p, plan1.Block, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
			if err != nil {
				t.Fatal(err)
			}
			sink, err := ringattn.NewMemGradSink(&pr.p, plan1.Block)
			if err != nil {
				t.Fatal(err)
			}
			// Epoch 1: rank 2 dies as it sends its first accumulator of the
			// last hop (full ring), its first accumulator (short-circuit:
			// it may send none home), or as it starts sending its dQ
			// partial (split-KV: after writing its dK/dV).
			// Only rank 2 dies: the others fail their epoch (or finish it)
			// but stay alive, as workers that lose a peer do.
			// On the short-circuit ring a rank may wait on a live rank
			// that already failed (not on the dead one), which would cost
			// receive timeouts; the epoch is canceled at the death, as the
			// coordinator does when it re-plans.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var net *ringattn.MemNet
			net = newNet(t, 4, ringattn.MemOptions{RecvTimeout: 5 * time.Second,
				Fault: func(from, to int, key ringattn.Key) ringattn.Fault {
					if from == 2 && ((key.Kind == ringattn.KindGrad && (key.Step == 4 || !vr.full)) || key.Kind == ringattn.KindDQ) {
						net.Kill(2)
						if !vr.full {
							cancel()
						}
					}
					return ringattn.Fault{}
				}})
			var mu sync.Mutex
			captured := map[int]ringattn.Frame{}
			errs := make([]error, 4)
			var wg sync.WaitGroup
			for r := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[r] = ringattn.RunRankBackward(ctx, ringattn.BackwardConfig{Params: &pr.p, Plan: plan1,
						Ring: captureRing{net.Rank(r), &mu, captured}, Source: src, Sink: sink, Epoch: 1, FullRing: vr.full})
				}()
			}
			wg.Wait()
			net.Close()
			if !errors.Is(errs[2], ringattn.ErrKilled) {
				t.Fatalf("rank 2: %v, expected it killed", errs[2])
			}
			undQ, undKV := sink.Unwritten()
			t.Logf("epoch 1: rank errors %v; unwritten dQ %v, dK/dV %v; %d partial accumulators in flight", errs, undQ, undKV, len(captured))
			if len(undKV) == 0 && len(undQ) == 0 {
				t.Fatal("epoch 1 finished everything: the test exercises nothing")
			}
			if s != shard.SplitKV {
				// The full ring writes the blocks whose last hop does not
				// start at rank 2; the short-circuit ring may write none.
				if len(undKV) == 0 || (vr.full && len(undKV) == plan1.KBlockCount) {
					t.Fatalf("epoch 1 wrote dK/dV of %d of %d key blocks, expected some but not all", plan1.KBlockCount-len(undKV), plan1.KBlockCount)
				}
			}
			var doneDQ, doneKV []int
			for b := range plan1.QBlockCount {
				if !slices.Contains(undQ, b) {
					doneDQ = append(doneDQ, b)
				}
			}
			for b := range plan1.KBlockCount {
				if !slices.Contains(undKV, b) {
					doneKV = append(doneKV, b)
				}
			}

			// The rule is enforced: a plan over the unfinished query blocks
			// only may not produce dK/dV.
			if len(undKV) > 0 && len(undQ) > 0 && len(undQ) < plan1.QBlockCount {
				req := pr.request(3, 16, s)
				req.QBlocks = undQ
				sub := pr.plan(t, req)
				n3 := newNet(t, 3, ringattn.MemOptions{})
				_, _, _, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: n3, Source: src,
					Sink: sink, Epoch: 2, DoneDKV: doneKV}, &pr.p, sub, nil, nil, nil, nil, nil, nil)
				n3.Close()
				if !errors.Is(err, ringattn.ErrInvalid) || !contains(err.Error(), "dK/dV need every query block") {
					t.Fatalf("a partial plan with dK/dV missing: %v, expected the fencing rule's error", err)
				}
			}

			// Epoch 2 over the 3 live ranks.
			plan2 := pr.plan(t, pr.request(3, 16, s))
			n3 := newNet(t, 3, ringattn.MemOptions{})
			dq, dk, dv, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: n3, Source: src,
				Sink: sink, Epoch: 2, DoneDQ: doneDQ, DoneDKV: doneKV}, &pr.p, plan2, nil, nil, nil, nil, nil, nil)
			n3.Close()
			if err != nil {
				t.Fatal(err)
			}
			if err := g.gradErr(dq, dk, dv); err != nil {
				t.Fatalf("assembled epochs 1+2: %v", err)
			}
			for b := range plan1.KBlockCount {
				want := []uint64{1}
				if slices.Contains(undKV, b) {
					want = []uint64{2}
				}
				if got := sink.WritesDKV(b); !slices.Equal(got, want) {
					t.Fatalf("dK/dV of key block %d written by epochs %v, expected %v", b, got, want)
				}
			}

			// The wrong variant: resume the abandoned epoch's accumulators
			// instead of recomputing (add its partial sums in). The check
			// catches it.
			if s == shard.SplitKV {
				return // split-KV sends no dK/dV partials: each is complete where computed
			}
			wk, wv := slices.Clone(dk), slices.Clone(dv)
			added := 0
			for j, f := range captured {
				if !slices.Contains(undKV, j) {
					continue
				}
				start, n := plan1.KSpan(j)
				bh := pr.p.B * pr.p.Hkv
				for h := range bh {
					for i := range n * pr.p.D {
						wk[(h*pr.p.Nk+start)*pr.p.D+i] += f.Tensors[0][h*n*pr.p.D+i]
						wv[(h*pr.p.Nk+start)*pr.p.D+i] += f.Tensors[1][h*n*pr.p.D+i]
					}
				}
				added++
			}
			if added == 0 {
				t.Fatal("no abandoned partial accumulator of an unwritten block was captured")
			}
			if err := g.gradErr(dq, wk, wv); err == nil {
				t.Fatalf("adding %d abandoned partials passed the check", added)
			} else {
				t.Logf("adding %d abandoned partials is caught: %v", added, err)
			}
		})
	}
}

// TestRingBackwardSplitKVPartialLost: dropped dQ partials are recomputed by
// the receiver, subtree included; the result is bit-identical.
func TestRingBackwardSplitKVPartialLost(t *testing.T) {
	pr := newProblem("decode", 1, 4, 2, 9, 300, 16, kernels.Mask{Causal: true}, 51)
	g := newGradProblem(t, pr, 52)
	plan := pr.plan(t, pr.request(7, 16, shard.SplitKV))
	clean := newNet(t, 7, ringattn.MemOptions{})
	wq, wk, wv, _ := g.runBackwardNet(t, plan, clean)
	clean.Close()
	if err := g.gradErr(wq, wk, wv); err != nil {
		t.Fatal(err)
	}
	var dropped atomic.Int64
	net := newNet(t, 7, ringattn.MemOptions{RecvTimeout: 30 * time.Millisecond,
		Fault: func(from, to int, key ringattn.Key) ringattn.Fault {
			if key.Kind == ringattn.KindDQ && (from == 4 || from == 3) {
				dropped.Add(1)
				return ringattn.Fault{Drop: true}
			}
			return ringattn.Fault{}
		}})
	defer net.Close()
	dq, dk, dv, _ := g.runBackwardNet(t, plan, net)
	if dropped.Load() != 2 {
		t.Fatalf("dropped %d partials, expected 2", dropped.Load())
	}
	if !slices.Equal(dq, wq) || !slices.Equal(dk, wk) || !slices.Equal(dv, wv) {
		t.Fatal("gradients differ from the clean run")
	}
}

// TestRingBackwardCancel: canceling the context after the first ring step
// (or during split-KV's fetches) stops every rank promptly with the
// context's error, and no goroutine is left.
func TestRingBackwardCancel(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pr := newProblem("full", 1, 4, 4, 600, 600, 32, kernels.Mask{}, 71)
	g := newGradProblem(t, pr, 72)
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.SplitKV} {
		t.Run(string(s), func(t *testing.T) {
			plan := pr.plan(t, pr.request(3, 32, s))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			net := newNet(t, 3, ringattn.MemOptions{})
			defer net.Close()
			var canceledAt atomic.Int64
			_, _, _, err := ringattn.RunLocalBackwardNet(ctx, ringattn.BackwardLocalConfig{Net: net, Progress: func(p ringattn.Progress) {
				if (p.Step == 1 || p.Pairs > 0) && canceledAt.CompareAndSwap(0, time.Now().UnixNano()) {
					cancel()
				}
			}}, &pr.p, plan, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, expected context.Canceled", err)
			}
			if d := time.Since(time.Unix(0, canceledAt.Load())); d > 5*time.Second {
				t.Fatalf("stopped %v after cancel", d)
			}
		})
	}
}

// TestRingBackwardProgress: the progress counters add up to the plan's
// pairs, and Done comes last.
func TestRingBackwardProgress(t *testing.T) {
	pr := newProblem("causal", 1, 2, 2, 157, 157, 16, kernels.Mask{Causal: true}, 81)
	g := newGradProblem(t, pr, 82)
	for _, s := range []shard.Strategy{shard.Zigzag, shard.SplitKV} {
		plan := pr.plan(t, pr.request(3, 16, s))
		var mu sync.Mutex
		last := map[int]ringattn.Progress{}
		net := newNet(t, 3, ringattn.MemOptions{})
		_, _, _, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net, Progress: func(p ringattn.Progress) {
			mu.Lock()
			defer mu.Unlock()
			last[p.Rank] = p
		}}, &pr.p, plan, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
		net.Close()
		if err != nil {
			t.Fatal(err)
		}
		pairs := 0
		for r := range 3 {
			p := last[r]
			if !p.Done || p.Pairs != p.TotalPairs || p.Step != plan.Steps {
				t.Fatalf("%s rank %d final progress %+v", s, r, p)
			}
			pairs += p.Pairs
		}
		want := 0
		for qi := range plan.QBlockCount {
			for _, c := range plan.PairsRow(qi) {
				if c > 0 {
					want++
				}
			}
		}
		if pairs != want {
			t.Fatalf("%s: %d pairs, expected %d", s, pairs, want)
		}
	}
}

func TestRingBackwardBadConfig(t *testing.T) {
	pr := newProblem("causal", 1, 2, 2, 64, 64, 8, kernels.Mask{Causal: true}, 91)
	g := newGradProblem(t, pr, 92)
	plan := pr.plan(t, pr.request(2, 16, shard.Zigzag))
	net := newNet(t, 2, ringattn.MemOptions{})
	defer net.Close()
	src, _ := ringattn.NewMemGradSource(&pr.p, 16, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
	fwdSrc, _ := ringattn.NewMemSource(&pr.p, 16, pr.q, pr.k, pr.v)
	sink, _ := ringattn.NewMemGradSink(&pr.p, 16)
	req := pr.request(2, 16, shard.Zigzag)
	req.QBlocks = []int{1, 2}
	sub := pr.plan(t, req)
	good := ringattn.BackwardConfig{Params: &pr.p, Plan: plan, Ring: net.Rank(0), Source: src, Sink: sink}
	cases := map[string]func(c *ringattn.BackwardConfig){
		"Sink is nil":                  func(c *ringattn.BackwardConfig) { c.Sink = nil },
		"Plan is nil":                  func(c *ringattn.BackwardConfig) { c.Plan = nil },
		"DoneDQ[0] = 4":                func(c *ringattn.BackwardConfig) { c.DoneDQ = []int{4} },
		"DoneDKV[1] = -1":              func(c *ringattn.BackwardConfig) { c.DoneDKV = []int{0, -1} },
		"dK/dV need every query block": func(c *ringattn.BackwardConfig) { c.Plan = sub; c.DoneDKV = []int{0, 1, 3} },
		"no backward inputs":           func(c *ringattn.BackwardConfig) { c.Source = fwdSrc },
		"q of query block 0 has 3":     func(c *ringattn.BackwardConfig) { c.Source = badSource{} },
		"expected the plan's 2 ranks":  func(c *ringattn.BackwardConfig) { c.Ring = newNet(t, 3, ringattn.MemOptions{}).Rank(0) },
		"BackwardConfig.PartialTimeouts = -1, expected >= 0": func(c *ringattn.BackwardConfig) { c.PartialTimeouts = -1 },
	}
	for want, edit := range cases {
		c := good
		edit(&c)
		err := ringattn.RunRankBackward(context.Background(), c)
		if !errors.Is(err, ringattn.ErrInvalid) || !contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	// The subset plan is fine once every dK/dV is done: it writes dQ only.
	n2 := newNet(t, 2, ringattn.MemOptions{})
	defer n2.Close()
	_, _, _, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: n2, Source: src, Sink: sink,
		Epoch: 3, DoneDKV: []int{0, 1, 2, 3}}, &pr.p, sub, nil, nil, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for b := range 4 {
		want := 0
		if b == 1 || b == 2 {
			want = 1
		}
		if n := len(sink.WritesDQ(b)); n != want || len(sink.WritesDKV(b)) != 0 {
			t.Fatalf("block %d: %d dQ writes (expected %d), %d dK/dV writes", b, n, want, len(sink.WritesDKV(b)))
		}
	}
	if _, err := ringattn.NewMemGradSource(&pr.p, 16, pr.q, pr.k, pr.v, g.o, g.lse[:3], g.do); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("short lse: %v", err)
	}
	if err := sink.PutDKV(context.Background(), 1, 4, nil, nil); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("dK/dV block 4: %v", err)
	}
	if err := sink.PutDQ(context.Background(), 1, 0, make([]float32, 3)); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("short dQ: %v", err)
	}
}

// TestRingBackwardAccumulatorPatience: a dK/dV accumulator late by less
// than PartialTimeouts receive timeouts is waited for; one late by more is
// recomputed from the Source (and the delay that causes can make the next
// rank recompute too). The gradients are the same bits either way.
func TestRingBackwardAccumulatorPatience(t *testing.T) {
	pr := newProblem("window", 1, 4, 2, 157, 157, 16, kernels.Mask{Windowed: true, Left: 20, Right: 7}, 141)
	g := newGradProblem(t, pr, 142)
	plan := pr.plan(t, pr.request(3, 16, shard.Zigzag))
	want, wk, wv := g.runBackward(t, plan)
	// One accumulator (that of the first block needed by two ranks or
	// more, to the second of them) is late; the receive timeout is 200 ms.
	// Late by 350 ms: past one timeout, well within 3. Late by 2 s: past a
	// patience of 1 (or 3) for certain.
	tr := plan.Traffic()
	lateBlock, lateStep := -1, -1
	for j := range plan.KBlockCount {
		var needy []int
		for d := range 3 {
			if x := (tr.Holder(j) + d) % 3; tr.Needs(x, j) {
				needy = append(needy, x)
			}
		}
		if len(needy) >= 2 {
			lateBlock, lateStep = j, tr.Step(needy[1], j)
			break
		}
	}
	if lateBlock < 0 {
		t.Fatal("no key block is needed by two ranks")
	}
	for _, c := range []struct {
		patience  int
		delay     time.Duration
		fallbacks int64
	}{{3, 350 * time.Millisecond, 0}, {1, 2 * time.Second, 1}} {
		late := func(from, to int, key ringattn.Key) ringattn.Fault {
			if key.Kind == ringattn.KindGrad && key.Block == lateBlock && key.Step == lateStep {
				return ringattn.Fault{Delay: c.delay}
			}
			return ringattn.Fault{}
		}
		net := newNet(t, 3, ringattn.MemOptions{RecvTimeout: 200 * time.Millisecond, Fault: late})
		var falls atomic.Int64
		dq, dk, dv, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net,
			PartialTimeouts: c.patience, Progress: func(p ringattn.Progress) {
				if p.Done {
					falls.Add(int64(p.Fallbacks))
				}
			}}, &pr.p, plan, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
		st := net.Stats()
		net.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Delayed != 1 || st.Timeouts == 0 || (c.fallbacks == 0) != (falls.Load() == 0) || falls.Load() < c.fallbacks {
			t.Fatalf("PartialTimeouts=%d: %d delayed, %d fallbacks (%+v), expected 1 and %d", c.patience, st.Delayed, falls.Load(), st, c.fallbacks)
		}
		t.Logf("PartialTimeouts=%d: %d fallbacks, %d timeouts", c.patience, falls.Load(), st.Timeouts)
		if !slices.Equal(dq, want) || !slices.Equal(dk, wk) || !slices.Equal(dv, wv) {
			t.Fatalf("PartialTimeouts=%d: gradients differ from the prompt run", c.patience)
		}
	}
}

// plainRing hides the MemNet's FrameSharer: ranks send contiguous copies,
// as over NATS.
type plainRing struct{ ringattn.Ring }

// viewCountRing passes frames by reference (FrameSharer) and counts the
// dK/dV accumulators sent as views.
type viewCountRing struct {
	ringattn.Ring
	views *atomic.Int64
}

func (v viewCountRing) SharesFrames() bool { return true }

func (v viewCountRing) Send(ctx context.Context, to int, f ringattn.Frame) error {
	if f.Kind == ringattn.KindGrad && f.Stride != 0 {
		v.views.Add(1)
	}
	return v.Ring.Send(ctx, to, f)
}

// TestRingBackwardSetsInPlace: on an in-process ring, a rank's run of
// consecutive key blocks is read in place from the source's views and its
// blocks' dK/dV accumulators travel as views into one buffer per set; the
// gradients are bit-identical to a ring that copies every frame, for ring
// strategies, both masks, GQA and B = 2.
func TestRingBackwardSetsInPlace(t *testing.T) {
	for _, pr := range []*problem{
		newProblem("causal-gqa", 1, 4, 2, 640, 640, 32, kernels.Mask{Causal: true}, 41),
		newProblem("full-b2", 2, 2, 2, 512, 512, 16, kernels.Mask{}, 42),
	} {
		g := newGradProblem(t, pr, 43)
		for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag} {
			plan := pr.plan(t, pr.request(2, 64, s))
			run := func(wrap func(ringattn.Ring) ringattn.Ring) (dq, dk, dv []float32) {
				dq, dk, dv, _ = g.runMemNet(t, plan, ringattn.MemOptions{}, wrap)
				return dq, dk, dv
			}
			var views atomic.Int64
			sq, sk, sv := run(func(r ringattn.Ring) ringattn.Ring { return viewCountRing{r, &views} })
			pq, pk, pv := run(func(r ringattn.Ring) ringattn.Ring { return plainRing{r} })
			what := fmt.Sprintf("%s %s", pr.name, s)
			if views.Load() == 0 {
				t.Errorf("%s: no dK/dV accumulator travelled as a view", what)
			}
			sameBits(t, what+", in place against copied", [3][]float32{sq, sk, sv}, [3][]float32{pq, pk, pv})
			if err := g.gradErr(sq, sk, sv); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
	}
}

// runMemNet runs the backward of plan on a fresh MemNet with opts, each
// rank's endpoint wrapped by wrap when not nil, and returns the gradients
// and the net (closed).
func (g *gradProblem) runMemNet(t *testing.T, plan *shard.Plan, opts ringattn.MemOptions, wrap func(ringattn.Ring) ringattn.Ring) (dq, dk, dv []float32, net *ringattn.MemNet) {
	t.Helper()
	net, err := ringattn.NewMemNet(len(plan.Ranks), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	dq, dk, dv, err = ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net, Ring: wrap},
		&g.p, plan, g.q, g.k, g.v, g.o, g.lse, g.do)
	if err != nil {
		t.Fatalf("%s: %v", plan.Strategy, err)
	}
	return dq, dk, dv, net
}

// sameBits fails unless got (dq, dk, dv) equals want bit for bit.
func sameBits(t *testing.T, what string, got, want [3][]float32) {
	t.Helper()
	for n, name := range []string{"dq", "dk", "dv"} {
		for i := range want[n] {
			if math.Float32bits(got[n][i]) != math.Float32bits(want[n][i]) {
				t.Fatalf("%s: %s[%d] = %g, want %g", what, name, i, got[n][i], want[n][i])
			}
		}
	}
}
