package ringattn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
)

// ringSteps runs the W ring steps of a ring strategy over the plan's
// key/value schedule (r.route, DESIGN.md §8): at step s the rank folds the
// blocks of rank (r-s) mod W that it needs while, concurrently, it sends
// the blocks whose next rank folds them at step s+1 and receives the
// blocks it folds at step s+1, each from the rank before it on the block's
// route. A block the rank still has to forward waits in sends until the
// step before its receiver folds it.
func (r *rankRun) ringSteps(ctx context.Context) error {
	plan, tr := r.plan, r.route
	if plan.Steps == 1 {
		return r.oneStep(ctx)
	}
	sends := make(map[int][]kvBlock) // by the step they are sent in
	queue := func(b kvBlock) {
		if s := tr.SendStep(r.rank, b.j); s >= 0 {
			sends[s] = append(sends[s], b)
		}
	}
	var cur []kvBlock
	for _, j := range plan.Ranks[r.rank].KVBlocks {
		if !tr.Loads(r.rank, j) {
			continue
		}
		b, err := r.fetchKV(ctx, j)
		if err != nil {
			return err
		}
		if tr.Needs(r.rank, j) {
			cur = append(cur, b)
		}
		queue(b)
	}
	for s := 0; s < plan.Steps; s++ {
		var incoming []kvBlock
		var falls int
		g, gctx := newGroup(ctx)
		if s+1 < plan.Steps {
			if out := sends[s]; len(out) > 0 {
				delete(sends, s)
				g.Go(func() error { return r.sendRouted(gctx, s+1, out) })
			}
			if want := tr.Fold(r.rank, s+1); len(want) > 0 {
				g.Go(func() (err error) {
					incoming, falls, err = r.recvRouted(gctx, s+1, want)
					return err
				})
			}
		}
		// Progress counts every pair of the step's holder, folded or not.
		for _, j := range plan.HeldKV(r.rank, s) {
			r.countPairs(j)
		}
		g.record(r.fold(gctx, cur, r.states(false), false))
		if err := g.Wait(); err != nil {
			if ctx.Err() != nil && errors.Is(err, context.Canceled) {
				err = ctx.Err()
			}
			return fmt.Errorf("rank %d step %d: %w", r.rank, s, err)
		}
		r.prog.Fallbacks += falls
		r.prog.Step = s + 1
		r.report()
		for _, b := range incoming {
			queue(b)
		}
		cur = incoming
	}
	for _, run := range r.runs {
		if err := r.put(ctx, run); err != nil {
			return err
		}
	}
	r.prog.Done = true
	r.report()
	return nil
}

// oneStep runs a plan of one step (one rank, or a head group of one rank:
// nothing to send or receive): it folds its key/value blocks as they
// arrive from the Source while the next one is fetched (double
// buffering), so the reads overlap the arithmetic. Folding the blocks one
// by one in order gives the same bits as folding them together.
func (r *rankRun) oneStep(ctx context.Context) error {
	var blocks []int
	for _, j := range r.plan.Ranks[r.rank].KVBlocks {
		if r.route.Needs(r.rank, j) {
			blocks = append(blocks, j)
		}
	}
	for _, j := range r.plan.HeldKV(r.rank, 0) {
		r.countPairs(j)
	}
	states := r.states(false)
	err := r.prefetch(ctx, blocks, func(b kvBlock) error {
		return r.fold(ctx, []kvBlock{b}, states, false)
	})
	if err != nil {
		return fmt.Errorf("rank %d step 0: %w", r.rank, err)
	}
	r.prog.Step = 1
	r.report()
	for _, run := range r.runs {
		if err := r.put(ctx, run); err != nil {
			return err
		}
	}
	r.prog.Done = true
	r.report()
	return nil
}

// sendRouted sends blocks, in ascending block order, each to the next rank
// on its route, keyed with the step the receiver folds it at (step).
func (r *rankRun) sendRouted(ctx context.Context, step int, blocks []kvBlock) error {
	slices.SortFunc(blocks, func(a, b kvBlock) int { return a.j - b.j })
	for _, b := range blocks {
		to := r.route.Next(r.rank, b.j)
		if !r.share {
			b = r.compact(b)
		}
		f := Frame{Key: Key{Kind: KindKV, Step: step, Block: b.j}, Tensors: [][]float32{b.k, b.v}, Stride: b.stride}
		if err := r.ring.Send(ctx, to, f); err != nil {
			return fmt.Errorf("sending key/value block %d to rank %d: %w", b.j, to, err)
		}
	}
	return nil
}

// recvRouted receives the blocks want of step `step`, each from the rank
// before this one on its route: one goroutine per sender, each receiving
// its blocks in order, so that a sender waiting on a full link to this
// rank is always drained. It returns the blocks in the order of want and
// the number fetched from the Source instead (timeouts, malformed frames).
func (r *rankRun) recvRouted(ctx context.Context, step int, want []int) ([]kvBlock, int, error) {
	out := make([]kvBlock, len(want))
	bySender := map[int][]int{} // sender -> indices into want
	var senders []int
	for i, j := range want {
		from := r.route.From(r.rank, j)
		if _, ok := bySender[from]; !ok {
			senders = append(senders, from)
		}
		bySender[from] = append(bySender[from], i)
	}
	var falls atomic.Int64
	g, gctx := newGroup(ctx)
	for _, from := range senders {
		idx := bySender[from]
		g.Go(func() error {
			for _, i := range idx {
				b, fell, err := r.recvKV(gctx, from, step, want[i])
				if err != nil {
					return err
				}
				if fell {
					falls.Add(1)
				}
				out[i] = b
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, 0, err
	}
	return out, int(falls.Load()), nil
}

func (r *rankRun) put(ctx context.Context, run *qRun) error {
	st := run.st
	lse := make([]float32, len(st.M))
	if err := st.Finalize(st.O, lse); err != nil { // in place: the state is done
		return fmt.Errorf("rank %d: finalizing query blocks %v: %w", r.rank, run.blocks, err)
	}
	return r.putRun(ctx, run, st.O, lse)
}

// putRun writes the finalized rows of a run ([B, Hq, rows, D] and
// [B, Hq, rows]): at once to a RunSink, else block by block.
func (r *rankRun) putRun(ctx context.Context, run *qRun, o, lse []float32) error {
	if rs, ok := r.cfg.Sink.(RunSink); ok && len(run.blocks) > 1 {
		if err := rs.PutRun(ctx, run.blocks[0], len(run.blocks), o, lse); err != nil {
			return fmt.Errorf("rank %d: writing output blocks %v: %w", r.rank, run.blocks, err)
		}
		return nil
	}
	bh := r.p.B * r.p.Hq
	for _, qi := range run.blocks {
		qs, n := r.plan.QSpan(qi)
		bo, bl := o, lse
		if len(run.blocks) > 1 {
			bo = gather(o, bh, run.rows, qs-run.start, n, r.p.D)
			bl = gather(lse, bh, run.rows, qs-run.start, n, 1)
		}
		if err := r.cfg.Sink.Put(ctx, qi, bo, bl); err != nil {
			return fmt.Errorf("rank %d: writing output block %d: %w", r.rank, qi, err)
		}
	}
	return nil
}

// recvKV receives key/value block j of step `step` from rank `from`; a
// frame that times out or arrives malformed is fetched from the Source
// instead (fell reports it).
func (r *rankRun) recvKV(ctx context.Context, from, step, j int) (b kvBlock, fell bool, err error) {
	f, err := r.ring.Recv(ctx, from, Key{Kind: KindKV, Step: step, Block: j})
	switch {
	case err == nil:
		if len(f.Tensors) == 2 {
			b := kvBlock{j: j, k: f.Tensors[0], v: f.Tensors[1], stride: f.Stride}
			cerr := r.checkKV(b)
			if cerr == nil {
				return b, false, nil
			}
			r.log.Warn("malformed key/value frame, fetching from the source", "block", j, "step", step, "err", cerr)
		} else {
			r.log.Warn("malformed key/value frame, fetching from the source", "block", j, "step", step,
				"tensors", len(f.Tensors))
		}
	case errors.Is(err, ErrTimeout):
		r.log.Warn("key/value frame timed out, fetching from the source", "block", j, "step", step, "from", from)
	default:
		return kvBlock{}, false, fmt.Errorf("receiving key/value block %d from rank %d: %w", j, from, err)
	}
	b, err = r.fetchKV(ctx, j)
	if err != nil {
		return kvBlock{}, false, err
	}
	return b, true, nil
}
