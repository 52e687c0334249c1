package worker

// The worker's side of the control plane (pkg/transport's typed calls):
// heartbeats and the leader's abort lists, assignments, and the events of
// the jobs it holds; and the bookkeeping they drive (aborting, expiring
// and forgetting shards).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// heartbeatLoop heartbeats every interval until ctx ends, and forgets
// acknowledged shards older than the retention.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.safely("heartbeat", func() {
			w.heartbeat(ctx)
			w.expire(time.Now())
		})
	}
}

func (w *Worker) heartbeat(ctx context.Context) {
	w.mu.Lock()
	conn := w.conn
	w.mu.Unlock()
	if conn != nil {
		w.sendHeartbeat(ctx, conn, false)
	}
}

// sendHeartbeat sends one heartbeat as a request and applies the leader's
// abort list; the final one (leaving, nothing held) is only published.
func (w *Worker) sendHeartbeat(ctx context.Context, conn *transport.Conn, final bool) {
	w.mu.Lock()
	hb := &pb.Heartbeat{
		WorkerId:   w.cfg.ID,
		Slots:      int32(w.cfg.Slots),
		Gflops:     w.gflops,
		Version:    w.cfg.Version,
		Leaving:    w.draining,
		SentUnixMs: time.Now().UnixMilli(),
	}
	for _, s := range w.pendingLocked() {
		hb.Running = append(hb.Running, s.ref())
	}
	w.mu.Unlock()
	hb.MemoryBytes = memoryBytes()
	if final {
		if err := conn.PublishHeartbeat(hb); err != nil {
			w.log.Debug("final heartbeat", "err", err)
		}
		return
	}
	rctx, cancel := context.WithTimeout(ctx, min(w.cfg.RequestTimeout, w.cfg.HeartbeatInterval))
	defer cancel()
	ack, err := conn.SendHeartbeat(rctx, hb)
	if errors.Is(err, transport.ErrMalformed) || errors.Is(err, transport.ErrMessageTooLarge) {
		// Answered, but not with a heartbeat ack.
		w.met.heartbeats.WithLabelValues("acked").Inc()
		w.log.Warn("bad heartbeat ack", "err", err)
		return
	}
	if err != nil {
		w.met.heartbeats.WithLabelValues("unanswered").Inc()
		w.log.Debug("heartbeat unanswered", "err", err)
		return
	}
	w.met.heartbeats.WithLabelValues("acked").Inc()
	leader, aborts := checkHeartbeatAck(ack)
	for _, k := range aborts {
		w.abort(k, "leader: "+leader)
	}
}

// onAssign handles one Assignment request (transport decoded it; one that
// does not decode is refused there) and returns the AssignmentAck to send.
// A panic is contained (logged, counted) and answered "internal error".
func (w *Worker) onAssign(runCtx context.Context, a *pb.Assignment) (ack *pb.AssignmentAck) {
	defer func() {
		if r := recover(); r != nil {
			_ = w.recovered("assign", r)
			ack = &pb.AssignmentAck{Reason: "internal error"}
		}
	}()
	if h := w.hooks.handler; h != nil {
		h("assign")
	}
	ack = w.assign(runCtx, a)
	result := "accepted"
	if ack.GetReason() == alreadyHeld {
		result = "repeated"
	}
	if !ack.GetAccepted() {
		result = "rejected"
		w.log.Warn("assignment rejected", "job", a.GetJobId(), "epoch", a.GetEpoch(), "rank", a.GetRank(),
			"reason", ack.GetReason())
	}
	w.met.assignments.WithLabelValues(result).Inc()
	return ack
}

// alreadyHeld is the AssignmentAck reason of a re-issued assignment.
const alreadyHeld = "already held"

// assign applies an assignment: idempotent per (job, epoch, rank).
func (w *Worker) assign(runCtx context.Context, a *pb.Assignment) *pb.AssignmentAck {
	key := shardKey{job: a.GetJobId(), epoch: a.GetEpoch(), rank: a.GetRank()}
	w.mu.Lock()
	if s, ok := w.shards[key]; ok {
		// Re-issued (e.g. by a new leader): never restart; re-send a
		// finished shard's report.
		if s.finished() {
			w.deliverLocked(s)
		}
		w.mu.Unlock()
		return &pb.AssignmentAck{Accepted: true, Reason: alreadyHeld}
	}
	if latest := w.jobEpoch[key.job].epoch; key.epoch < latest {
		w.mu.Unlock()
		return &pb.AssignmentAck{Reason: fmt.Sprintf("stale epoch %d: job %s is in epoch %d here", key.epoch, key.job, latest)}
	}
	if w.draining {
		w.mu.Unlock()
		return &pb.AssignmentAck{Reason: "worker is leaving"}
	}
	w.mu.Unlock()

	t, err := newTaskLimits(a, w.cfg.ID, w.cfg.Limits)
	if err != nil {
		return &pb.AssignmentAck{Reason: err.Error()}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.shards[key]; ok { // raced with a duplicate
		return &pb.AssignmentAck{Accepted: true, Reason: alreadyHeld}
	}
	if w.draining {
		return &pb.AssignmentAck{Reason: "worker is leaving"}
	}
	if runCtx.Err() != nil {
		return &pb.AssignmentAck{Reason: "worker is stopping"}
	}
	// A newer epoch of a job supersedes every older shard of it here.
	if key.epoch > w.jobEpoch[key.job].epoch {
		for k, s := range w.shards {
			if k.job == key.job && k.epoch < key.epoch {
				w.abortLocked(s, ErrAborted, fmt.Sprintf("epoch %d assigned", key.epoch))
			}
		}
	}
	if busy := w.runningLocked(); busy >= w.cfg.Slots {
		return &pb.AssignmentAck{Reason: fmt.Sprintf("no free slot: %d of %d busy", busy, w.cfg.Slots)}
	}
	w.jobEpoch[key.job] = epochMark{epoch: key.epoch, at: time.Now()}
	w.startLocked(runCtx, key, t, a.GetDeadlineUnixMs())
	return &pb.AssignmentAck{Accepted: true}
}

func (w *Worker) runningLocked() int {
	n := 0
	for _, s := range w.shards {
		if !s.finished() {
			n++
		}
	}
	return n
}

// abort stops one shard (running or reporting) and forgets it.
func (w *Worker) abort(key shardKey, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s, ok := w.shards[key]; ok {
		w.abortLocked(s, ErrAborted, why)
	}
}

// abortJob stops every shard of job with an epoch below `below` (0: all).
func (w *Worker) abortJob(job string, below uint64, why string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, s := range w.shards {
		if k.job == job && (below == 0 || k.epoch < below) {
			w.abortLocked(s, ErrAborted, why)
		}
	}
	if below > w.jobEpoch[job].epoch {
		w.jobEpoch[job] = epochMark{epoch: below, at: time.Now()}
	}
}

// abortAll stops every shard with cause.
func (w *Worker) abortAll(cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.shards {
		w.abortLocked(s, cause, cause.Error())
	}
}

func (w *Worker) abortLocked(s *shardRun, cause error, why string) {
	if !s.settled() && !s.finished() {
		result := "aborted"
		if errors.Is(cause, ErrDrained) || errors.Is(cause, ErrStopped) {
			result = "abandoned"
		}
		w.met.shards.WithLabelValues(result).Inc()
		w.log.Info("shard stopped", "job", s.key.job, "epoch", s.key.epoch, "rank", s.key.rank, "why", why)
	}
	if !isClosed(s.computed) {
		w.unwinding[s] = struct{}{}
	}
	s.cancel(cause)
	delete(w.shards, s.key)
	w.releaseJobLocked(s.key.job)
}

// expire forgets acknowledged shards older than the retention.
func (w *Worker) expire(now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, s := range w.shards {
		if s.settled() && now.Sub(s.settledAt) > w.cfg.DoneRetention {
			s.cancel(ErrStopped)
			delete(w.shards, k)
			w.releaseJobLocked(k.job)
		}
	}
	for job, m := range w.jobEpoch {
		if now.Sub(m.at) > w.cfg.DoneRetention && !w.holdsJobLocked(job) {
			delete(w.jobEpoch, job)
		}
	}
}

func (w *Worker) holdsJobLocked(job string) bool {
	for k := range w.shards {
		if k.job == job {
			return true
		}
	}
	return false
}

// watchJobLocked subscribes to the job's event stream while the worker
// holds a shard of it: a newer epoch or the job's end aborts the shard at
// once, without waiting for the next heartbeat.
func (w *Worker) watchJobLocked(job string) {
	if _, ok := w.jobSubs[job]; ok || w.conn == nil {
		return
	}
	stop, err := w.conn.OnEvents(job, transport.ServeConfig{}, func(ev *pb.JobEvent) {
		w.safely("job events", func() { w.onJobEvent(job, ev) })
	})
	if err != nil {
		w.log.Warn("subscribing to job events", "job", job, "err", err)
		return
	}
	w.jobSubs[job] = stop
}

func (w *Worker) releaseJobLocked(job string) {
	if w.holdsJobLocked(job) {
		return
	}
	if stop, ok := w.jobSubs[job]; ok {
		_ = stop()
		delete(w.jobSubs, job)
	}
}

// onJobEvent applies one event of a job held here: the job's end or a
// newer epoch stops its shards.
func (w *Worker) onJobEvent(job string, ev *pb.JobEvent) {
	act, err := checkJobEvent(job, ev)
	if err != nil {
		w.log.Debug("ignoring job event", "job", job, "err", err)
		return
	}
	switch {
	case act.finished:
		w.abortJob(job, 0, "job finished: "+act.state.String())
	case act.epoch > 0:
		w.abortJob(job, act.epoch, fmt.Sprintf("epoch %d started", act.epoch))
	}
}
