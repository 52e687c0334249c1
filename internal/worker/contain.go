package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"

	"github.com/ringattn/ringattn/pkg/shard"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// errInternal is matched by the error of a computation that panicked (a
// *panicError): the shard reports FAILED with the reason "internal error:
// ...", not fatal, so the leader re-plans the job instead of failing it.
var errInternal = errors.New("internal error")

// panicError is a recovered panic.
type panicError struct {
	where string
	value any
}

func (e *panicError) Error() string {
	return fmt.Sprintf("internal error: panic in %s: %v", e.where, e.value)
}

func (e *panicError) Is(target error) bool { return target == errInternal }

// recovered logs a recovered panic with its stack, counts it in
// ringattn_worker_panics_total and returns it as a *panicError.
func (w *Worker) recovered(where string, r any) error {
	w.met.panics.Inc()
	w.log.Error("panic recovered", "where", where, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return &panicError{where: where, value: r}
}

// contain, deferred directly, turns a panic of the function deferring it
// into *err (see recovered).
func (w *Worker) contain(where string, err *error) {
	if r := recover(); r != nil {
		*err = w.recovered(where, r)
	}
}

// safely runs f, containing a panic (logged and counted): every NATS
// handler and background loop of the worker runs through it, so one bad
// message or bug costs that message, not the process.
func (w *Worker) safely(where string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			_ = w.recovered(where, r)
		}
	}()
	if h := w.hooks.handler; h != nil {
		h(where)
	}
	f()
}

// progress counts a rank's units of work (DESIGN §5 progress watchdog):
// done grows by one per block read from the store (inputs, fallbacks and
// a layer's weights), per output block written and per ring step folded; total is the number expected (an
// estimate: fallbacks fetch more). Heartbeats carry both.
type progress struct {
	done, total atomic.Int64
}

// counts returns (done, total), total never below done.
func (p *progress) counts() (int64, int64) {
	d, t := p.done.Load(), p.total.Load()
	return d, max(d, t)
}

// units is the work a rank of t expects to do in progress units: its ring
// steps, its query blocks and initial key/value blocks fetched (k and v
// apart; a layer reads its x blocks instead, after its weights), and its
// output blocks written.
//
// A forward rank's ring steps also count the visible (query block, key
// block) pairs they fold (pairUnits), so that progress follows the
// arithmetic: a step is worth 1 plus its pairs, a block read or written 1.
func (t *task) units() int64 {
	rk := t.plan.Ranks[t.rank]
	q, kv := int64(len(rk.QBlocks)), int64(len(rk.KVBlocks))
	steps := int64(t.plan.Steps)
	switch {
	case t.mode == pb.JobMode_JOB_MODE_BACKWARD:
		// q, do, o, lse by query block, k, v by key block; dq and dk/dv written.
		n := steps + 5*q + 3*kv
		if t.kind == pb.JobKind_JOB_KIND_MHA {
			// x instead of q, k, v (q's and the key blocks', often the
			// same), dy for do; the weights first.
			n += 4 - kv
			if t.bias {
				n += 4
			}
		}
		return n
	case t.kind == pb.JobKind_JOB_KIND_MHA:
		n := steps + 2*q + kv + 4 + pairUnits(t.plan, t.rank) // x blocks: q's and the initial kv's, often the same
		if t.bias {
			n += 4
		}
		return n
	}
	return steps + 2*q + 2*kv + pairUnits(t.plan, t.rank)
}

// pairUnits is the number of visible (query block, key block) pairs rank
// folds in a forward pass of plan, counted as ringattn's engine counts its
// Progress.TotalPairs: each owned query block with each key block some
// rank holds (split-KV: this rank) that the mask leaves some pair of.
func pairUnits(plan *shard.Plan, rank int) int64 {
	if plan.Groups() > 1 || plan.Strategy == shard.Heads {
		// A head-group plan: the rank's group plan (units are per group).
		g := plan.Group(rank)
		rank -= g * plan.GroupRanks()
		plan = plan.GroupPlan(g)
	}
	holder := make([]int32, plan.KBlockCount)
	for kj := range holder {
		holder[kj] = -1
	}
	for h, rk := range plan.Ranks {
		for _, kj := range rk.KVBlocks {
			holder[kj] = int32(h)
		}
	}
	var n int64
	for _, qi := range plan.Ranks[rank].QBlocks {
		bp := plan.BlockPairs(qi)
		if bp == nil {
			continue
		}
		first, last := bp.Span()
		for kj := first; kj < last; kj++ {
			h := holder[kj]
			if h < 0 || (plan.Strategy == shard.SplitKV && int(h) != rank) || bp.Pairs(kj) == 0 {
				continue
			}
			n++
		}
	}
	return n
}

// guardedSource contains a panic of the rank's Source (it runs on the
// engine's goroutines, which the worker does not own).
type guardedSource struct {
	src ringattn.Source
	w   *Worker
}

func (g guardedSource) Fetch(ctx context.Context, tensor string, block int) (x []float32, err error) {
	defer g.w.contain("fetching "+tensor+" block", &err)
	return g.src.Fetch(ctx, tensor, block)
}

// guardedHeadSource is a guardedSource over a ringattn.HeadFetcher, which
// it is too (so ranks of head plans read their heads only).
type guardedHeadSource struct{ guardedSource }

func (g guardedHeadSource) FetchHeads(ctx context.Context, tensor string, block, h0, h1 int) (x []float32, err error) {
	defer g.w.contain("fetching heads of a "+tensor+" block", &err)
	return g.src.(ringattn.HeadFetcher).FetchHeads(ctx, tensor, block, h0, h1)
}

// guardedFullSource is a guardedHeadSource over a ringattn.RunSource,
// which it is too.
type guardedFullSource struct{ guardedHeadSource }

func (g guardedFullSource) FetchRun(ctx context.Context, tensor string, first, count int) (x []float32, err error) {
	defer g.w.contain("fetching a run of "+tensor+" blocks", &err)
	return g.src.(ringattn.RunSource).FetchRun(ctx, tensor, first, count)
}

// guard returns src with its panics contained, a HeadFetcher when src is,
// and a RunSource when src is both.
func (w *Worker) guard(src ringattn.Source) ringattn.Source {
	g := guardedSource{src: src, w: w}
	if _, ok := src.(ringattn.HeadFetcher); ok {
		if _, ok := src.(ringattn.RunSource); ok {
			return guardedFullSource{guardedHeadSource{g}}
		}
		return guardedHeadSource{g}
	}
	return g
}

// guardSink returns sink with its panics contained and its blocks
// counted in prog, a ringattn.RunSink when sink is.
func (w *Worker) guardSink(sink ringattn.Sink, prog *progress) ringattn.Sink {
	g := guardedSink{sink: sink, w: w, prog: prog}
	if _, ok := sink.(ringattn.RunSink); ok {
		return guardedRunSink{g}
	}
	return g
}

// guardedRunSink is a guardedSink over a ringattn.RunSink, which it is too.
type guardedRunSink struct{ guardedSink }

func (g guardedRunSink) PutRun(ctx context.Context, first, count int, o, lse []float32) (err error) {
	defer g.w.contain("writing a run of output blocks", &err)
	if err = g.sink.(ringattn.RunSink).PutRun(ctx, first, count, o, lse); err == nil {
		g.prog.done.Add(int64(count))
	}
	return err
}

// guardedSink contains a panic of the rank's Sink and counts blocks written.
type guardedSink struct {
	sink ringattn.Sink
	w    *Worker
	prog *progress
}

func (g guardedSink) Put(ctx context.Context, block int, o, lse []float32) (err error) {
	defer g.w.contain("writing an output block", &err)
	if err = g.sink.Put(ctx, block, o, lse); err == nil {
		g.prog.done.Add(1)
	}
	return err
}

// guardedGradSink contains a panic of a backward rank's GradSink and
// counts gradient blocks written.
type guardedGradSink struct {
	sink ringattn.GradSink
	w    *Worker
	prog *progress
}

func (g guardedGradSink) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) (err error) {
	defer g.w.contain("writing a dq block", &err)
	if err = g.sink.PutDQ(ctx, epoch, block, dq); err == nil {
		g.prog.done.Add(1)
	}
	return err
}

func (g guardedGradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) (err error) {
	defer g.w.contain("writing a dk/dv block", &err)
	if err = g.sink.PutDKV(ctx, epoch, block, dk, dv); err == nil {
		g.prog.done.Add(1)
	}
	return err
}

// guardedRing contains a panic of the rank's ring calls.
type guardedRing struct {
	ringattn.Ring
	w *Worker
}

func (g guardedRing) Send(ctx context.Context, to int, f ringattn.Frame) (err error) {
	defer g.w.contain("ring send", &err)
	return g.Ring.Send(ctx, to, f)
}

func (g guardedRing) Recv(ctx context.Context, from int, key ringattn.Key) (f ringattn.Frame, err error) {
	defer g.w.contain("ring receive", &err)
	return g.Ring.Recv(ctx, from, key)
}
