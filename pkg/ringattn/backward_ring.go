package ringattn

import (
	"context"
	"errors"
	"fmt"
)

// gradOut is a finished dK/dV accumulator waiting to be sent: to rank
// `to` with key step `step` (the step at which `to` folds the block, or W
// for the hop home to the block's holder).
type gradOut struct {
	to, step, j int
	g           gradPair
}

// ringSteps runs the W ring steps of a ring strategy's backward over the
// plan's key/value schedule (r.route, DESIGN.md §8): a key/value block and
// its dK/dV accumulator visit only the ranks whose query blocks see it, in
// ring order from its holder, and the accumulator then goes home.
//
// Step s on rank r: compute the contributions c_{r,j} of the blocks of
// rank h = r-s that r needs into fresh buffers while, concurrently, the
// key/value blocks move as in the forward (sent to the next rank on their
// route in the step before it folds them) and the accumulators of the
// blocks folded at step s-1 are finished: the accumulator is received from
// the rank before r on the block's route (unless r is the first that
// needs it), the rank's contribution added, and the sum sent on to the
// next rank on the route in the step before that rank finishes it (kept
// until then), or home to the holder after the last step. Every
// accumulator frame sent in step s is for its receiver's step s+1. After
// step W-1 the last accumulators are finished the same way, and the holder
// receives its blocks' accumulators from the last rank on their routes
// and writes them (a block the holder alone needs is complete on it; one
// no rank needs has zero gradients).
func (r *bwdRun) ringSteps(ctx context.Context) error {
	plan, tr := r.plan, r.route
	w := plan.Steps
	sends := make(map[int][]kvBlock) // key/value blocks to forward, by the step they are sent in
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
		b, err := r.fetchKV(ctx, j) // a view when the Source lends them
		if err != nil {
			return err
		}
		if tr.Needs(r.rank, j) {
			cur = append(cur, b)
		}
		queue(b)
	}
	gsends := make(map[int][]gradOut) // accumulators to send, by the step they are sent in (W: home)
	var finals []gradOut              // gradients complete on this rank (it alone needs its block)
	var pending []gradPair            // contributions of the previous step, to finish
	var pendBlocks []kvBlock
	for s := 0; s < w; s++ {
		var incoming []kvBlock
		var falls int
		var later []gradOut
		g, gctx := newGroup(ctx)
		if s+1 < w {
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
		if out := gsends[s]; len(out) > 0 {
			delete(gsends, s)
			g.Go(func() error { return r.sendGrads(gctx, out) })
		}
		if s > 0 && r.grads {
			pb, pg, ps := pendBlocks, pending, s-1
			g.Go(func() (err error) {
				later, err = r.passGrads(gctx, ps, pb, pg)
				return err
			})
		}
		// Progress counts the pairs of the step's blocks this rank skips.
		r.countUnneeded(s)
		local, err := r.contribSet(gctx, cur, true)
		g.record(err)
		if err := g.Wait(); err != nil {
			return r.stepErr(ctx, s, err)
		}
		r.prog.Fallbacks += falls + int(r.gfalls.Swap(0))
		r.prog.Step = s + 1
		r.report()
		finals = r.schedule(gsends, finals, later)
		for _, b := range incoming {
			queue(b)
		}
		pending, pendBlocks = local, cur
		cur = incoming
	}
	// dQ is complete after the last step. A viewGradSink copies what it
	// is given: the buffer is then free for the next contributions.
	_, copies := r.bcfg.Sink.(viewGradSink)
	for _, run := range r.mine {
		if err := r.putDQ(ctx, run, run.dq); err != nil {
			return err
		}
		if copies {
			gradBufs.put(run.dq)
			run.dq = nil
		}
	}
	if !r.grads {
		r.prog.Done = true
		r.report()
		return nil
	}
	// In this order: a receive of step W would make the ring drop the
	// step W-1 frames still to come as stale.
	later, err := r.passGrads(ctx, w-1, pendBlocks, pending)
	if err != nil {
		return r.stepErr(ctx, w, err)
	}
	finals = r.schedule(gsends, finals, later)
	g, gctx := newGroup(ctx)
	if out := gsends[w]; len(out) > 0 {
		g.Go(func() error { return r.sendGrads(gctx, out) })
	}
	var home []gradPair
	own := plan.Ranks[r.rank].KVBlocks
	g.Go(func() (err error) {
		home, err = r.recvHome(gctx, own)
		return err
	})
	if err := g.Wait(); err != nil {
		return r.stepErr(ctx, w, err)
	}
	r.prog.Fallbacks += int(r.gfalls.Swap(0))
	for _, f := range finals {
		if err := r.putDKV(ctx, f.j, f.g); err != nil {
			return err
		}
		if copies {
			r.ledger.giveBack(f.g)
		}
	}
	for i, j := range own {
		if home[i].dk == nil {
			continue // done, or complete on this rank (finals)
		}
		if err := r.putDKV(ctx, j, home[i]); err != nil {
			return err
		}
		if copies {
			r.ledger.giveBack(home[i])
		}
	}
	r.prog.Done = true
	r.report()
	return nil
}

// schedule files finished accumulators: those for this rank itself (its
// block, needed by no other rank) into finals, the others into gsends by
// the step they are sent in — their key step, the step before the
// receiver finishes them, as the full ring sends them.
func (r *bwdRun) schedule(gsends map[int][]gradOut, finals, later []gradOut) []gradOut {
	for _, o := range later {
		if o.to == r.rank {
			finals = append(finals, o)
			continue
		}
		// Sent in step o.step, finished by the receiver in step o.step+1
		// (home: after the last step).
		gsends[o.step] = append(gsends[o.step], o)
	}
	return finals
}

// countUnneeded adds to the progress the pairs of the blocks of step s
// that this rank does not hold because none of its query blocks sees
// them: all skipped.
func (r *bwdRun) countUnneeded(s int) {
	for _, j := range r.plan.HeldKV(r.rank, s) {
		if r.route.Needs(r.rank, j) {
			continue
		}
		for _, run := range r.mine {
			r.prog.Skipped += len(run.blocks)
		}
	}
}

// accFrom returns the rank that sends rank r the accumulator of key block
// j: the rank before r on the block's route that needs it; -1 when r is
// the first rank that needs j (its accumulator starts here).
func (r *bwdRun) accFrom(j int) int {
	from := r.route.From(r.rank, j)
	if from < 0 || (from == r.route.Holder(j) && !r.route.Needs(from, j)) {
		return -1
	}
	return from
}

// lastOnRoute returns the last rank on key block j's route that needs it
// (-1 when none does): the rank that sends the accumulator home.
func (r *bwdRun) lastOnRoute(j int) int {
	h := r.route.Holder(j)
	for d := r.w - 1; d >= 0; d-- {
		if x := (h + d) % r.w; r.route.Needs(x, j) {
			return x
		}
	}
	return -1
}

// contributors returns the ranks whose contributions an accumulator of
// key block j holds when rank r receives it, in route order: the ranks
// before r on the route that need j, or all of them for the hop home.
func (r *bwdRun) contributors(j int, home bool) []int {
	h := r.route.Holder(j)
	var out []int
	for d := range r.w {
		x := (h + d) % r.w
		if !home && x == r.rank {
			break
		}
		if r.route.Needs(x, j) {
			out = append(out, x)
		}
	}
	return out
}

func (r *bwdRun) stepErr(ctx context.Context, s int, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = ctx.Err()
	}
	return fmt.Errorf("rank %d backward step %d: %w", r.rank, s, err)
}
