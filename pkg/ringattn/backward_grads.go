package ringattn

import (
	"context"
	"errors"
	"fmt"
)

// passGrads finishes the accumulators of the blocks this rank folded at
// step s (all of which it needs): it receives each from the rank before it
// on the block's route — one goroutine per sender — unless this rank is
// the first that needs the block, adds its contribution (acc + c), and
// sends the sum to the next rank on the route when that rank folds the
// block at step s+1. It returns the sums to send later (their receiver
// folds the block after step s+1, or the sum goes home, which is sent
// after the last step concurrently with the home receives) or to keep
// (this rank is the holder and no other rank needs the block). Blocks whose
// dK/dV is done travel without accumulators.
func (r *bwdRun) passGrads(ctx context.Context, s int, held []kvBlock, local []gradPair) ([]gradOut, error) {
	accs := make([]gradPair, len(held))
	bySender := map[int][]int{}
	var senders []int
	for i, b := range held {
		if r.doneDKV[b.j] {
			continue
		}
		if from := r.accFrom(b.j); from >= 0 {
			if _, ok := bySender[from]; !ok {
				senders = append(senders, from)
			}
			bySender[from] = append(bySender[from], i)
		}
	}
	if len(senders) > 0 {
		g, gctx := newGroup(ctx)
		for _, from := range senders {
			idx := bySender[from]
			g.Go(func() error {
				for _, i := range idx {
					acc, err := r.recvGrad(gctx, from, s, held[i].j)
					if err != nil {
						return err
					}
					accs[i] = acc
				}
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
	}
	var now, later []gradOut
	for i, b := range held {
		if r.doneDKV[b.j] {
			continue
		}
		g := local[i]
		if accs[i].dk != nil {
			// c + acc: float addition commutes exactly, so this is acc + c.
			_, n := r.plan.KSpan(b.j)
			r.addGrad(g, accs[i], n)
			r.ledger.giveBack(accs[i]) // consumed: its set may be reused
		}
		o := gradOut{to: r.route.Next(r.rank, b.j), j: b.j, g: g}
		switch {
		case o.to >= 0:
			o.step = r.route.Step(o.to, b.j)
		case r.route.Holder(b.j) == r.rank:
			o.to, o.step = r.rank, r.plan.Steps // complete here
		default:
			o.to, o.step = r.route.Holder(b.j), r.plan.Steps // home
		}
		if o.to != r.rank && o.step == s+1 && o.step < r.plan.Steps {
			now = append(now, o)
		} else {
			later = append(later, o)
		}
	}
	return later, r.sendGrads(ctx, now)
}

// sendGrads sends accumulators, in order.
func (r *bwdRun) sendGrads(ctx context.Context, out []gradOut) error {
	for _, o := range out {
		f := Frame{Key: Key{Kind: KindGrad, Step: o.step, Block: o.j}, Tensors: [][]float32{o.g.dk, o.g.dv}, Stride: o.g.stride}
		if err := r.ring.Send(ctx, o.to, f); err != nil {
			return fmt.Errorf("sending the dK/dV accumulator of key block %d to rank %d: %w", o.j, o.to, err)
		}
	}
	return nil
}

// recvHome receives the step-W accumulators of the rank's own blocks from
// the last rank on each block's route: nil entries for blocks whose dK/dV
// is done or complete on this rank, zeros for a block no rank needs.
func (r *bwdRun) recvHome(ctx context.Context, blocks []int) ([]gradPair, error) {
	out := make([]gradPair, len(blocks))
	for i, j := range blocks {
		if r.doneDKV[j] {
			continue
		}
		last := r.lastOnRoute(j)
		switch last {
		case -1:
			out[i] = r.newGrad(j) // no query block sees it
			continue
		case r.rank:
			continue // in finals
		}
		g, err := r.recvGrad(ctx, last, r.plan.Steps, j)
		if err != nil {
			return nil, err
		}
		out[i] = g
	}
	return out, nil
}

// recvGrad receives the accumulator of key block j at step `step` from
// rank `from`. One that is still missing after PartialTimeouts receive
// timeouts, or is malformed, is recomputed from the Source: the
// contributions of ranks r-step .. r-1, summed in that order, which is the
// frame's exact value. The caller must not modify the result (a received
// frame may be shared with its sender).
func (r *bwdRun) recvGrad(ctx context.Context, from, step, j int) (gradPair, error) {
	key := Key{Kind: KindGrad, Step: step, Block: j}
	f, err := r.ring.Recv(ctx, from, key)
	for tries := 1; errors.Is(err, ErrTimeout) && tries < r.cfg.partialPatience(); tries++ {
		r.log.Debug("dK/dV accumulator late, still waiting", "block", j, "step", step, "timeouts", tries)
		f, err = r.ring.Recv(ctx, from, key)
	}
	_, n := r.plan.KSpan(j)
	bh, d := r.p.B*r.p.Hkv, r.p.D
	size := bh * n * d
	switch {
	case err == nil:
		if len(f.Tensors) == 2 && len(f.Tensors[0]) == size && len(f.Tensors[1]) == size && f.Stride == 0 {
			return gradPair{dk: f.Tensors[0], dv: f.Tensors[1]}, nil
		}
		// A view into the sender's gradients of a set (a FrameSharer ring).
		if len(f.Tensors) == 2 && f.Stride > 0 && r.share && viewFits(f.Tensors[0], bh, n, f.Stride, d) && viewFits(f.Tensors[1], bh, n, f.Stride, d) {
			return gradPair{dk: f.Tensors[0], dv: f.Tensors[1], stride: f.Stride}, nil
		}
		r.log.Warn("malformed dK/dV accumulator, recomputing it from the source", "block", j, "step", step)
	case errors.Is(err, ErrTimeout):
		r.log.Warn("dK/dV accumulator timed out, recomputing it from the source", "block", j, "step", step, "from", from)
	default:
		return gradPair{}, fmt.Errorf("receiving the dK/dV accumulator of key block %d from rank %d: %w", j, from, err)
	}
	r.gfalls.Add(1)
	return r.recomputeGrad(ctx, j, step == r.plan.Steps)
}

// recomputeGrad returns the accumulator of key block j as this rank
// receives it: the contributions of the ranks before it on the block's
// route (all of them for the hop home), summed in route order, each
// computed as its rank computes it.
func (r *bwdRun) recomputeGrad(ctx context.Context, j int, home bool) (gradPair, error) {
	b, err := r.fetchContig(ctx, j)
	if err != nil {
		return gradPair{}, err
	}
	var acc gradPair
	for n, x := range r.contributors(j, home) {
		runs, err := r.loadRows(ctx, r.plan.Ranks[x].QBlocks)
		if err != nil {
			return gradPair{}, err
		}
		c := r.newGrad(j)
		if err := r.contrib(ctx, runs, b, c, false); err != nil {
			return gradPair{}, err
		}
		if n == 0 {
			acc = c
			continue
		}
		addInto(acc.dk, c.dk)
		addInto(acc.dv, c.dv)
	}
	if acc.dk == nil {
		acc = r.newGrad(j)
	}
	return acc, nil
}

// putDQ writes the dQ rows of a run block by block (blocks whose dQ is
// done are skipped), each as a view of the run's dQ where the sink takes
// views.
func (r *bwdRun) putDQ(ctx context.Context, run *bwdRows, dq []float32) error {
	bh := r.p.B * r.p.Hq
	for _, qi := range run.blocks {
		if r.doneDQ[qi] {
			continue
		}
		qs, n := r.plan.QSpan(qi)
		var err error
		switch sink, ok := r.bcfg.Sink.(viewGradSink); {
		case len(run.blocks) == 1:
			err = r.bcfg.Sink.PutDQ(ctx, r.bcfg.Epoch, qi, dq)
		case ok:
			err = sink.putDQView(ctx, r.bcfg.Epoch, qi, dq, run.rows, qs-run.start)
		default:
			err = r.bcfg.Sink.PutDQ(ctx, r.bcfg.Epoch, qi, gather(dq, bh, run.rows, qs-run.start, n, r.p.D))
		}
		if err != nil {
			return fmt.Errorf("rank %d: writing dQ of query block %d: %w", r.rank, qi, err)
		}
	}
	return nil
}

// putDKV writes dK/dV of block j: a view as it is to a sink that takes
// views (viewGradSink), else copied out contiguous first (PutDKV takes
// [B, Hkv, len, D], and the sink may keep what it is given).
func (r *bwdRun) putDKV(ctx context.Context, j int, g gradPair) error {
	if r.doneDKV[j] {
		return nil
	}
	var err error
	if sink, ok := r.bcfg.Sink.(viewGradSink); ok && g.stride != 0 {
		err = sink.putDKVView(ctx, r.bcfg.Epoch, j, g.dk, g.dv, g.stride)
	} else {
		if g.stride != 0 {
			g = r.compactGrad(j, g)
		}
		err = r.bcfg.Sink.PutDKV(ctx, r.bcfg.Epoch, j, g.dk, g.dv)
	}
	if err != nil {
		return fmt.Errorf("rank %d: writing dK/dV of key block %d: %w", r.rank, j, err)
	}
	return nil
}

// compactGrad returns a contiguous copy of g, dK/dV of key block j.
func (r *bwdRun) compactGrad(j int, g gradPair) gradPair {
	_, n := r.plan.KSpan(j)
	bh, d := r.p.B*r.p.Hkv, r.p.D
	stride := max(g.stride, n)
	return gradPair{dk: gather(g.dk, bh, stride, 0, n, d), dv: gather(g.dv, bh, stride, 0, n, d)}
}
