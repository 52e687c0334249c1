package ringattn

import (
	"context"
	"errors"
	"sync"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// RunLocal runs every rank of plan in this process over an in-memory ring
// and returns o [B,Hq,N,D] and lse [B,Hq,N]. It computes the same function
// as kernels.Attention (within float32 rounding; the fold order follows the
// plan) and is bit-identical from run to run for the same plan. Query
// blocks outside a re-planning subset are left 0 in o and lse.
func RunLocal(ctx context.Context, p *kernels.Params, plan *shard.Plan, q, k, v []float32) (o, lse []float32, err error) {
	if plan == nil {
		return nil, nil, invalid("plan is nil")
	}
	net, err := NewMemNet(len(plan.Ranks), MemOptions{})
	if err != nil {
		return nil, nil, err
	}
	defer net.Close()
	return RunLocalNet(ctx, LocalConfig{Net: net}, p, plan, q, k, v)
}

// LocalConfig tunes RunLocalNet.
type LocalConfig struct {
	// Net is the in-memory network, with Net.Size() == len(plan.Ranks); the
	// caller closes it.
	Net *MemNet
	// Progress, when not nil, receives every rank's progress (from the
	// ranks' goroutines, concurrently).
	Progress func(Progress)
	// Source replaces the in-memory source over q, k, v when not nil.
	Source Source
	// FullRing is RankConfig.FullRing for every rank.
	FullRing bool
}

// RunLocalNet is RunLocal over a caller-provided network (with its fault
// hooks). When a rank fails, it is killed in the net and the others are
// canceled; the first failure is returned after every rank has stopped.
func RunLocalNet(ctx context.Context, cfg LocalConfig, p *kernels.Params, plan *shard.Plan, q, k, v []float32) (o, lse []float32, err error) {
	if plan == nil || p == nil || cfg.Net == nil {
		return nil, nil, invalid("RunLocalNet needs a plan, params and a net")
	}
	if cfg.Net.Size() != len(plan.Ranks) {
		return nil, nil, invalid("net of %d ranks, expected the plan's %d", cfg.Net.Size(), len(plan.Ranks))
	}
	if err := PlanMatches(plan, p); err != nil {
		return nil, nil, err
	}
	var src Source = cfg.Source
	if src == nil {
		ms, err := NewMemSource(p, plan.Block, q, k, v)
		if err != nil {
			return nil, nil, err
		}
		src = ms
	}
	sink, err := NewMemSink(p, plan.Block)
	if err != nil {
		return nil, nil, err
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
			err := RunRank(ctx, RankConfig{Params: p, Plan: plan, Ring: cfg.Net.Rank(r),
				Source: src, Sink: sink, Progress: cfg.Progress, FullRing: cfg.FullRing})
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
		return nil, nil, err // the caller's cancellation, not the peer errors it caused
	}
	if first != nil {
		return nil, nil, first
	}
	if err := sink.checkPlanned(plan); err != nil {
		return nil, nil, err
	}
	o, lse = sink.Result()
	return o, lse, nil
}
