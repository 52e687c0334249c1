package ringattn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// Frame kinds of the backward pass.
const (
	// KindGrad is a dK/dV accumulator travelling the ring behind its
	// key/value block: Tensors = [dK, dV], each [B, Hkv, len, D] of the
	// block, the sum of the contributions of the ranks on its route so
	// far. Step is the step at which the receiver folds the block
	// (1 .. W-1), or W for the frame that goes home to the block's holder.
	KindGrad Kind = 3
	// KindDQ is a split-KV dQ partial on its way up the reduction tree:
	// Tensors = [dQ] for every planned query row (the runs' [B, Hq, rows, D]
	// concatenated), Step the tree level, Block the sending rank.
	KindDQ Kind = 4
)

// GradSink receives a rank's finished gradient blocks. Every write is
// complete — the exact gradient of the block over the whole problem, never
// a partial sum — and tagged with the epoch that computed it, so a store can
// keep the first complete write of a block and ignore later ones (complete
// writes of different epochs are equal within float32 rounding).
//
// PutDQ writes dq [B, Hq, len, D] of query block `block`; PutDKV writes dk
// and dv [B, Hkv, len, D] of key block `block`.
type GradSink interface {
	PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error
	PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error
}

// BackwardConfig is everything one rank of a backward plan needs.
type BackwardConfig struct {
	// Params describes the whole problem (global N and Nk, mask, scale).
	Params *kernels.Params
	// Plan is the epoch's plan; it must have been made for Params. A plan
	// restricted to some query blocks (Request.QBlocks) computes dQ of
	// those blocks only and is valid only when every key block is listed
	// in DoneDKV: dK/dV of a key block needs all query blocks.
	Plan *shard.Plan
	// Ring connects this rank (Ring.Rank()) to the others of the epoch.
	Ring Ring
	// Source provides the inputs by block: "q", "o", "do" ([B,Hq,len,D])
	// and "lse" ([B,Hq,len]) by query block, "k" and "v" by key block. It
	// is also the fallback for frames that do not arrive.
	Source Source
	// Sink receives the complete gradient blocks this rank owns.
	Sink GradSink
	// Epoch tags every write to the Sink.
	Epoch uint64
	// DoneDQ and DoneDKV list the query and key blocks whose gradients an
	// earlier epoch already wrote complete; they are not written again
	// (every rank of the epoch must be given the same lists).
	DoneDQ, DoneDKV []int
	// Progress, Logger and PartialTimeouts are as in RankConfig; a lost
	// dK/dV accumulator or dQ partial is recomputed after PartialTimeouts
	// consecutive receive timeouts.
	Progress        func(Progress)
	Logger          *slog.Logger
	PartialTimeouts int
	// FullRing is as in RankConfig: every key/value block and its dK/dV
	// accumulator visit every rank instead of only the ranks whose query
	// blocks see the block. The gradients are equal either way (a rank
	// that does not see a block adds zeros); every rank of a plan must use
	// the same setting.
	FullRing bool
}

// Validate checks that the parts fit together, and the fencing rule: a
// plan over a subset of the query blocks may not produce dK/dV.
func (c *BackwardConfig) Validate() error {
	if err := checkParts("BackwardConfig", c.Params != nil, c.Plan != nil, c.Ring != nil, c.Source != nil, c.Sink != nil, c.PartialTimeouts); err != nil {
		return err
	}
	rc := RankConfig{Params: c.Params, Plan: c.Plan, Ring: c.Ring, Source: c.Source, Sink: nopSink{}}
	if err := rc.Validate(); err != nil {
		return err
	}
	plan := c.Plan
	for i, b := range c.DoneDQ {
		if b < 0 || b >= plan.QBlockCount {
			return invalid("BackwardConfig.DoneDQ[%d] = %d, expected a query block in 0..%d", i, b, plan.QBlockCount-1)
		}
	}
	for i, b := range c.DoneDKV {
		if b < 0 || b >= plan.KBlockCount {
			return invalid("BackwardConfig.DoneDKV[%d] = %d, expected a key block in 0..%d", i, b, plan.KBlockCount-1)
		}
	}
	if len(plan.Planned) != plan.QBlockCount {
		done := make([]bool, plan.KBlockCount)
		for _, b := range c.DoneDKV {
			done[b] = true
		}
		if j := slices.Index(done, false); j >= 0 {
			return invalid("plan covers %d of %d query blocks but key block %d has no dK/dV yet: dK/dV need every query block, expected a plan over all query blocks or key block %d in DoneDKV",
				len(plan.Planned), plan.QBlockCount, j, j)
		}
	}
	return nil
}

// nopSink lets BackwardConfig.Validate reuse RankConfig.Validate.
type nopSink struct{}

func (nopSink) Put(context.Context, int, []float32, []float32) error { return nil }

// bwdRows are the backward inputs of a run of consecutive query blocks
// (see qRun), contiguous [B, Hq, rows, D] and [B, Hq, rows].
type bwdRows struct {
	blocks      []int
	start, rows int
	pairs       []*shard.BlockPairs
	q, do       []float32
	lse, delta  []float32
	dq          []float32 // accumulated over the key blocks
}

// sees reports whether some query block of the run sees key block kj.
func (b *bwdRows) sees(kj int) bool {
	for _, bp := range b.pairs {
		if bp.Pairs(kj) > 0 {
			return true
		}
	}
	return false
}

// bwdRun is the state of one RunRankBackward call.
type bwdRun struct {
	*rankRun
	bcfg    BackwardConfig
	mine    []*bwdRows   // this rank's runs
	doneDQ  []bool       // by query block
	doneDKV []bool       // by key block
	grads   bool         // some dK/dV is still to be written: accumulators travel
	gfalls  atomic.Int64 // accumulators recomputed (counted by the goroutine finishing them)
}

// gradPair is the dK, dV of one key/value block.
type gradPair struct{ dk, dv []float32 }

// RunRankBackward executes rank Ring.Rank() of the backward pass of
// cfg.Plan: it ends with the exact dQ of the query blocks the rank owns and
// the exact dK, dV of the key/value blocks it starts with, and writes them
// to the Sink (split-KV: rank 0 writes dQ, every rank the dK/dV of its key
// range). See DESIGN.md §6 for the schedule and §7 for the fencing rule.
//
// Ring strategies: the key/value blocks travel as in the forward (double
// buffered, only to the ranks whose query blocks see them) and their
// dK/dV accumulators follow them one step behind: at step s the rank
// computes its contribution to the blocks it holds into fresh buffers
// while, besides the key/value transfer, it receives the accumulators of
// the previous step's blocks from the rank before it on each block's
// route, adds its contribution and sends them on to the next rank on the
// route. After the last step the accumulators go home to the blocks'
// holders, which write them. A lost or malformed accumulator is recomputed from the Source
// (the contributions of the ranks it passed, in their order), so the result
// is bit-identical to the fault-free run.
//
// Errors: as RunRank.
func RunRankBackward(ctx context.Context, cfg BackwardConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	rr := &rankRun{
		cfg: RankConfig{Params: cfg.Params, Plan: cfg.Plan, Ring: cfg.Ring, Source: cfg.Source,
			Progress: cfg.Progress, Logger: cfg.Logger, PartialTimeouts: cfg.PartialTimeouts},
		p: cfg.Params, plan: cfg.Plan, ring: cfg.Ring, log: cfg.Logger,
		rank: cfg.Ring.Rank(), w: cfg.Ring.Size(),
	}
	if rr.log == nil {
		rr.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	rr.log = rr.log.With("rank", rr.rank, "pass", "backward")
	// No views: the kernel's dK and dV are laid out like K and V, and the
	// accumulators are block-sized, so key/value blocks are held contiguous.
	if fs, ok := cfg.Ring.(FrameSharer); ok {
		rr.share = fs.SharesFrames()
	}
	rr.owned = cfg.Plan.Ranks[rr.rank].QBlocks
	rr.prog = Progress{Rank: rr.rank, Steps: cfg.Plan.Steps}
	r := &bwdRun{rankRun: rr, bcfg: cfg,
		doneDQ: make([]bool, cfg.Plan.QBlockCount), doneDKV: make([]bool, cfg.Plan.KBlockCount)}
	for _, b := range cfg.DoneDQ {
		r.doneDQ[b] = true
	}
	for _, b := range cfg.DoneDKV {
		r.doneDKV[b] = true
	}
	r.grads = slices.Contains(r.doneDKV, false)
	mine, err := r.loadRows(ctx, rr.owned)
	if err != nil {
		return err
	}
	r.mine = mine
	r.countPairs()
	if cfg.Plan.Strategy == shard.SplitKV {
		return r.splitKV(ctx)
	}
	if cfg.FullRing {
		rr.route = cfg.Plan.FullRing()
	} else {
		route, err := cfg.Plan.TrafficContext(ctx)
		if err != nil {
			return err
		}
		rr.route = route
	}
	return r.ringSteps(ctx)
}

// countPairs sets the progress total: the visible pairs of the rank's
// query blocks with the key blocks it will hold.
func (r *bwdRun) countPairs() {
	var blocks []int
	if r.plan.Strategy == shard.SplitKV {
		blocks = r.plan.Ranks[r.rank].KVBlocks
	} else {
		for h := range r.w {
			blocks = append(blocks, r.plan.Ranks[h].KVBlocks...)
		}
	}
	for _, run := range r.mine {
		for _, bp := range run.pairs {
			for _, kj := range blocks {
				if bp.Pairs(kj) > 0 {
					r.prog.TotalPairs++
				}
			}
		}
	}
}

// loadRows fetches the backward inputs of the given query blocks
// (ascending), grouped into runs of consecutive blocks, and computes each
// run's Δ = rowsum(dO∘O).
func (r *bwdRun) loadRows(ctx context.Context, blocks []int) ([]*bwdRows, error) {
	p := r.p
	bh := p.B * p.Hq
	var out []*bwdRows
	for i := 0; i < len(blocks); {
		e := i + 1
		for e < len(blocks) && blocks[e] == blocks[e-1]+1 {
			e++
		}
		run := &bwdRows{blocks: blocks[i:e]}
		run.start, _ = r.plan.QSpan(run.blocks[0])
		for _, qi := range run.blocks {
			_, n := r.plan.QSpan(qi)
			run.rows += n
			run.pairs = append(run.pairs, r.plan.BlockPairs(qi))
		}
		var o []float32
		for _, t := range []struct {
			name string
			dst  *[]float32
			d    int
		}{{"q", &run.q, p.D}, {"do", &run.do, p.D}, {"o", &o, p.D}, {"lse", &run.lse, 1}} {
			x, err := r.fetchRows(ctx, t.name, run, t.d)
			if err != nil {
				return nil, err
			}
			*t.dst = x
		}
		run.delta = make([]float32, bh*run.rows)
		if err := kernels.BackwardDelta(o, run.do, run.delta, p.D); err != nil {
			return nil, fmt.Errorf("rank %d: query blocks %v: %w", r.rank, run.blocks, err)
		}
		run.dq = make([]float32, bh*run.rows*p.D)
		out = append(out, run)
		i = e
	}
	return out, nil
}

// fetchRows loads tensor `name` ([B, Hq, len, d] by query block) over the
// rows of a run: in one piece from a RunSource, else block by block.
func (r *bwdRun) fetchRows(ctx context.Context, name string, run *bwdRows, d int) ([]float32, error) {
	bh := r.p.B * r.p.Hq
	if rs, ok := r.cfg.Source.(RunSource); ok && len(run.blocks) > 1 {
		x, err := rs.FetchRun(ctx, name, run.blocks[0], len(run.blocks))
		if err != nil {
			return nil, fmt.Errorf("rank %d: fetching %s of query blocks %v: %w", r.rank, name, run.blocks, err)
		}
		if want := bh * run.rows * d; len(x) != want {
			return nil, invalid("rank %d: %s of query blocks %v has %d values, expected %d", r.rank, name, run.blocks, len(x), want)
		}
		return x, nil
	}
	var out []float32
	if len(run.blocks) > 1 {
		out = make([]float32, bh*run.rows*d)
	}
	for _, qi := range run.blocks {
		qs, n := r.plan.QSpan(qi)
		x, err := r.cfg.Source.Fetch(ctx, name, qi)
		if err != nil {
			return nil, fmt.Errorf("rank %d: fetching %s of query block %d: %w", r.rank, name, qi, err)
		}
		if want := bh * n * d; len(x) != want {
			return nil, invalid("rank %d: %s of query block %d has %d values, expected %d", r.rank, name, qi, len(x), want)
		}
		if len(run.blocks) == 1 {
			return x, nil
		}
		scatter(out, x, bh, run.rows, qs-run.start, n, d)
	}
	return out, nil
}

// contrib adds to g the contributions of the query rows `runs` to the
// gradients of key/value block b, run by run in order (BackwardBlock adds
// the runs' dQ too). With g zeroed beforehand this is the rank's
// contribution c_{x,j}: a function of the plan and the inputs only.
func (r *bwdRun) contrib(ctx context.Context, runs []*bwdRows, b kvBlock, g gradPair, count bool) error {
	start, n := r.plan.KSpan(b.j)
	return r.contribKV(ctx, runs, kernels.KV{K: b.k, V: b.v, Start: start, N: n}, []int{b.j}, g, count)
}

// contribKV is contrib for the consecutive key blocks js held contiguous
// in kv (one BackwardBlock call per run).
func (r *bwdRun) contribKV(ctx context.Context, runs []*bwdRows, kv kernels.KV, js []int, g gradPair, count bool) error {
	for _, run := range runs {
		sees := false
		for _, j := range js {
			if count {
				for _, bp := range run.pairs {
					if c := bp.Pairs(j); c > 0 {
						r.prog.Pairs++
						r.prog.FLOPs += 2.5 * float64(c) * r.plan.PairFLOPs()
					} else {
						r.prog.Skipped++
					}
				}
			}
			sees = sees || run.sees(j)
		}
		if !sees {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rows := &kernels.BackwardRows{Start: run.start, Rows: run.rows, Q: run.q, DO: run.do,
			LSE: run.lse, Delta: run.delta, DQ: run.dq}
		if err := r.p.BackwardBlock(rows, kv, g.dk, g.dv); err != nil {
			return fmt.Errorf("rank %d: backward of query blocks %v with key blocks %v: %w", r.rank, run.blocks, js, err)
		}
	}
	return nil
}

// contribSet computes the rank's contributions to the held blocks, in
// order, into fresh buffers. Runs of consecutive key blocks are copied
// into one contiguous set and computed in one BackwardBlock call per query
// run: the kernel tiles the set's keys rather than each block's (a
// 1024-key block is not a multiple of its 192-key tiles), and by the
// kernel's partition property the result is bit-identical to one call per
// block in the same order — dK/dV of every block, and the runs' dQ.
func (r *bwdRun) contribSet(ctx context.Context, held []kvBlock, count bool) ([]gradPair, error) {
	out := make([]gradPair, len(held))
	bh, d := r.p.B*r.p.Hkv, r.p.D
	for i := 0; i < len(held); {
		e := i + 1
		for e < len(held) && held[e].j == held[e-1].j+1 {
			e++
		}
		if e == i+1 {
			out[i] = r.newGrad(held[i].j)
			if err := r.contrib(ctx, r.mine, held[i], out[i], count); err != nil {
				return nil, err
			}
			i = e
			continue
		}
		start, _ := r.plan.KSpan(held[i].j)
		js := make([]int, 0, e-i)
		total := 0
		for _, b := range held[i:e] {
			_, n := r.plan.KSpan(b.j)
			total += n
			js = append(js, b.j)
		}
		k, v := make([]float32, bh*total*d), make([]float32, bh*total*d)
		off := 0
		for _, b := range held[i:e] {
			_, n := r.plan.KSpan(b.j)
			scatter(k, b.k, bh, total, off, n, d)
			scatter(v, b.v, bh, total, off, n, d)
			off += n
		}
		g := gradPair{dk: make([]float32, len(k)), dv: make([]float32, len(v))}
		if err := r.contribKV(ctx, r.mine, kernels.KV{K: k, V: v, Start: start, N: total}, js, g, count); err != nil {
			return nil, err
		}
		off = 0
		for m, b := range held[i:e] {
			_, n := r.plan.KSpan(b.j)
			out[i+m] = gradPair{dk: gather(g.dk, bh, total, off, n, d), dv: gather(g.dv, bh, total, off, n, d)}
			off += n
		}
		i = e
	}
	return out, nil
}

func (r *bwdRun) newGrad(j int) gradPair {
	_, n := r.plan.KSpan(j)
	size := r.p.B * r.p.Hkv * n * r.p.D
	return gradPair{dk: make([]float32, size), dv: make([]float32, size)}
}

// addInto sets acc[i] = acc[i] + x[i]: one rounding per element, so the
// chain of additions fixes the result.
func addInto(acc, x []float32) {
	x = x[:len(acc)]
	for i := range acc {
		acc[i] += x[i]
	}
}

// fetchContig loads key/value block j contiguous.
func (r *bwdRun) fetchContig(ctx context.Context, j int) (kvBlock, error) {
	b, err := r.fetchKV(ctx, j) // r.views is nil: a contiguous fetch
	if err != nil {
		return kvBlock{}, err
	}
	return r.compact(b), nil
}

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
		b, err := r.fetchContig(ctx, j)
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
					for i := range incoming {
						incoming[i] = r.compact(incoming[i])
					}
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
	// dQ is complete after the last step.
	for _, run := range r.mine {
		if err := r.putDQ(ctx, run, run.dq); err != nil {
			return err
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
	}
	for i, j := range own {
		if home[i].dk == nil {
			continue // done, or complete on this rank (finals)
		}
		if err := r.putDKV(ctx, j, home[i]); err != nil {
			return err
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
			addInto(g.dk, accs[i].dk)
			addInto(g.dv, accs[i].dv)
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
		f := Frame{Key: Key{Kind: KindGrad, Step: o.step, Block: o.j}, Tensors: [][]float32{o.g.dk, o.g.dv}}
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
	size := r.p.B * r.p.Hkv * n * r.p.D
	switch {
	case err == nil:
		if len(f.Tensors) == 2 && len(f.Tensors[0]) == size && len(f.Tensors[1]) == size && f.Stride == 0 {
			return gradPair{dk: f.Tensors[0], dv: f.Tensors[1]}, nil
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
// done are skipped).
func (r *bwdRun) putDQ(ctx context.Context, run *bwdRows, dq []float32) error {
	bh := r.p.B * r.p.Hq
	for _, qi := range run.blocks {
		if r.doneDQ[qi] {
			continue
		}
		qs, n := r.plan.QSpan(qi)
		x := dq
		if len(run.blocks) > 1 {
			x = gather(dq, bh, run.rows, qs-run.start, n, r.p.D)
		}
		if err := r.bcfg.Sink.PutDQ(ctx, r.bcfg.Epoch, qi, x); err != nil {
			return fmt.Errorf("rank %d: writing dQ of query block %d: %w", r.rank, qi, err)
		}
	}
	return nil
}

func (r *bwdRun) putDKV(ctx context.Context, j int, g gradPair) error {
	if r.doneDKV[j] {
		return nil
	}
	if err := r.bcfg.Sink.PutDKV(ctx, r.bcfg.Epoch, j, g.dk, g.dv); err != nil {
		return fmt.Errorf("rank %d: writing dK/dV of key block %d: %w", r.rank, j, err)
	}
	return nil
}

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
		b = r.compact(b)
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
