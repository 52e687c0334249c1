package ringattn

import (
	"context"
	"errors"
	"fmt"
)

// splitKV is the split-KV backward: the rank computes, over its key range
// and all planned query rows, the complete dK/dV of its key blocks (every
// query is here) and a dQ partial; the partials are summed up the forward's
// binary tree (own + child, by level) to rank 0, which writes dQ. A lost
// partial is recomputed from the Source, subtree and all.
func (r *bwdRun) splitKV(ctx context.Context) error {
	dq, err := r.dqPartial(ctx, r.rank, r.mine, true)
	if err != nil {
		return err
	}
	r.prog.Step = 1
	r.report()
	for l := 0; 1<<l < r.w; l++ {
		if r.rank&(1<<l) != 0 {
			to := r.rank - 1<<l
			f := Frame{Key: Key{Kind: KindDQ, Step: l, Block: r.rank}, Tensors: [][]float32{dq}}
			if err := r.ring.Send(ctx, to, f); err != nil {
				return fmt.Errorf("rank %d: sending dQ partial to rank %d: %w", r.rank, to, err)
			}
			r.prog.Done = true
			r.report()
			return nil
		}
		c := r.rank + 1<<l
		if c >= r.w {
			continue
		}
		cdq, err := r.recvDQ(ctx, c, l, len(dq))
		if err != nil {
			return err
		}
		addInto(dq, cdq)
	}
	at := 0
	for _, run := range r.mine {
		n := len(run.dq)
		if err := r.putDQ(ctx, run, dq[at:at+n]); err != nil {
			return err
		}
		at += n
	}
	r.prog.Done = true
	r.report()
	return nil
}

// dqPartial computes rank h's split-KV part: its key blocks against the
// runs (their dq zeroed first), in ascending order with the next block
// fetched ahead. For h = this rank (own) it writes the dK/dV of its blocks;
// it returns the runs' dq concatenated (a fresh slice).
func (r *bwdRun) dqPartial(ctx context.Context, h int, runs []*bwdRows, own bool) ([]float32, error) {
	for _, run := range runs {
		clear(run.dq)
	}
	err := r.prefetch(ctx, r.plan.Ranks[h].KVBlocks, func(b kvBlock) error {
		g := r.newGrad(b.j)
		if err := r.contrib(ctx, runs, b, g, own); err != nil {
			return err
		}
		if own {
			return r.putDKV(ctx, b.j, g)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []float32
	for _, run := range runs {
		out = append(out, run.dq...)
	}
	return out, nil
}

func (r *bwdRun) recvDQ(ctx context.Context, c, level, size int) ([]float32, error) {
	key := Key{Kind: KindDQ, Step: level, Block: c}
	f, err := r.ring.Recv(ctx, c, key)
	for tries := 1; errors.Is(err, ErrTimeout) && tries < r.cfg.partialPatience(); tries++ {
		r.log.Debug("dQ partial late, still waiting", "from", c, "level", level, "timeouts", tries)
		f, err = r.ring.Recv(ctx, c, key)
	}
	switch {
	case err == nil:
		if len(f.Tensors) == 1 && len(f.Tensors[0]) == size && f.Stride == 0 {
			return f.Tensors[0], nil
		}
		r.log.Warn("malformed dQ partial, recomputing it from the source", "from", c, "level", level)
	case errors.Is(err, ErrTimeout):
		r.log.Warn("dQ partial timed out, recomputing it from the source", "from", c, "level", level)
	default:
		return nil, fmt.Errorf("rank %d: receiving dQ partial of rank %d: %w", r.rank, c, err)
	}
	r.prog.Fallbacks++
	return r.dqSubtree(ctx, c, level)
}

// dqSubtree recomputes what rank c sends at level l: its own dQ partial
// plus the subtrees of c + 2^m for m < l, in that order.
func (r *bwdRun) dqSubtree(ctx context.Context, c, l int) ([]float32, error) {
	runs, err := r.loadRows(ctx, r.plan.Ranks[c].QBlocks)
	if err != nil {
		return nil, err
	}
	dq, err := r.dqPartial(ctx, c, runs, false)
	if err != nil {
		return nil, err
	}
	for m := 0; m < l; m++ {
		cc := c + 1<<m
		if cc >= r.w {
			continue
		}
		cdq, err := r.dqSubtree(ctx, cc, m)
		if err != nil {
			return nil, err
		}
		addInto(dq, cdq)
	}
	return dq, nil
}
