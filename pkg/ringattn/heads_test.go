package ringattn_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// headPlans are the head-group plans of pr over up to 4 ranks: pure head
// parallelism, and every G dividing Hkv with a ring of W/G ranks per group
// under each ring strategy.
func headPlans(t *testing.T, pr *problem) []*shard.Plan {
	var out []*shard.Plan
	for g := 1; g <= pr.p.Hkv; g++ {
		if pr.p.Hkv%g != 0 {
			continue
		}
		req := pr.request(g, 16, shard.Heads)
		req.HeadGroups = g
		out = append(out, pr.plan(t, req))
		for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.Auto} {
			for _, w := range []int{2 * g, 3 * g} {
				if g == 1 || w > 8 {
					continue
				}
				req := pr.request(w, 16, s)
				req.HeadGroups = g
				out = append(out, pr.plan(t, req))
			}
		}
	}
	return out
}

func planName(p *shard.Plan) string {
	return fmt.Sprintf("%s G=%d W=%d", p.Strategy, p.Groups(), len(p.Ranks))
}

// TestHeadPlansMatchReference: head-group plans over every mask, GQA,
// cross and ragged shape (B = 1 and 2) equal the float64 reference, move
// only their group's key/value heads, and never send a frame between
// groups; pure head parallelism sends none.
func TestHeadPlansMatchReference(t *testing.T) {
	ctx := context.Background()
	for _, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			for _, plan := range headPlans(t, pr) {
				if !ringattn.IsHeadPlan(plan) {
					t.Fatalf("%s: not a head plan", planName(plan))
				}
				net := newNet(t, len(plan.Ranks), ringattn.MemOptions{})
				var done doneSet
				o, lse, err := ringattn.RunLocalNet(ctx, ringattn.LocalConfig{Net: net, Progress: done.progress}, &pr.p, plan, pr.q, pr.k, pr.v)
				st := net.Stats()
				net.Close()
				if err != nil {
					t.Fatalf("%s: %v", planName(plan), err)
				}
				pr.check(t, planName(plan), o, lse)
				if want := plan.Traffic().Frames(); st.Sent != int64(want) {
					t.Fatalf("%s: the ring sent %d frames, the plan's schedule %d", planName(plan), st.Sent, want)
				}
				if plan.Strategy == shard.Heads && (st.Sent != 0 || plan.BytesMoved() != 0) {
					t.Fatalf("%s: pure head parallelism sent %d frames", planName(plan), st.Sent)
				}
				if n := done.count(); n != len(plan.Ranks) {
					t.Fatalf("%s: %d of %d ranks reported done", planName(plan), n, len(plan.Ranks))
				}
			}
		})
	}
}

// TestHeadPlansBackward: the backward of head-group plans equals the
// float64 reference's gradients, bit-identical run to run.
func TestHeadPlansBackward(t *testing.T) {
	for i, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			g := newGradProblem(t, pr, uint64(2000+i))
			for _, plan := range headPlans(t, pr) {
				dq, dk, dv := g.runBackward(t, plan)
				if err := g.gradErr(dq, dk, dv); err != nil {
					t.Fatalf("%s: %v", planName(plan), err)
				}
				dq2, dk2, dv2 := g.runBackward(t, plan)
				if !slices.Equal(dq, dq2) || !slices.Equal(dk, dk2) || !slices.Equal(dv, dv2) {
					t.Fatalf("%s: a second run differs", planName(plan))
				}
			}
		})
	}
}

// TestHeadPlansReplan: a re-plan of some units (after a lost worker) with
// the same head groups writes exactly those units, exactly.
func TestHeadPlansReplan(t *testing.T) {
	pr := newProblem("causal", 2, 8, 4, 157, 157, 16, kernels.Mask{Causal: true}, 41)
	for _, s := range []shard.Strategy{shard.Heads, shard.Zigzag, shard.Auto} {
		req := pr.request(4, 16, s)
		req.HeadGroups = 2
		req.QBlocks = []int{0, 5, 9, 10, 11, 19} // units: group 0 blocks 0, 5, 9; group 1 blocks 0, 1, 9
		plan := pr.plan(t, req)
		o, lse, err := ringattn.RunLocal(context.Background(), &pr.p, plan, pr.q, pr.k, pr.v)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		d, n := pr.p.D, pr.p.N
		for b := range pr.p.B {
			for h := range pr.p.Hq {
				g := h / (pr.p.Hq / 2)
				for i := range n {
					row := (b*pr.p.Hq+h)*n + i
					planned := slices.Contains(req.QBlocks, g*plan.QBlockCount+i/16)
					for c := range d {
						got, want := float64(o[row*d+c]), pr.refO[row*d+c]
						if !planned {
							want = 0
						}
						if diff := got - want; diff > tolerance || diff < -tolerance {
							t.Fatalf("%s: b=%d h=%d row %d (planned %v): o = %v, expected %v", s, b, h, i, planned, got, want)
						}
					}
					if planned && (float64(lse[row])-pr.refLSE[row] > tolerance || pr.refLSE[row]-float64(lse[row]) > tolerance) {
						t.Fatalf("%s: b=%d h=%d row %d: lse = %v, expected %v", s, b, h, i, lse[row], pr.refLSE[row])
					}
				}
			}
		}
	}
}

// doneSet records which ranks reported done.
type doneSet struct {
	mu   sync.Mutex
	done map[int]bool
}

func (s *doneSet) progress(p ringattn.Progress) {
	if !p.Done {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		s.done = map[int]bool{}
	}
	s.done[p.Rank] = true
}

func (s *doneSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.done)
}

// TestHeadPlansGatherWholeBlocks: over a sink that takes whole blocks only
// (a store object holds every head of a block), each block's writer
// gathers the other groups' heads over the ring and writes the block once;
// the result is exact and the ring moves the schedule's key/value frames
// plus one part per non-writing group of each block.
func TestHeadPlansGatherWholeBlocks(t *testing.T) {
	ctx := context.Background()
	for _, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			for _, plan := range headPlans(t, pr) {
				ms, err := ringattn.NewMemSink(&pr.p, plan.Block)
				if err != nil {
					t.Fatal(err)
				}
				src, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
				if err != nil {
					t.Fatal(err)
				}
				net := newNet(t, len(plan.Ranks), ringattn.MemOptions{})
				errs := make(chan error, len(plan.Ranks))
				for r := range plan.Ranks {
					go func() {
						errs <- ringattn.RunRank(ctx, ringattn.RankConfig{Params: &pr.p, Plan: plan, Ring: net.Rank(r), Source: src, Sink: blockSink{ms}})
					}()
				}
				for range plan.Ranks {
					if err := <-errs; err != nil {
						t.Fatalf("%s: %v", planName(plan), err)
					}
				}
				st := net.Stats()
				net.Close()
				o, lse := ms.Result()
				pr.check(t, planName(plan)+" gathered", o, lse)
				for b := range plan.QBlockCount {
					if n := ms.Puts(b); n != 1 {
						t.Fatalf("%s: block %d written %d times", planName(plan), b, n)
					}
				}
				parts := 0
				for _, u := range plan.Planned {
					if g, b := plan.QUnit(u); g != b%plan.Groups() {
						parts++
					}
				}
				if want := int64(plan.Traffic().Frames() + parts); st.Sent != want {
					t.Fatalf("%s: %d frames sent, expected %d key/value frames and %d parts", planName(plan), st.Sent, plan.Traffic().Frames(), parts)
				}
				if parts > 0 && plan.GatherBytes() == 0 {
					t.Fatalf("%s: GatherBytes 0 with %d parts", planName(plan), parts)
				}
			}
		})
	}
}

// headsOnly is a Source that serves head ranges only (HeadFetcher) and
// counts the values it hands out.
type headsOnly struct {
	ms     *ringattn.MemSource
	p      *kernels.Params
	mu     sync.Mutex
	values int
}

func (h *headsOnly) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	panic("a head plan's rank read a whole block from a HeadFetcher")
}

func (h *headsOnly) FetchHeads(ctx context.Context, tensor string, block, h0, h1 int) ([]float32, error) {
	full, err := h.ms.Fetch(ctx, tensor, block)
	if err != nil {
		return nil, err
	}
	heads := h.p.Hq
	if tensor == "k" || tensor == "v" {
		heads = h.p.Hkv
	}
	per := len(full) / (h.p.B * heads)
	var out []float32
	for b := range h.p.B {
		out = append(out, full[(b*heads+h0)*per:(b*heads+h1)*per]...)
	}
	h.mu.Lock()
	h.values += len(out)
	h.mu.Unlock()
	return out, nil
}

// TestHeadPlansFetchHeads: over a Source that serves head ranges, the
// ranks of pure head parallelism read exactly q, k and v once in all.
func TestHeadPlansFetchHeads(t *testing.T) {
	pr := newProblem("causal-gqa", 2, 8, 4, 157, 157, 16, kernels.Mask{Causal: true}, 51)
	req := pr.request(4, 16, shard.Heads)
	plan := pr.plan(t, req)
	ms, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
	if err != nil {
		t.Fatal(err)
	}
	src := &headsOnly{ms: ms, p: &pr.p}
	net := newNet(t, len(plan.Ranks), ringattn.MemOptions{})
	defer net.Close()
	o, lse, err := ringattn.RunLocalNet(context.Background(), ringattn.LocalConfig{Net: net, Source: src}, &pr.p, plan, pr.q, pr.k, pr.v)
	if err != nil {
		t.Fatal(err)
	}
	pr.check(t, "heads over a HeadFetcher", o, lse)
	if want := len(pr.q) + len(pr.k) + len(pr.v); src.values != want {
		t.Fatalf("the ranks read %d values, q, k and v hold %d", src.values, want)
	}
}

// wholeGrads hides MemGradSink's head-range writes, as a store of whole
// blocks would.
type wholeGrads struct{ s *ringattn.MemGradSink }

func (w wholeGrads) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error {
	return w.s.PutDQ(ctx, epoch, block, dq)
}

func (w wholeGrads) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	return w.s.PutDKV(ctx, epoch, block, dk, dv)
}

// TestHeadPlansBackwardGather: over a gradient sink that takes whole
// blocks only, each dQ and dK/dV block's writer gathers the other groups'
// heads; the gradients are exact and every block is written once.
func TestHeadPlansBackwardGather(t *testing.T) {
	for i, pr := range problems()[:6] {
		t.Run(pr.name, func(t *testing.T) {
			g := newGradProblem(t, pr, uint64(3000+i))
			for _, plan := range headPlans(t, pr) {
				sink, err := ringattn.NewMemGradSink(&pr.p, plan.Block)
				if err != nil {
					t.Fatal(err)
				}
				src, err := ringattn.NewMemGradSource(&pr.p, plan.Block, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
				if err != nil {
					t.Fatal(err)
				}
				net := newNet(t, len(plan.Ranks), ringattn.MemOptions{})
				errs := make(chan error, len(plan.Ranks))
				for r := range plan.Ranks {
					go func() {
						errs <- ringattn.RunRankBackward(context.Background(), ringattn.BackwardConfig{Params: &pr.p, Plan: plan,
							Ring: net.Rank(r), Source: src, Sink: wholeGrads{sink}, Epoch: 1})
					}()
				}
				for range plan.Ranks {
					if err := <-errs; err != nil {
						t.Fatalf("%s: %v", planName(plan), err)
					}
				}
				net.Close()
				dq, dk, dv := sink.Result()
				if err := g.gradErr(dq, dk, dv); err != nil {
					t.Fatalf("%s: %v", planName(plan), err)
				}
				for b := range plan.QBlockCount {
					if w := sink.WritesDQ(b); len(w) != 1 {
						t.Fatalf("%s: dQ block %d written by epochs %v", planName(plan), b, w)
					}
				}
				for j := range plan.KBlockCount {
					if w := sink.WritesDKV(j); len(w) != 1 {
						t.Fatalf("%s: dK/dV block %d written by epochs %v", planName(plan), j, w)
					}
				}
			}
		})
	}
}

// ringOnlySource hides the MemSource type, so head groups of one rank run
// their backward as a ring rather than in place.
type ringOnlySource struct{ *ringattn.MemSource }

// TestHeadPlansBackwardInPlace: head groups of one rank, in process, run
// their backward as one kernel call in place (backward_group.go); the
// gradients are bit-identical to the same plan run as rings, within the
// tolerance of the float64 reference, and the progress counts the plan's
// pairs. B = 2 and re-plans take the ring path and agree as well.
func TestHeadPlansBackwardInPlace(t *testing.T) {
	for i, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			g := newGradProblem(t, pr, uint64(3000+i))
			for groups := 1; groups <= pr.p.Hkv; groups++ {
				if pr.p.Hkv%groups != 0 {
					continue
				}
				req := pr.request(groups, 16, shard.Heads)
				req.HeadGroups = groups
				plan := pr.plan(t, req)
				var mu sync.Mutex
				pairs := 0
				inPlace, err := ringattn.NewMemGradSource(&pr.p, plan.Block, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
				if err != nil {
					t.Fatal(err)
				}
				net := newNet(t, groups, ringattn.MemOptions{})
				dq, dk, dv, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net,
					Source: inPlace, Progress: func(p ringattn.Progress) {
						if p.Done {
							mu.Lock()
							pairs += p.Pairs
							mu.Unlock()
						}
					}}, &pr.p, plan, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
				net.Close()
				if err != nil {
					t.Fatalf("%s: %v", planName(plan), err)
				}
				if err := g.gradErr(dq, dk, dv); err != nil {
					t.Fatalf("%s: %v", planName(plan), err)
				}
				reads := inPlace.Fetches("q") + inPlace.Fetches("k") + inPlace.Fetches("do")
				if inPlaceWanted := pr.p.B == 1; (reads == 0) != inPlaceWanted {
					t.Fatalf("%s B=%d: %d blocks read from the source; in place: %v", planName(plan), pr.p.B, reads, inPlaceWanted)
				}
				src, err := ringattn.NewMemGradSource(&pr.p, plan.Block, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
				if err != nil {
					t.Fatal(err)
				}
				net = newNet(t, groups, ringattn.MemOptions{})
				rq, rk, rv, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net,
					Source: ringOnlySource{src}}, &pr.p, plan, pr.q, pr.k, pr.v, g.o, g.lse, g.do)
				net.Close()
				if err != nil {
					t.Fatalf("%s as rings: %v", planName(plan), err)
				}
				if !slices.Equal(dq, rq) || !slices.Equal(dk, rk) || !slices.Equal(dv, rv) {
					t.Fatalf("%s: in place and as rings differ", planName(plan))
				}
				want := 0
				for gi := range plan.Groups() {
					sub := plan.GroupPlan(gi)
					for qi := range sub.QBlockCount {
						for _, c := range sub.PairsRow(qi) {
							if c > 0 {
								want++
							}
						}
					}
				}
				if pairs != want {
					t.Fatalf("%s: progress counted %d pairs, expected %d", planName(plan), pairs, want)
				}
			}
		})
	}
}
