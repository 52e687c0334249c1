package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// shardKey names one rank of one job epoch.
type shardKey struct {
	job   string
	epoch uint64
	rank  int32
}

func (k shardKey) ref() *pb.ShardRef {
	return &pb.ShardRef{JobId: k.job, Epoch: k.epoch, Rank: k.rank}
}

// ref is the shard's ShardRef with its progress, as heartbeats list it.
func (s *shardRun) ref() *pb.ShardRef {
	r := s.key.ref()
	r.StepsDone, r.StepsTotal = s.prog.counts()
	return r
}

func keyOf(r *pb.ShardRef) shardKey {
	return shardKey{job: r.GetJobId(), epoch: r.GetEpoch(), rank: r.GetRank()}
}

func (k shardKey) String() string { return fmt.Sprintf("%s/%d/%d", k.job, k.epoch, k.rank) }

// shardRun is one rank held by the worker: computing, then reporting, then
// settled (the leader answered the report) until it expires.
type shardRun struct {
	key  shardKey
	task *task
	// ctx lives until the shard is aborted, abandoned or forgotten; the
	// computation also stops at the job's deadline (unix ms, 0 = none).
	ctx      context.Context
	cancel   context.CancelCauseFunc
	deadline int64
	// computed is closed when the computation has returned.
	computed chan struct{}
	// prog counts the rank's work as it finishes (heartbeats carry it).
	prog progress

	// Guarded by Worker.mu.
	report     *pb.Report // set when the computation ended (done or failed)
	acked      bool
	settledAt  time.Time
	delivering bool
}

// finished: the computation ended and the report exists.
func (s *shardRun) finished() bool { return s.report != nil }

// settled: a leader answered the report with a final status.
func (s *shardRun) settled() bool { return s.acked }

// startLocked registers and starts a shard.
func (w *Worker) startLocked(runCtx context.Context, key shardKey, t *task, deadlineMs int64) {
	ctx, cancel := context.WithCancelCause(runCtx)
	s := &shardRun{key: key, task: t, ctx: ctx, cancel: cancel, deadline: deadlineMs, computed: make(chan struct{})}
	// Shards stopped a moment ago may still be unwinding (a rank notices its
	// context after the block pair it is folding): start computing only once
	// they have let go of their memory, so a worker never holds more than
	// Slots shards.
	var unwinding []<-chan struct{}
	for o := range w.unwinding {
		unwinding = append(unwinding, o.computed)
	}
	w.shards[key] = s
	w.watchJobLocked(key.job)
	w.met.shardsRunning.Inc()
	w.log.Info("shard started", "job", key.job, "epoch", key.epoch, "rank", key.rank, "ranks", len(t.plan.Ranks),
		"strategy", t.plan.Strategy, "q_blocks", len(t.plan.Ranks[t.rank].QBlocks), "kv_blocks", len(t.plan.Ranks[t.rank].KVBlocks))
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for _, ch := range unwinding {
			select {
			case <-ch:
			case <-ctx.Done():
			}
		}
		ok := false
		w.safely("shard "+key.String(), func() { w.execute(s); ok = true })
		if !ok {
			w.executePanicked(s)
		}
	}()
}

// execute computes the shard and hands its report to delivery.
func (w *Worker) execute(s *shardRun) {
	ctx := s.ctx
	if s.deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.UnixMilli(s.deadline))
		defer cancel()
	}
	start := time.Now()
	done, err := w.computeContained(ctx, s.task, &s.prog)
	w.met.shardsRunning.Dec()
	elapsed := time.Since(start)

	w.mu.Lock()
	defer w.mu.Unlock()
	close(s.computed)
	delete(w.unwinding, s)
	cause := context.Cause(s.ctx)
	if errors.Is(cause, ErrAborted) || errors.Is(cause, ErrDrained) || errors.Is(cause, ErrStopped) {
		// Stopped on purpose: the leader does not want this report.
		return
	}
	if cur := w.shards[s.key]; cur != s {
		return
	}
	r := &pb.Report{WorkerId: w.cfg.ID, JobId: s.key.job, Epoch: s.key.epoch, Rank: s.key.rank}
	if err != nil {
		f := failure(err)
		if s.ctx.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			f = &pb.ShardFailed{Reason: "job deadline passed: " + err.Error(), Block: -1}
		}
		r.Result = &pb.Report_Failed{Failed: f}
		w.met.shards.WithLabelValues("failed").Inc()
		w.log.Warn("shard failed", "job", s.key.job, "epoch", s.key.epoch, "rank", s.key.rank,
			"fatal", f.GetFatal(), "block", f.GetBlock(), "err", err)
	} else {
		done.ComputeMs = elapsed.Milliseconds()
		r.Result = &pb.Report_Done{Done: done}
		w.met.shards.WithLabelValues("done").Inc()
		w.met.lastShardGFLOP.Set(done.GetGflops())
		w.log.Info("shard done", "job", s.key.job, "epoch", s.key.epoch, "rank", s.key.rank,
			"blocks", len(done.GetBlocks()), "ms", elapsed.Milliseconds(), "gflops", fmt.Sprintf("%.1f", done.GetGflops()))
	}
	s.report = r
	w.deliverLocked(s)
}

// executePanicked settles a shard whose goroutine panicked outside its
// (contained) computation: the shard stops counting as computing, and
// unless it was stopped on purpose it reports FAILED, not fatal, so its
// slot frees and the leader re-plans.
func (w *Worker) executePanicked(s *shardRun) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !isClosed(s.computed) {
		close(s.computed)
		w.met.shardsRunning.Dec()
		delete(w.unwinding, s)
	}
	if s.report != nil || s.ctx.Err() != nil || w.shards[s.key] != s {
		return
	}
	s.report = &pb.Report{WorkerId: w.cfg.ID, JobId: s.key.job, Epoch: s.key.epoch, Rank: s.key.rank,
		Result: &pb.Report_Failed{Failed: &pb.ShardFailed{Reason: "internal error: the shard's goroutine panicked (stack in the worker's log)", Block: -1}}}
	w.met.shards.WithLabelValues("failed").Inc()
	w.deliverLocked(s)
}

// deliverLocked starts (re)sending s's report unless it is being sent.
func (w *Worker) deliverLocked(s *shardRun) {
	if s.delivering || s.report == nil || s.ctx.Err() != nil {
		return
	}
	s.delivering, s.acked = true, false
	report := s.report
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ok := false
		w.safely("report delivery "+s.key.String(), func() { w.deliver(s, report); ok = true })
		if !ok {
			// Let a re-issued assignment send the report again.
			w.mu.Lock()
			s.delivering = false
			w.mu.Unlock()
		}
	}()
}

// deliver sends the report until a leader answers ACCEPTED, DUPLICATE,
// STALE or REJECTED, backing off (with jitter) on RETRY, no responders and
// timeouts, until the shard is stopped.
func (w *Worker) deliver(s *shardRun, report *pb.Report) {
	wait := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		w.mu.Lock()
		conn := w.conn
		w.mu.Unlock()
		status, msg := w.sendReport(s.ctx, conn, report)
		w.met.reports.WithLabelValues(status).Inc()
		switch status {
		case "accepted", "duplicate", "stale", "rejected":
			w.mu.Lock()
			s.acked, s.settledAt, s.delivering = true, time.Now(), false
			w.mu.Unlock()
			lvl := w.log.Info
			if status == "rejected" {
				lvl = w.log.Warn
			}
			lvl("report answered", "job", s.key.job, "epoch", s.key.epoch, "rank", s.key.rank,
				"status", status, "message", msg, "attempts", attempt)
			return
		}
		w.log.Debug("report not acknowledged, retrying", "job", s.key.job, "epoch", s.key.epoch, "rank", s.key.rank,
			"status", status, "message", msg, "attempt", attempt)
		d := wait/2 + rand.N(wait/2+1)
		wait = min(2*wait, w.cfg.ReportBackoffMax)
		select {
		case <-s.ctx.Done():
			w.mu.Lock()
			s.delivering = false
			w.mu.Unlock()
			return
		case <-time.After(d):
		}
	}
}

// sendReport sends one report attempt and classifies the answer.
func (w *Worker) sendReport(ctx context.Context, conn *transport.Conn, report *pb.Report) (status, message string) {
	if conn == nil {
		return "error", "not connected"
	}
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	return reportStatus(conn.Report(rctx, report))
}
