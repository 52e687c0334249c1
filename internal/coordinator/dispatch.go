package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func (l *leader) startEpoch(j *cpb.Job, cands []*pb.Heartbeat, qblocks []int, reason string) {
	c := l.c
	if l.ctx.Err() != nil {
		return // stepping down: the next leader plans it
	}
	w := len(cands)
	if p := int(j.Spec.GetParallelism()); p > 0 {
		w = min(w, p)
	}
	mode, doneDQ, doneDKV, qblocks := nextPass(j, qblocks)
	nq := int(qBlocks(j.Spec))
	if qblocks != nil {
		nq = len(qblocks)
	}
	nk := int(BlockCount(&pb.JobSpec{N: j.Spec.GetNk(), Block: j.Spec.GetBlock()}))
	w = max(1, min(w, max(nq, nk)))
	cands = cands[:w]
	req, ae := specRequest(j.Spec, w, c.cfg.Limits)
	if ae != nil {
		l.finish(j, pb.JobState_JOB_STATE_FAILED, "cannot plan: "+ae.Error())
		return
	}
	req.QBlocks = qblocks
	// The store holds whole blocks and serves head ranges of the inputs
	// (transport's GetHeads): price head groups' reads of their heads and
	// the gather of their outputs to each block's writer.
	req.WholeBlocks, req.HeadReads = true, true
	if w2 := planHeads(j, &req, w); w2 != w { // heads.go
		w, cands, req.Ranks = w2, cands[:w2], w2
	}
	req.Weights = planWeights(cands)
	sp, err := l.plan(j, req)
	var pe *panicError
	switch {
	case errors.As(err, &pe):
		l.logPanic(pe, "job", j.Id)
		l.finish(j, pb.JobState_JOB_STATE_FAILED, pe.Error())
		return
	case errors.Is(err, errPlanTimeout):
		l.finish(j, pb.JobState_JOB_STATE_FAILED, fmt.Sprintf("cannot plan: planning took longer than %v (PlanTimeout)", c.cfg.PlanTimeout))
		return
	case l.ctx.Err() != nil:
		return // stepping down: the next leader plans it
	case err != nil:
		l.finish(j, pb.JobState_JOB_STATE_FAILED, "cannot plan: "+strings.TrimPrefix(err.Error(), shard.ErrInvalid.Error()+": "))
		return
	}
	ids := make([]string, len(cands))
	for i, hb := range cands {
		ids[i] = hb.WorkerId
	}
	plan := transport.PlanToPB(sp, ids)
	doneDQ, doneDKV = doneUnits(doneDQ, sp, sp.QBlockCount), doneUnits(doneDKV, sp, sp.KBlockCount) // heads.go
	epoch := j.Epoch + 1
	r, err := c.apply(cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: j.Id, Epoch: epoch, Plan: plan, UnixMs: c.now().UnixMilli(),
		Mode: mode, DoneDq: doneDQ, DoneDkv: doneDKV})
	if err != nil {
		l.log.Warn("start epoch not committed", "job", j.Id, "epoch", epoch, "err", err)
		return
	}
	if r.Err != nil {
		l.log.Debug("start epoch refused", "job", j.Id, "epoch", epoch, "err", r.Err)
		return
	}
	if reason != "" {
		c.met.replans.Inc()
	}
	l.mu.Lock()
	delete(l.replan, j.Id)
	l.mu.Unlock()
	l.log.Info("epoch started", "job", j.Id, "epoch", epoch, "ranks", len(plan.Ranks), "strategy", plan.Strategy,
		"blocks", nq, "imbalance", plan.Imbalance, "reason", reason)
	msg := fmt.Sprintf("epoch %d: %d ranks, %s", epoch, len(plan.Ranks), plan.Strategy)
	if ph := phaseName(r.Job); ph != "" {
		msg += ", " + ph + " pass"
	}
	if reason != "" {
		msg += "; re-planned: " + reason
	}
	l.publish(r.Job, pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED, -1, "", msg)
	for rank := range plan.Ranks {
		l.send(r.Job, int32(rank))
	}
}

// plan plans job j within Config.PlanTimeout (or until the leader steps
// down); see planWithin.
func (l *leader) plan(j *cpb.Job, req shard.Request) (*shard.Plan, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.c.cfg.PlanTimeout)
	defer cancel()
	var before func()
	if h := l.c.hooks.Load(); h != nil && h.plan != nil {
		before = func() { h.plan(proto.CloneOf(j)) }
	}
	return planWithin(ctx, req, before)
}

// planWeights are the candidates' speeds as plan weights. A worker whose
// speed is unknown (0 after sanitizeHeartbeat) weighs as the median of the
// known ones (1 when none is known).
func planWeights(cands []*pb.Heartbeat) []float64 {
	var known []float64
	for _, hb := range cands {
		if hb.Gflops > 0 {
			known = append(known, hb.Gflops)
		}
	}
	def := 1.0
	if len(known) > 0 {
		slices.Sort(known)
		def = known[len(known)/2]
	}
	w := make([]float64, len(cands))
	for i, hb := range cands {
		w[i] = hb.Gflops
		if !(w[i] > 0) {
			w[i] = def
		}
	}
	return w
}

// assignment is what rank `rank` of j's current epoch needs to run.
func (l *leader) assignment(j *cpb.Job, rank int32) *pb.Assignment {
	s := j.Spec
	params := transport.ParamsFromSpec(s)
	params.Mode = pb.JobMode_JOB_MODE_FORWARD // the pass of this epoch, below
	a := &pb.Assignment{
		JobId: j.Id, Epoch: j.Epoch, Rank: rank, Size: int32(len(j.Plan.GetRanks())), Plan: j.Plan,
		Params: params,
		Bucket: transport.TenantBucket(l.c.bucket(), j.Owner), InputRef: inputRef(j), OutputRef: j.Id,
		DeadlineUnixMs: s.DeadlineUnixMs, LeaderId: l.c.cfg.NodeID, Term: l.term,
	}
	switch {
	case inBackward(j):
		a.Params.Mode, a.DoneDq, a.DoneDkv = pb.JobMode_JOB_MODE_BACKWARD, j.EpochDoneDq, j.EpochDoneDkv
		if s.GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD {
			a.OLseRef = j.Id // the forward phase wrote o and lse there
		}
	case forwardOfFB(j):
		a.Params.WantLse = true // the backward pass reads lse
	}
	return a
}

func inputRef(j *cpb.Job) string { return specInputRef(j.Spec) }

// send delivers one assignment (asynchronously). A worker that does not
// accept it is excluded from plans for a while and the job re-planned.
func (l *leader) send(j *cpb.Job, rank int32) {
	k := shardKey{j.Id, j.Epoch, rank}
	worker := j.Plan.Ranks[rank].WorkerId
	l.mu.Lock()
	st := &sendState{at: l.c.now(), inflight: true}
	if old := l.sent[k]; old != nil {
		st.since = old.since
	}
	l.sent[k] = st
	l.mu.Unlock()
	a := l.assignment(j, rank)
	if !l.enter() {
		return
	}
	go func() {
		defer l.wg.Done()
		l.guard("assigning", func() { l.delivered(k, worker, l.request(worker, a)) })
	}()
}

// delivered records the outcome of sending assignment k to worker.
func (l *leader) delivered(k shardKey, worker string, err error) {
	var known, stopping bool
	now := l.c.now()
	l.locked(func() {
		st := l.sent[k]
		if known = st != nil; !known {
			return
		}
		st.inflight = false
		if err == nil {
			st.acked, st.at = true, now
			if st.since.IsZero() {
				st.since = now
			}
			return
		}
		if stopping = l.ctx.Err() != nil; !stopping {
			delete(l.sent, k)
			l.suspect[worker] = now.Add(l.c.cfg.HeartbeatTimeout)
			l.replan[k.job] = replanReq{epoch: k.epoch, reason: fmt.Sprintf("worker %s did not accept rank %d: %v", worker, k.rank, err)}
		}
	})
	if !known {
		return
	}
	if err == nil {
		l.c.met.assignments.WithLabelValues("accepted").Inc()
		return
	}
	l.c.met.assignments.WithLabelValues("failed").Inc()
	if stopping {
		return
	}
	l.log.Warn("assignment not accepted; re-planning without the worker", "job", k.job, "epoch", k.epoch, "rank", k.rank, "worker", worker, "err", err)
	l.wake()
}

// request sends assignment a to worker and waits (AssignTimeout) for its
// answer: nil when accepted.
func (l *leader) request(worker string, a *pb.Assignment) error {
	ctx, cancel := context.WithTimeout(l.ctx, l.c.cfg.AssignTimeout)
	defer cancel()
	ack, err := l.c.conn.Assign(ctx, worker, a)
	if err != nil {
		return err
	}
	return assignmentError(ack)
}

// assignmentError reads a worker's answer to an assignment: nil when
// accepted, else an error carrying the worker's reason (cut to
// maxReasonBytes: it may end up in a job's reason).
func assignmentError(ack *pb.AssignmentAck) error {
	if !ack.GetAccepted() {
		return fmt.Errorf("rejected: %s", truncate(ack.GetReason(), maxReasonBytes))
	}
	return nil
}

// finish commits a job's end (SUCCEEDED, FAILED) and announces it.
func (l *leader) finish(j *cpb.Job, st pb.JobState, reason string) {
	c := l.c
	now := c.now().UnixMilli()
	var (
		r   *Result
		err error
	)
	switch st {
	case pb.JobState_JOB_STATE_SUCCEEDED:
		r, err = c.apply(cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: j.Id, UnixMs: now})
	case pb.JobState_JOB_STATE_FAILED:
		r, err = c.apply(cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: j.Id, Reason: reason, UnixMs: now})
	}
	if err != nil {
		l.log.Warn("finishing job not committed", "job", j.Id, "state", st, "err", err)
		return
	}
	if r.Err != nil || r.Existing {
		return
	}
	l.finished(r.Job)
}

// finished records metrics and publishes the FINISHED event of a job that
// just reached a final state.
func (l *leader) finished(j *cpb.Job) {
	l.log.Info("job finished", "job", j.Id, "state", j.State, "epochs", j.Epoch, "reason", j.Reason)
	if j.FinishedUnixMs > 0 && j.CreatedUnixMs > 0 {
		l.c.met.jobDuration.WithLabelValues(stateName(j.State)).Observe(float64(j.FinishedUnixMs-j.CreatedUnixMs) / 1000)
	}
	l.finalProgress(j)
	l.publish(j, pb.JobEventType_JOB_EVENT_TYPE_FINISHED, -1, "", j.Reason)
}

func (l *leader) publish(j *cpb.Job, typ pb.JobEventType, rank int32, worker, msg string) {
	ev := &pb.JobEvent{
		Type: typ, JobId: j.Id, Epoch: j.Epoch, State: j.State, BlocksDone: int64(len(j.DoneBlocks)),
		BlocksTotal: j.BlocksTotal, Rank: rank, WorkerId: worker, Message: msg, UnixMs: l.c.now().UnixMilli(),
	}
	if err := l.c.conn.PublishTenantEvent(j.Owner, ev); err != nil {
		l.log.Debug("publish event failed", "job", j.Id, "err", err)
	}
}

// maybeExpire runs expire in the background unless it already runs: its
// store deletes may take long (a store down times out after 30 s per job)

func (l *leader) needsSend(k shardKey, worker string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.sent[k]
	if st == nil {
		return true
	}
	if st.inflight || !st.acked {
		return false
	}
	w := l.workers[worker]
	if w == nil || w.seen.Sub(st.at) < l.c.cfg.HeartbeatTimeout {
		return false
	}
	for _, ref := range w.hb.Running {
		if ref.JobId == k.job && ref.Epoch == k.epoch && ref.Rank == k.rank {
			return false
		}
	}
	// The worker has been heartbeating without this shard for a while:
	// it lost it (restarted?). Assignments are idempotent; send again.
	return true
}

// progressStepFactor: a rank may go this many times its plan's expected
