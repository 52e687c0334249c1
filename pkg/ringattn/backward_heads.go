package ringattn

import (
	"context"
	"fmt"
	"slices"

	"github.com/ringattn/ringattn/pkg/shard"
)

// The backward pass of a head-group plan (see engine_heads.go): rank r
// runs the backward of its group's plan over the group's heads, through
// the same ring, source and sink filters as the forward. BackwardConfig's
// DoneDQ and DoneDKV then list units (g·QBlockCount+b, g·KBlockCount+j),
// and the Sink must accept head ranges (GradHeadSink).

// GradHeadSink is implemented by a GradSink that accepts the gradients of
// a range of heads: dq [B, h1-h0, len, D] of query heads [h0, h1) of query
// block `block`, dk and dv [B, h1-h0, len, D] of key/value heads [h0, h1)
// of key block `block`. Every write is complete, as in GradSink: the first
// write of a (block, heads) counts. MemGradSink implements it.
type GradHeadSink interface {
	PutDQHeads(ctx context.Context, epoch uint64, block, h0, h1 int, dq []float32) error
	PutDKVHeads(ctx context.Context, epoch uint64, block, h0, h1 int, dk, dv []float32) error
}

// headGradSink writes one head group's gradient blocks into a GradHeadSink.
type headGradSink struct {
	sink GradHeadSink
	hs   *headSlice
}

func (s *headGradSink) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error {
	return s.sink.PutDQHeads(ctx, epoch, block, s.hs.qlo, s.hs.qhi, dq)
}

func (s *headGradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	return s.sink.PutDKVHeads(ctx, epoch, block, s.hs.klo, s.hs.khi, dk, dv)
}

// groupUnits returns the blocks of group g among units (of n blocks per
// group), ascending.
func groupUnits(units []int, g, n int) []int {
	var out []int
	for _, u := range units {
		if u/n == g {
			out = append(out, u%n)
		}
	}
	slices.Sort(out)
	return out
}

// runHeadBackward is RunRankBackward for a head-group plan.
func runHeadBackward(ctx context.Context, cfg BackwardConfig) error {
	if err := checkParts("BackwardConfig", cfg.Params != nil, cfg.Plan != nil, cfg.Ring != nil, cfg.Source != nil, cfg.Sink != nil, cfg.PartialTimeouts); err != nil {
		return err
	}
	rc := RankConfig{Params: cfg.Params, Plan: cfg.Plan, Ring: cfg.Ring, Source: cfg.Source, Sink: nopSink{}}
	if err := rc.Validate(); err != nil {
		return err
	}
	plan := cfg.Plan
	for i, u := range cfg.DoneDQ {
		if u < 0 || u >= plan.QUnits() {
			return invalid("BackwardConfig.DoneDQ[%d] = %d, expected a query unit in 0..%d", i, u, plan.QUnits()-1)
		}
	}
	for i, u := range cfg.DoneDKV {
		if u < 0 || u >= plan.KVUnits() {
			return invalid("BackwardConfig.DoneDKV[%d] = %d, expected a key/value unit in 0..%d", i, u, plan.KVUnits()-1)
		}
	}
	rank := cfg.Ring.Rank()
	g := plan.Group(rank)
	sub := plan.GroupPlan(g)
	doneDQ := groupUnits(cfg.DoneDQ, g, plan.QBlockCount)
	doneDKV := groupUnits(cfg.DoneDKV, g, plan.KBlockCount)
	if len(sub.Planned) == 0 {
		if len(doneDKV) != plan.KBlockCount {
			return invalid("head group %d plans no query block but %d of its %d key blocks have no dK/dV yet: dK/dV need every query block",
				g, plan.KBlockCount-len(doneDKV), plan.KBlockCount)
		}
		return nil
	}
	hs := newHeadSlice(cfg.Params, plan, g)
	if ok, err := groupKernelBackward(ctx, cfg, sub, hs, doneDQ, doneDKV); ok {
		return err // backward_group.go: in place, as one kernel call
	}
	sc := cfg
	sc.Params, sc.Plan = groupParams(cfg.Params, plan), sub
	sc.Ring = newGroupRing(cfg.Ring, plan, g)
	sc.Source = newHeadSource(cfg.Source, hs)
	if hsink, ok := cfg.Sink.(GradHeadSink); ok {
		sc.Sink = &headGradSink{sink: hsink, hs: hs}
	} else {
		gs, err := newGatherGradSink(cfg, hs, g)
		if err != nil {
			return err
		}
		sc.Sink = gs
	}
	sc.DoneDQ, sc.DoneDKV = doneDQ, doneDKV
	if cfg.Progress != nil {
		sc.Progress = func(p Progress) {
			p.Rank = rank
			cfg.Progress(p)
		}
	}
	if cfg.Logger != nil {
		sc.Logger = cfg.Logger.With("head_group", g)
	}
	if err := RunRankBackward(ctx, sc); err != nil {
		return fmt.Errorf("head group %d: %w", g, err)
	}
	return nil
}

// headKey names a head-range gradient write in a MemGradSink.
type headKey struct {
	dkv       bool
	block, h0 int
}

// PutDQHeads copies dQ of query heads [h0, h1) of query block `block` into
// place, unless they were written (see GradHeadSink).
func (s *MemGradSink) PutDQHeads(ctx context.Context, epoch uint64, block, h0, h1 int, dq []float32) error {
	return s.putHeads(ctx, epoch, false, block, h0, h1, dq, nil)
}

// PutDKVHeads copies dK and dV of key/value heads [h0, h1) of key block
// `block` into place, unless they were written (see GradHeadSink).
func (s *MemGradSink) PutDKVHeads(ctx context.Context, epoch uint64, block, h0, h1 int, dk, dv []float32) error {
	return s.putHeads(ctx, epoch, true, block, h0, h1, dk, dv)
}

func (s *MemGradSink) putHeads(ctx context.Context, epoch uint64, dkv bool, block, h0, h1 int, x, y []float32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	name, blocks, heads, n, dst := "dQ", len(s.dqBy), s.hq, s.n, [][]float32{s.dq}
	if dkv {
		name, blocks, heads, n, dst = "dK/dV", len(s.dkvBy), s.hkv, s.nk, [][]float32{s.dk, s.dv}
	}
	if block < 0 || block >= blocks {
		return invalid("%s block %d, expected within 0..%d", name, block, blocks-1)
	}
	if h0 < 0 || h1 > heads || h0 >= h1 {
		return invalid("%s heads %d..%d, expected within 0..%d", name, h0, h1-1, heads-1)
	}
	start := block * s.block
	rows := min(s.block, n-start)
	nh := h1 - h0
	src := [][]float32{x}
	if dkv {
		src = append(src, y)
	}
	for _, t := range src {
		if len(t) != s.b*nh*rows*s.d {
			return invalid("%s of block %d heads %d..%d has %d values, expected %d", name, block, h0, h1-1, len(t), s.b*nh*rows*s.d)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headWrites == nil {
		s.headWrites = map[headKey][]uint64{}
	}
	k := headKey{dkv, block, h0}
	if s.reserved[k] {
		// Being written in place by a later epoch (backward_group.go),
		// whose outcome decides: this straggler's write is dropped.
		return nil
	}
	if len(s.headWrites[k]) == 0 {
		for i, t := range src {
			for bi := range s.b {
				off := (bi*heads + h0) * n * s.d
				scatter(dst[i][off:], t[bi*nh*rows*s.d:(bi+1)*nh*rows*s.d], nh, n, start, rows, s.d)
			}
		}
	}
	s.headWrites[k] = append(s.headWrites[k], epoch)
	return nil
}

// checkHeads is checkComplete for a head-group plan: every planned query
// unit's dQ and every key/value unit's dK/dV not done before was written
// exactly once by the epoch. The caller holds s.mu.
func (s *MemGradSink) checkHeads(epoch uint64, plan *shard.Plan, doneDQ, doneDKV []int) error {
	count := func(k headKey) (n int) {
		for _, e := range s.headWrites[k] {
			if e == epoch {
				n++
			}
		}
		return n
	}
	for _, u := range plan.Planned {
		g, b := plan.QUnit(u)
		h0, _ := plan.QHeads(g)
		want := 1
		if slices.Contains(doneDQ, u) {
			want = 0
		}
		if got := count(headKey{false, b, h0}); got != want {
			return fmt.Errorf("ringattn: dQ of query block %d, head group %d written %d times in epoch %d, expected %d", b, g, got, epoch, want)
		}
	}
	for u := range plan.KVUnits() {
		g, j := plan.KVUnit(u)
		h0, _ := plan.KVHeads(g)
		want := 1
		if slices.Contains(doneDKV, u) {
			want = 0
		}
		if got := count(headKey{true, j, h0}); got != want {
			return fmt.Errorf("ringattn: dK/dV of key block %d, head group %d written %d times in epoch %d, expected %d", j, g, got, epoch, want)
		}
	}
	return nil
}
