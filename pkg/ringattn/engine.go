package ringattn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"

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
// Head-group plans (IsHeadPlan) run the rank's group plan over its heads
// only (engine_heads.go); their Sink must implement HeadSink.
//
// Errors: a dead peer (ErrPeerGone from the ring) or the end of ctx stops
// the rank promptly — at the latest after the block pair being folded — and
// RunRank returns only after every goroutine it started has exited.
func RunRank(ctx context.Context, cfg RankConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if IsHeadPlan(cfg.Plan) {
		return runHeadRank(ctx, cfg) // engine_heads.go
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
