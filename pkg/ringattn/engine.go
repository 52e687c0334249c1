package ringattn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// More sentinel errors.
var (
	// ErrInvalid is wrapped by configuration and data-shape errors.
	ErrInvalid = errors.New("ringattn: invalid argument")
	// ErrKilled is returned by the in-memory ring to a rank that was killed.
	ErrKilled = errors.New("ringattn: rank killed")
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// RankConfig is everything one rank of a plan needs.
type RankConfig struct {
	// Params describes the whole problem (global N and Nk, mask, scale).
	Params *kernels.Params
	// Plan is the epoch's plan; it must have been made for Params.
	Plan *shard.Plan
	// Ring connects this rank (Ring.Rank()) to the others of the epoch;
	// Ring.Size() must equal len(Plan.Ranks).
	Ring Ring
	// Source provides the input blocks: "q" by query block, "k" and "v" by
	// key block. It is also the fallback for frames that do not arrive.
	Source Source
	// Sink receives the output blocks this rank owns.
	Sink Sink
	// Progress, when not nil, is called from the rank's goroutine after
	// every ring step (and after the split-KV reduction); it must not block.
	Progress func(Progress)
	// Logger receives debug and warning records; nil discards them.
	Logger *slog.Logger
	// PartialTimeouts is how many consecutive receive timeouts a split-KV
	// rank waits for a child's partial before recomputing it from the
	// Source; 0 means DefaultPartialTimeouts.
	PartialTimeouts int
	// FullRing, when set, passes every key/value block through every rank
	// (shard.Plan.FullRing) instead of only to the ranks that need it
	// (shard.Plan.Traffic), as the ring did before short-circuits. The
	// result is the same bits either way; it is for measuring the
	// difference. Every rank of a plan must use the same setting.
	FullRing bool
}

// DefaultPartialTimeouts is RankConfig.PartialTimeouts when 0.
const DefaultPartialTimeouts = 3

func (c *RankConfig) partialPatience() int {
	if c.PartialTimeouts > 0 {
		return c.PartialTimeouts
	}
	return DefaultPartialTimeouts
}

// Progress is a rank's cumulative progress.
type Progress struct {
	Rank        int
	Step, Steps int     // ring steps finished / planned
	Pairs       int     // (query block, key block) pairs folded so far
	TotalPairs  int     // pairs this rank folds in all (the visible ones)
	Skipped     int     // pairs skipped because the mask hides them entirely
	FLOPs       float64 // visible FLOPs folded so far (4·B·Hq·D per pair)
	Fallbacks   int     // blocks fetched from the Source after a receive timeout
	Done        bool    // outputs written (or, split-KV, partial handed on)
}

// checkParts reports the first missing part of a rank's configuration
// (cfg names its type in the error) or a negative PartialTimeouts.
func checkParts(cfg string, params, plan, ring, source, sink bool, partialTimeouts int) error {
	for _, part := range []struct {
		name string
		ok   bool
	}{{"Params", params}, {"Plan", plan}, {"Ring", ring}, {"Source", source}, {"Sink", sink}} {
		if !part.ok {
			return invalid("%s.%s is nil", cfg, part.name)
		}
	}
	if partialTimeouts < 0 {
		return invalid("%s.PartialTimeouts = %d, expected >= 0", cfg, partialTimeouts)
	}
	return nil
}

// Validate checks that the parts fit together.
func (c *RankConfig) Validate() error {
	if err := checkParts("RankConfig", c.Params != nil, c.Plan != nil, c.Ring != nil, c.Source != nil, c.Sink != nil, c.PartialTimeouts); err != nil {
		return err
	}
	if err := c.Params.Validate(); err != nil {
		return fmt.Errorf("%w: RankConfig.Params: %w", ErrInvalid, err)
	}
	if err := c.Plan.Validate(); err != nil {
		return fmt.Errorf("%w: RankConfig.Plan: %w", ErrInvalid, err)
	}
	if err := PlanMatches(c.Plan, c.Params); err != nil {
		return err
	}
	if w := len(c.Plan.Ranks); c.Ring.Size() != w {
		return invalid("ring size %d, expected the plan's %d ranks", c.Ring.Size(), w)
	}
	if r := c.Ring.Rank(); r < 0 || r >= c.Ring.Size() {
		return invalid("ring rank %d, expected 0..%d", r, c.Ring.Size()-1)
	}
	return nil
}

// PlanMatches reports whether plan was made for the problem p: same shapes,
// lengths and mask (the plan's mask decides which block pairs are skipped).
func PlanMatches(plan *shard.Plan, p *kernels.Params) error {
	r := &plan.Request
	m, pm := &r.Mask, &p.Mask
	switch {
	case r.B != p.B || r.Hq != p.Hq || r.Hkv != p.Hkv || r.D != p.D:
		return invalid("plan is for B=%d Hq=%d Hkv=%d D=%d, expected B=%d Hq=%d Hkv=%d D=%d",
			r.B, r.Hq, r.Hkv, r.D, p.B, p.Hq, p.Hkv, p.D)
	case plan.N != p.N || plan.Nk != p.Nk:
		return invalid("plan is for N=%d Nk=%d, expected N=%d Nk=%d", plan.N, plan.Nk, p.N, p.Nk)
	case m.Causal != pm.Causal || m.Windowed != pm.Windowed ||
		(m.Windowed && (m.Left != pm.Left || m.Right != pm.Right)) ||
		!slices.Equal(m.SeqLens, pm.SeqLens) || !slices.Equal(m.SeqLensK, pm.SeqLensK):
		return invalid("plan mask %+v differs from the problem's mask %+v", *m, *pm)
	}
	return nil
}

// kvBlock is one key/value block held by a rank.
type kvBlock struct {
	j    int
	k, v []float32
	// stride, when not 0, is the row distance between heads of k and v:
	// views lent by a ViewSource (see kernels.KV.Stride).
	stride int
}

// rankRun is the state of one RunRank call.
type rankRun struct {
	cfg   RankConfig
	p     *kernels.Params
	plan  *shard.Plan
	ring  Ring
	log   *slog.Logger
	rank  int
	w     int
	owned []int // query blocks folded by this rank, ascending
	runs  []*qRun
	pairs map[int]*shard.BlockPairs // visible pairs of each owned query block with any key block
	views ViewSource                // the Source, when it lends views
	share bool                      // the ring passes frames by reference (FrameSharer)
	prog  Progress
	// route is the forward's key/value schedule: which blocks the rank
	// folds, receives from whom and sends to whom (ring strategies).
	route *shard.Traffic
}

// qRun is a run of consecutive owned query blocks folded as one: one State
// and one Fold call per key block for the whole run, so the kernel tiles
// the run's rows, not each block's (block sizes need not be multiples of
// the kernel's tile height).
type qRun struct {
	blocks      []int
	start, rows int       // global first row, row count
	q           []float32 // [B, Hq, rows, D], or a view with qStride
	qStride     int       // rows between heads of q; 0: contiguous
	st          *kernels.State
}

// sees reports whether some query block of the run sees key block kj.
// It asks the blocks' pair counters (O(log Block) each) instead of keeping
// a flag per key block per run: striped plans with small blocks have as
// many runs as blocks, and a flag row each would take O(blocks²) memory.
func (r *rankRun) sees(run *qRun, kj int) bool {
	for _, qi := range run.blocks {
		if r.pairs[qi].Pairs(kj) > 0 {
			return true
		}
	}
	return false
}

// RunRank executes rank Ring.Rank() of cfg.Plan and returns when its part
// is done: its output blocks written to the Sink (ring strategies), or its
// partial handed up the reduction tree (split-KV; rank 0 writes the outputs).
//
// Ring strategies: the rank fetches its query blocks and its initial
// key/value blocks from the Source, then for each step s folds the blocks
// of rank (r-s) mod W that its query blocks see into their online-softmax
// state while, in other goroutines, blocks are sent on to the next rank
// that needs them and the blocks of step s+1 are received (double
// buffering): the schedule of shard.Plan.Traffic, which moves each block
// only to the ranks that need it (DESIGN.md §8). A receive that times
// out (ErrTimeout) or delivers a malformed frame is replaced by a Source
// fetch, and the fetched block is forwarded like a received one. Block pairs
// the mask hides entirely are skipped.
//
// Errors: a dead peer (ErrPeerGone from the ring) or the end of ctx stops
// the rank promptly — at the latest after the block pair being folded — and
// RunRank returns only after every goroutine it started has exited.
func RunRank(ctx context.Context, cfg RankConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	run := &rankRun{
		cfg: cfg, p: cfg.Params, plan: cfg.Plan, ring: cfg.Ring, log: cfg.Logger,
		rank: cfg.Ring.Rank(), w: cfg.Ring.Size(),
	}
	if run.log == nil {
		run.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	run.log = run.log.With("rank", run.rank)
	run.views, _ = cfg.Source.(ViewSource)
	if fs, ok := cfg.Ring.(FrameSharer); ok {
		run.share = fs.SharesFrames()
	}
	run.owned = cfg.Plan.Ranks[run.rank].QBlocks
	run.prog = Progress{Rank: run.rank, Steps: cfg.Plan.Steps}
	if err := run.loadQueries(ctx); err != nil {
		return err
	}
	if cfg.Plan.Strategy == shard.SplitKV {
		return run.splitKV(ctx)
	}
	if cfg.FullRing {
		run.route = cfg.Plan.FullRing()
	} else {
		route, err := cfg.Plan.TrafficContext(ctx)
		if err != nil {
			return err
		}
		run.route = route
	}
	return run.ringSteps(ctx)
}

func (r *rankRun) report() {
	if r.cfg.Progress != nil {
		r.cfg.Progress(r.prog)
	}
}

// loadQueries fetches the owned query blocks, creates their states and
// counts the pairs to fold.
func (r *rankRun) loadQueries(ctx context.Context) error {
	p := r.p
	r.pairs = make(map[int]*shard.BlockPairs, len(r.owned))
	folds := make([]int, r.w)                   // pairs per holder set (ring) or per rank range (split-KV)
	holder := make([]int32, r.plan.KBlockCount) // the rank holding each key block (plans deal each to one)
	for kj := range holder {
		holder[kj] = -1
	}
	for h := range r.w {
		for _, kj := range r.plan.Ranks[h].KVBlocks {
			holder[kj] = int32(h)
		}
	}
	for i := 0; i < len(r.owned); {
		e := i + 1
		for e < len(r.owned) && r.owned[e] == r.owned[e-1]+1 {
			e++
		}
		run := &qRun{blocks: r.owned[i:e]}
		run.start, _ = r.plan.QSpan(run.blocks[0])
		for _, qi := range run.blocks {
			_, n := r.plan.QSpan(qi)
			run.rows += n
		}
		if err := r.fetchQueries(ctx, run); err != nil {
			return err
		}
		for _, qi := range run.blocks {
			bp := r.plan.BlockPairs(qi)
			r.pairs[qi] = bp
			first, last := bp.Span()
			for kj := first; kj < last; kj++ {
				if h := holder[kj]; h >= 0 && bp.Pairs(kj) > 0 {
					folds[h]++
				}
			}
		}
		run.st = kernels.NewState(p.B, p.Hq, run.rows, p.D)
		r.runs = append(r.runs, run)
		i = e
	}
	if r.plan.Strategy == shard.SplitKV {
		r.prog.TotalPairs = folds[r.rank]
	} else {
		for _, f := range folds {
			r.prog.TotalPairs += f
		}
	}
	return nil
}

// fetchQueries loads a run's query rows: in one piece from a RunSource,
// else block by block (one block is used as fetched).
func (r *rankRun) fetchQueries(ctx context.Context, run *qRun) error {
	p := r.p
	bh := p.B * p.Hq
	if r.views != nil {
		q, stride, err := r.views.View(ctx, "q", run.blocks[0], len(run.blocks))
		if err != nil {
			return fmt.Errorf("rank %d: fetching query blocks %v: %w", r.rank, run.blocks, err)
		}
		if !viewFits(q, bh, run.rows, stride, p.D) {
			return invalid("rank %d: query blocks %v: a view of %d values %d rows apart, expected %d heads of %d rows (D=%d)",
				r.rank, run.blocks, len(q), stride, bh, run.rows, p.D)
		}
		run.q, run.qStride = q, stride
		return nil
	}
	if rs, ok := r.cfg.Source.(RunSource); ok && len(run.blocks) > 1 {
		q, err := rs.FetchRun(ctx, "q", run.blocks[0], len(run.blocks))
		if err != nil {
			return fmt.Errorf("rank %d: fetching query blocks %v: %w", r.rank, run.blocks, err)
		}
		if want := bh * run.rows * p.D; len(q) != want {
			return invalid("rank %d: query blocks %v have %d values, expected %d ([%d,%d,%d,%d])",
				r.rank, run.blocks, len(q), want, p.B, p.Hq, run.rows, p.D)
		}
		run.q = q
	} else {
		if len(run.blocks) > 1 {
			run.q = make([]float32, bh*run.rows*p.D)
		}
		for _, qi := range run.blocks {
			qs, n := r.plan.QSpan(qi)
			q, err := r.cfg.Source.Fetch(ctx, "q", qi)
			if err != nil {
				return fmt.Errorf("rank %d: fetching query block %d: %w", r.rank, qi, err)
			}
			if want := bh * n * p.D; len(q) != want {
				return invalid("rank %d: query block %d has %d values, expected %d ([%d,%d,%d,%d])",
					r.rank, qi, len(q), want, p.B, p.Hq, n, p.D)
			}
			if len(run.blocks) == 1 {
				run.q = q
			} else {
				scatter(run.q, q, bh, run.rows, qs-run.start, n, p.D)
			}
		}
	}
	return nil
}

// states returns the runs' states, or fresh ones when fresh is set.
func (r *rankRun) states(fresh bool) []*kernels.State {
	out := make([]*kernels.State, len(r.runs))
	for i, run := range r.runs {
		out[i] = run.st
		if fresh {
			out[i] = kernels.NewState(r.p.B, r.p.Hq, run.rows, r.p.D)
		}
	}
	return out
}

// fetchKV loads key/value block j from the Source (a view when it lends them).
func (r *rankRun) fetchKV(ctx context.Context, j int) (kvBlock, error) {
	if r.views != nil {
		k, ks, err := r.views.View(ctx, "k", j, 1)
		if err != nil {
			return kvBlock{}, fmt.Errorf("rank %d: fetching key block %d: %w", r.rank, j, err)
		}
		v, vs, err := r.views.View(ctx, "v", j, 1)
		if err != nil {
			return kvBlock{}, fmt.Errorf("rank %d: fetching value block %d: %w", r.rank, j, err)
		}
		if ks != vs {
			return kvBlock{}, invalid("rank %d: key/value block %d: views %d and %d rows apart, expected equal strides", r.rank, j, ks, vs)
		}
		b := kvBlock{j: j, k: k, v: v, stride: ks}
		if err := r.checkKV(b); err != nil {
			return kvBlock{}, err
		}
		return b, nil
	}
	k, err := r.cfg.Source.Fetch(ctx, "k", j)
	if err != nil {
		return kvBlock{}, fmt.Errorf("rank %d: fetching key block %d: %w", r.rank, j, err)
	}
	v, err := r.cfg.Source.Fetch(ctx, "v", j)
	if err != nil {
		return kvBlock{}, fmt.Errorf("rank %d: fetching value block %d: %w", r.rank, j, err)
	}
	b := kvBlock{j: j, k: k, v: v}
	if err := r.checkKV(b); err != nil {
		return kvBlock{}, err
	}
	return b, nil
}

func (r *rankRun) checkKV(b kvBlock) error {
	_, n := r.plan.KSpan(b.j)
	bh := r.p.B * r.p.Hkv
	if b.stride != 0 {
		if !viewFits(b.k, bh, n, b.stride, r.p.D) || !viewFits(b.v, bh, n, b.stride, r.p.D) {
			return invalid("rank %d: key/value block %d: views of %d/%d values %d rows apart, expected %d heads of %d rows (D=%d)",
				r.rank, b.j, len(b.k), len(b.v), b.stride, bh, n, r.p.D)
		}
		return nil
	}
	want := bh * n * r.p.D
	if len(b.k) != want || len(b.v) != want {
		return invalid("rank %d: key/value block %d has %d/%d values, expected %d ([%d,%d,%d,%d])",
			r.rank, b.j, len(b.k), len(b.v), want, r.p.B, r.p.Hkv, n, r.p.D)
	}
	return nil
}

// viewFits reports whether x holds bh heads of rows×d values, stride rows
// apart (stride >= rows).
func viewFits(x []float32, bh, rows, stride, d int) bool {
	return stride >= rows && (bh == 0 || rows == 0 || len(x) >= ((bh-1)*stride+rows)*d)
}

// compact returns a contiguous copy [B, Hkv, n, D] of a view.
func (r *rankRun) compact(b kvBlock) kvBlock {
	if b.stride == 0 {
		return b
	}
	_, n := r.plan.KSpan(b.j)
	bh := r.p.B * r.p.Hkv
	return kvBlock{j: b.j, k: gather(b.k, bh, b.stride, 0, n, r.p.D), v: gather(b.v, bh, b.stride, 0, n, r.p.D)}
}

// prefetch calls use on the key/value blocks in order while a goroutine
// fetches the next one from the Source (double buffering against the
// store): at most one block waits while another is used. It returns after
// the fetching goroutine has exited.
func (r *rankRun) prefetch(ctx context.Context, blocks []int, use func(kvBlock) error) error {
	type fetched struct {
		b   kvBlock
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan fetched, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		for _, j := range blocks {
			b, err := r.fetchKV(ctx, j)
			select {
			case ch <- fetched{b, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	for f := range ch {
		if f.err != nil {
			return f.err
		}
		if err := use(f.b); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// fold folds the held blocks into every owned query block they are visible
// to: one kernels.FoldBlocks call per run of query blocks, over the held
// blocks the run sees, in order (the same result as folding them one by
// one, with each query tile loaded once).
func (r *rankRun) fold(ctx context.Context, held []kvBlock, states []*kernels.State, count bool) error {
	if count {
		for _, b := range held {
			r.countPairs(b.j)
		}
	}
	kv := make([]kernels.KV, 0, len(held))
	for i, run := range r.runs {
		kv = kv[:0]
		for _, b := range held {
			if r.sees(run, b.j) {
				start, n := r.plan.KSpan(b.j)
				kv = append(kv, kernels.KV{K: b.k, V: b.v, Start: start, N: n, Stride: b.stride})
			}
		}
		if len(kv) == 0 {
			continue
		}
		if err := states[i].FoldBlocks(ctx, r.p, run.q, run.start, run.qStride, kv); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			return fmt.Errorf("rank %d: folding key blocks into query blocks %v: %w", r.rank, run.blocks, err)
		}
	}
	return nil
}

// countPairs adds key block j's pairs with the owned query blocks to the
// progress: visible ones as folded, hidden ones as skipped.
func (r *rankRun) countPairs(j int) {
	for _, run := range r.runs {
		for _, qi := range run.blocks {
			if c := r.pairs[qi].Pairs(j); c > 0 {
				r.prog.Pairs++
				r.prog.FLOPs += float64(c) * r.plan.PairFLOPs()
			} else {
				r.prog.Skipped++
			}
		}
	}
}

// group runs functions concurrently; the first error cancels the others.
type group struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
	mu     sync.Mutex
	err    error
}

func newGroup(ctx context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &group{cancel: cancel}, ctx
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.record(f())
	}()
}

func (g *group) record(err error) {
	if err == nil {
		return
	}
	g.mu.Lock()
	// Keep the cause, not the cancellation it caused in the others.
	if g.err == nil || (errors.Is(g.err, context.Canceled) && !errors.Is(err, context.Canceled)) {
		g.err = err
	}
	g.mu.Unlock()
	g.cancel()
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}

// ringSteps runs the W ring steps of a ring strategy over the plan's
// key/value schedule (r.route, DESIGN.md §8): at step s the rank folds the
// blocks of rank (r-s) mod W that it needs while, concurrently, it sends
// the blocks whose next rank folds them at step s+1 and receives the
// blocks it folds at step s+1, each from the rank before it on the block's
// route. A block the rank still has to forward waits in sends until the
// step before its receiver folds it.
func (r *rankRun) ringSteps(ctx context.Context) error {
	plan, tr := r.plan, r.route
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
