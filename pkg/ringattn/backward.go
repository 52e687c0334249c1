package ringattn

import (
	"context"
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
	q, do       []float32 // head i from row i·qStride (views of the Source, or contiguous)
	qStride     int
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
	// scratch holds a step's key/value set when it is copied, and its
	// dK/dV when they are copied out (contribSet), reused across steps.
	scratch [4][]float32
	// ledger, on an in-process ring, records the contribution buffers
	// lent to other ranks as views, so that consumed ones are reused
	// (gradbufs.go); nil elsewhere.
	ledger *gradLedger
}

// gradPair is the dK, dV of one key/value block: contiguous [B, Hkv, n,
// D], or, when stride is not 0, views with head i from row i·stride (a
// block's part of a set's gradients, passed only over FrameSharer rings).
type gradPair struct {
	dk, dv []float32
	stride int
}

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
	if IsHeadPlan(cfg.Plan) {
		return runHeadBackward(ctx, cfg) // backward_heads.go
	}
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
	// Views: the rank reads its query rows, O and its runs of consecutive
	// key/value blocks in place when the Source lends them, and holds
	// key/value blocks as views (forwarded by reference on a FrameSharer
	// ring); dK and dV go to buffers of their own (BackwardBlockTo), passed
	// on as views of a set's buffer on a FrameSharer ring (contribSet).
	rr.views, _ = cfg.Source.(ViewSource)
	if fs, ok := cfg.Ring.(FrameSharer); ok {
		rr.share = fs.SharesFrames()
	}
	rr.owned = cfg.Plan.Ranks[rr.rank].QBlocks
	rr.prog = Progress{Rank: rr.rank, Steps: cfg.Plan.Steps}
	r := &bwdRun{rankRun: rr, bcfg: cfg,
		doneDQ: make([]bool, cfg.Plan.QBlockCount), doneDKV: make([]bool, cfg.Plan.KBlockCount)}
	if l, ok := cfg.Ring.(ledgered); ok && rr.share {
		r.ledger = l.gradLedger()
	}
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
