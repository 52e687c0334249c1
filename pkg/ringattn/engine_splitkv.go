package ringattn

import (
	"context"
	"errors"
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// splitKV computes this rank's partial (O, LSE) over its key range for all
// planned query blocks and runs its part of the binary reduction tree: at
// level l a rank with bit l set sends its partial to rank - 2^l and stops;
// the others receive from rank + 2^l and merge. A partial that times out or
// arrives malformed is recomputed here from the Source, subtree and all, in
// the same order the sender would have used, so the result is unchanged.
func (r *rankRun) splitKV(ctx context.Context) error {
	o, lse, err := r.partial(ctx, r.rank, true)
	if err != nil {
		return err
	}
	r.prog.Step = 1
	r.report()
	for l := 0; 1<<l < r.w; l++ {
		if r.rank&(1<<l) != 0 {
			to := r.rank - 1<<l
			f := Frame{Key: Key{Kind: KindPartial, Step: l, Block: r.rank}, Tensors: [][]float32{o, lse}}
			if err := r.ring.Send(ctx, to, f); err != nil {
				return fmt.Errorf("rank %d: sending partial to rank %d: %w", r.rank, to, err)
			}
			r.prog.Done = true
			r.report()
			return nil
		}
		c := r.rank + 1<<l
		if c >= r.w {
			continue
		}
		co, clse, err := r.recvPartial(ctx, c, l, len(o), len(lse))
		if err != nil {
			return err
		}
		if err := kernels.MergeOutputs(o, lse, co, clse, r.p.D); err != nil {
			return fmt.Errorf("rank %d: merging partial of rank %d: %w", r.rank, c, err)
		}
	}
	// Rank 0: write every planned block.
	at := 0
	for _, run := range r.runs {
		rows := r.p.B * r.p.Hq * run.rows
		if err := r.putRun(ctx, run, o[at*r.p.D:(at+rows)*r.p.D], lse[at:at+rows]); err != nil {
			return err
		}
		at += rows
	}
	r.prog.Done = true
	r.report()
	return nil
}

func (r *rankRun) recvPartial(ctx context.Context, c, level, no, nl int) (o, lse []float32, err error) {
	key := Key{Kind: KindPartial, Step: level, Block: c}
	f, err := r.ring.Recv(ctx, c, key)
	// A partial is expensive to recompute and a slow child is more likely
	// than a lost frame: wait a few receive timeouts first.
	for tries := 1; errors.Is(err, ErrTimeout) && tries < r.cfg.partialPatience(); tries++ {
		r.log.Debug("partial late, still waiting", "from", c, "level", level, "timeouts", tries)
		f, err = r.ring.Recv(ctx, c, key)
	}
	switch {
	case err == nil:
		if len(f.Tensors) == 2 && len(f.Tensors[0]) == no && len(f.Tensors[1]) == nl {
			return f.Tensors[0], f.Tensors[1], nil
		}
		r.log.Warn("malformed partial, recomputing it from the source", "from", c, "level", level)
	case errors.Is(err, ErrTimeout):
		r.log.Warn("partial timed out, recomputing it from the source", "from", c, "level", level)
	default:
		return nil, nil, fmt.Errorf("rank %d: receiving partial of rank %d: %w", r.rank, c, err)
	}
	r.prog.Fallbacks++
	return r.subtree(ctx, c, level)
}

// subtree recomputes what rank c sends at level l: its own partial merged
// with the subtrees of c + 2^m for m < l.
func (r *rankRun) subtree(ctx context.Context, c, l int) (o, lse []float32, err error) {
	o, lse, err = r.partial(ctx, c, false)
	if err != nil {
		return nil, nil, err
	}
	for m := 0; m < l; m++ {
		cc := c + 1<<m
		if cc >= r.w {
			continue
		}
		co, clse, err := r.subtree(ctx, cc, m)
		if err != nil {
			return nil, nil, err
		}
		if err := kernels.MergeOutputs(o, lse, co, clse, r.p.D); err != nil {
			return nil, nil, err
		}
	}
	return o, lse, nil
}

// partial folds rank h's key range into fresh states of all planned query
// blocks and returns the finalized (O, LSE): the runs' [B, Hq, rows, D] and
// [B, Hq, rows], concatenated in order (every rank of a split-KV plan has
// the same runs, so partials line up row by row). Key blocks are fetched
// one ahead of the fold.
func (r *rankRun) partial(ctx context.Context, h int, count bool) (o, lse []float32, err error) {
	p := r.p
	states := r.states(!count) // a recomputation for another rank keeps our states intact
	if err := r.prefetch(ctx, r.plan.Ranks[h].KVBlocks, func(b kvBlock) error {
		return r.fold(ctx, []kvBlock{b}, states, count)
	}); err != nil {
		return nil, nil, err
	}
	rows := 0
	for _, st := range states {
		rows += len(st.M)
	}
	o = make([]float32, rows*p.D)
	lse = make([]float32, rows)
	at := 0
	for _, st := range states {
		n := len(st.M)
		if err := st.Finalize(o[at*p.D:(at+n)*p.D], lse[at:at+n]); err != nil {
			return nil, nil, err
		}
		at += n
	}
	return o, lse, nil
}
