package ringattn

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// MemGradSink assembles gradient blocks into whole tensors dQ [B,Hq,N,D]
// and dK, dV [B,Hkv,Nk,D], as a store would: the first complete write of a
// block counts, later writes (of a straggling epoch) are recorded but do
// not replace it. It keeps the epochs that wrote each block.
type MemGradSink struct {
	b, hq, hkv, d, n, nk, block int
	mu                          sync.Mutex
	dq, dk, dv                  []float32
	dqBy, dkvBy                 [][]uint64           // epochs of the writes of each block, in order
	headWrites                  map[headKey][]uint64 // the same for head ranges (backward_heads.go)
	reserved                    map[headKey]bool     // head ranges being written in place (backward_group.go)
}

// NewMemGradSink returns an empty gradient sink for the problem p cut into
// blocks of `block` tokens.
func NewMemGradSink(p *kernels.Params, block int) (*MemGradSink, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if block < 1 {
		return nil, invalid("block = %d, expected >= 1", block)
	}
	return &MemGradSink{b: p.B, hq: p.Hq, hkv: p.Hkv, d: p.D, n: p.N, nk: p.Nk, block: block,
		dq:    make([]float32, p.B*p.Hq*p.N*p.D),
		dk:    make([]float32, p.B*p.Hkv*p.Nk*p.D),
		dv:    make([]float32, p.B*p.Hkv*p.Nk*p.D),
		dqBy:  make([][]uint64, (p.N+block-1)/block),
		dkvBy: make([][]uint64, (p.Nk+block-1)/block)}, nil
}

// PutDQ copies dQ of query block `block` into place, unless it was written.
func (s *MemGradSink) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error {
	return s.putDQView(ctx, epoch, block, dq, 0, 0)
}

// viewGradSink is a GradSink that also takes a block's gradients as views
// into a rank's larger buffers: rows [at, at+len) of dQ laid out
// [B, Hq, stride, D], and dK/dV [B, Hkv, ·, D] head i from row i·stride.
// The ring then writes what it computed straight into place, with no
// contiguous copy first. A stride of 0 means the block's own length. A
// viewGradSink copies what it is given and keeps none of it, so the ring
// reuses its buffers afterwards (gradbufs.go).
type viewGradSink interface {
	GradSink
	putDQView(ctx context.Context, epoch uint64, block int, dq []float32, stride, at int) error
	putDKVView(ctx context.Context, epoch uint64, block int, dk, dv []float32, stride int) error
}

var _ viewGradSink = (*MemGradSink)(nil)

func (s *MemGradSink) putDQView(ctx context.Context, epoch uint64, block int, dq []float32, stride, at int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if block < 0 || block >= len(s.dqBy) {
		return invalid("dQ block %d, expected within 0..%d", block, len(s.dqBy)-1)
	}
	start := block * s.block
	rows := min(s.block, s.n-start)
	bh := s.b * s.hq
	if stride == 0 {
		stride = rows
	}
	if at < 0 || at+rows > stride || len(dq) != bh*stride*s.d {
		return invalid("dQ of block %d has %d values, expected %d (rows [%d, %d) of %d)",
			block, len(dq), bh*stride*s.d, at, at+rows, stride)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.dqBy[block]) == 0 {
		scatterView(s.dq, dq, bh, s.n, start, rows, s.d, stride, at)
	}
	s.dqBy[block] = append(s.dqBy[block], epoch)
	return nil
}

// PutDKV copies dK and dV of key block `block` into place, unless they
// were written.
func (s *MemGradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	return s.putDKVView(ctx, epoch, block, dk, dv, 0)
}

func (s *MemGradSink) putDKVView(ctx context.Context, epoch uint64, block int, dk, dv []float32, stride int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if block < 0 || block >= len(s.dkvBy) {
		return invalid("dK/dV block %d, expected within 0..%d", block, len(s.dkvBy)-1)
	}
	start := block * s.block
	rows := min(s.block, s.nk-start)
	bh := s.b * s.hkv
	if stride == 0 {
		if len(dk) != bh*rows*s.d || len(dv) != len(dk) {
			return invalid("dK/dV of block %d have %d/%d values, expected %d", block, len(dk), len(dv), bh*rows*s.d)
		}
		stride = rows
	} else if !viewFits(dk, bh, rows, stride, s.d) || !viewFits(dv, bh, rows, stride, s.d) {
		return invalid("dK/dV of block %d: views of %d/%d values do not hold %d rows %d apart", block, len(dk), len(dv), rows, stride)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.dkvBy[block]) == 0 {
		scatterView(s.dk, dk, bh, s.nk, start, rows, s.d, stride, 0)
		scatterView(s.dv, dv, bh, s.nk, start, rows, s.d, stride, 0)
	}
	s.dkvBy[block] = append(s.dkvBy[block], epoch)
	return nil
}

// WritesDQ and WritesDKV return the epochs that wrote a block, in order
// (nil for a block never written or out of range).
func (s *MemGradSink) WritesDQ(block int) []uint64 { return s.writes(s.dqBy, block) }

// WritesDKV: see WritesDQ.
func (s *MemGradSink) WritesDKV(block int) []uint64 { return s.writes(s.dkvBy, block) }

func (s *MemGradSink) writes(by [][]uint64, block int) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if block < 0 || block >= len(by) {
		return nil
	}
	return append([]uint64(nil), by[block]...)
}

// Unwritten returns the query blocks without dQ and the key blocks without
// dK/dV: what a re-plan must still compute.
func (s *MemGradSink) Unwritten() (dq, dkv []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for b, e := range s.dqBy {
		if len(e) == 0 {
			dq = append(dq, b)
		}
	}
	for b, e := range s.dkvBy {
		if len(e) == 0 {
			dkv = append(dkv, b)
		}
	}
	return dq, dkv
}

// Result returns the assembled dQ, dK, dV (shared, not copies).
func (s *MemGradSink) Result() (dq, dk, dv []float32) { return s.dq, s.dk, s.dv }

// checkComplete reports a block the epoch should have written exactly once
// and did not.
func (s *MemGradSink) checkComplete(epoch uint64, plan *shard.Plan, doneDQ, doneDKV []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if IsHeadPlan(plan) {
		return s.checkHeads(epoch, plan, doneDQ, doneDKV)
	}
	count := func(by []uint64) (n int) {
		for _, e := range by {
			if e == epoch {
				n++
			}
		}
		return n
	}
	skipQ := make(map[int]bool, len(doneDQ))
	for _, b := range doneDQ {
		skipQ[b] = true
	}
	for _, b := range plan.Planned {
		if want := map[bool]int{true: 0, false: 1}[skipQ[b]]; count(s.dqBy[b]) != want {
			return fmt.Errorf("ringattn: dQ of query block %d written %d times in epoch %d, expected %d", b, count(s.dqBy[b]), epoch, want)
		}
	}
	skipK := make(map[int]bool, len(doneDKV))
	for _, b := range doneDKV {
		skipK[b] = true
	}
	for b := range s.dkvBy {
		if want := map[bool]int{true: 0, false: 1}[skipK[b]]; count(s.dkvBy[b]) != want {
			return fmt.Errorf("ringattn: dK/dV of key block %d written %d times in epoch %d, expected %d", b, count(s.dkvBy[b]), epoch, want)
		}
	}
	return nil
}

// RunLocalBackward runs every rank of plan's backward pass in this process
// over an in-memory ring and returns dq [B,Hq,N,D] and dk, dv [B,Hkv,Nk,D]:
// the gradients of sum(o·do), as kernels.AttentionBackward computes them
// (within float32 rounding; the summation order follows the plan),
// bit-identical from run to run for the same plan. o and lse are the
// forward's outputs. The plan must cover every query block.
func RunLocalBackward(ctx context.Context, p *kernels.Params, plan *shard.Plan, q, k, v, o, lse, do []float32) (dq, dk, dv []float32, err error) {
	if plan == nil {
		return nil, nil, nil, invalid("plan is nil")
	}
	net, err := NewMemNet(len(plan.Ranks), MemOptions{})
	if err != nil {
		return nil, nil, nil, err
	}
	defer net.Close()
	return RunLocalBackwardNet(ctx, BackwardLocalConfig{Net: net}, p, plan, q, k, v, o, lse, do)
}

// BackwardLocalConfig tunes RunLocalBackwardNet.
type BackwardLocalConfig struct {
	// Net is the in-memory network, with Net.Size() == len(plan.Ranks); the
	// caller closes it.
	Net *MemNet
	// Source replaces the in-memory source over the inputs when not nil.
	Source Source
	// Sink replaces a fresh MemGradSink when not nil: a re-planned epoch
	// writes into the sink of the earlier ones.
	Sink *MemGradSink
	// Epoch, DoneDQ and DoneDKV are given to every rank (BackwardConfig).
	Epoch           uint64
	DoneDQ, DoneDKV []int
	// Progress, when not nil, receives every rank's progress.
	Progress func(Progress)
	// PartialTimeouts is given to every rank (BackwardConfig).
	PartialTimeouts int
	// Ring, when not nil, wraps each rank's endpoint (tests: inspect or
	// alter frames).
	Ring func(Ring) Ring
	// FullRing is given to every rank (BackwardConfig).
	FullRing bool
}

// RunLocalBackwardNet is RunLocalBackward over a caller-provided network
// and sink. When a rank fails, it is killed in the net and the others are
// canceled; the first failure is returned after every rank has stopped
// (what the ranks wrote stays in the sink). On success it checks that
// every block the epoch owed was written exactly once and returns the
// sink's tensors.
func RunLocalBackwardNet(ctx context.Context, cfg BackwardLocalConfig, p *kernels.Params, plan *shard.Plan, q, k, v, o, lse, do []float32) (dq, dk, dv []float32, err error) {
	if plan == nil || p == nil || cfg.Net == nil {
		return nil, nil, nil, invalid("RunLocalBackwardNet needs a plan, params and a net")
	}
	if cfg.Net.Size() != len(plan.Ranks) {
		return nil, nil, nil, invalid("net of %d ranks, expected the plan's %d", cfg.Net.Size(), len(plan.Ranks))
	}
	if err := PlanMatches(plan, p); err != nil {
		return nil, nil, nil, err
	}
	src := cfg.Source
	if src == nil {
		ms, err := NewMemGradSource(p, plan.Block, q, k, v, o, lse, do)
		if err != nil {
			return nil, nil, nil, err
		}
		src = ms
	}
	sink := cfg.Sink
	if sink == nil {
		if sink, err = NewMemGradSink(p, plan.Block); err != nil {
			return nil, nil, nil, err
		}
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for r := range len(plan.Ranks) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ring := cfg.Net.Rank(r)
			if cfg.Ring != nil {
				ring = cfg.Ring(ring)
			}
			err := RunRankBackward(ctx, BackwardConfig{Params: p, Plan: plan, Ring: ring, Source: src, Sink: sink,
				Epoch: cfg.Epoch, DoneDQ: cfg.DoneDQ, DoneDKV: cfg.DoneDKV, Progress: cfg.Progress,
				PartialTimeouts: cfg.PartialTimeouts, FullRing: cfg.FullRing})
			if err == nil {
				return
			}
			mu.Lock()
			if first == nil || (errors.Is(first, context.Canceled) && !errors.Is(err, context.Canceled)) {
				first = err
			}
			mu.Unlock()
			cfg.Net.Kill(r)
			cancel()
		}()
	}
	wg.Wait()
	if err := parent.Err(); err != nil {
		return nil, nil, nil, err
	}
	if first != nil {
		return nil, nil, nil, first
	}
	if err := sink.checkComplete(cfg.Epoch, plan, cfg.DoneDQ, cfg.DoneDKV); err != nil {
		return nil, nil, nil, err
	}
	dq, dk, dv = sink.Result()
	return dq, dk, dv, nil
}
