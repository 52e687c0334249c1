package coordinator

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The leader's scheduling round: read the log and the registry into a
// schedInput, let decide (scheduler.go, pure) say what to do, commit that
// through Raft, then look after the running jobs it left as they are
// (watchdog, progress events, assignments to re-send).

// tick is one scheduling round. It runs on the scheduler goroutine only,
// holds no lock across its effects, and contains panics: one per job (that
// job fails) and one for the round.
func (l *leader) tick() { l.guard("scheduling", l.schedule) }

func (l *leader) schedule() {
	c := l.c
	now := c.now()
	var jobs []*cpb.Job
	c.fsm.view(func(s *State) { jobs = s.Jobs(nil) })
	all := l.registry(now)
	live := map[string]*pb.Heartbeat{} // may take work: not leaving
	for id, hb := range all {
		if !hb.Leaving {
			live[id] = hb
		}
	}
	grace := now.Sub(l.since) < c.cfg.HeartbeatTimeout
	c.met.workersLive.Set(float64(len(live)))

	byID := map[string]*cpb.Job{}
	in := schedInput{Now: now, Policy: schedPolicy{MinRankTime: c.cfg.MinRankTime}, Grace: grace}
	for _, j := range jobs {
		if l.ctx.Err() != nil {
			return
		}
		switch j.State {
		case pb.JobState_JOB_STATE_QUEUED:
			in.Jobs = append(in.Jobs, queuedJob(j))
			byID[j.Id] = j
		case pb.JobState_JOB_STATE_RUNNING:
			var (
				sj schedJob
				ok bool
			)
			l.guardJob("scheduling", j, func() { sj, ok = l.runningJob(j) })
			if ok {
				in.Jobs = append(in.Jobs, sj)
				byID[j.Id] = j
			}
		}
	}
	in.Workers = l.schedWorkers(all, jobs, now)
	decided := map[string]bool{}
	for _, d := range decide(in) {
		if l.ctx.Err() != nil {
			return
		}
		j := byID[d.Job]
		decided[d.Job] = true
		l.guardJob("scheduling", j, func() { l.commit(j, d, all) })
	}
	for _, j := range jobs {
		if j.State == pb.JobState_JOB_STATE_RUNNING && byID[j.Id] != nil && !decided[j.Id] && l.ctx.Err() == nil {
			l.guardJob("scheduling", j, func() { l.keepRunning(j, live, grace, now) })
		}
	}
	l.maybeExpire(jobs, now)
	l.maybeSweep(now)
	l.forget()
}

// queuedJob is a queued job for decide.
func queuedJob(j *cpb.Job) schedJob {
	s := j.Spec
	sj := schedJob{
		ID: j.Id, Seq: j.Seq, Priority: s.GetPriority(), Queued: true, Work: jobFLOPs(s),
		MaxRanks: int(max(qBlocks(s), kBlocks(s))), Fixed: s.GetParallelism() > 0,
	}
	if sj.Fixed {
		sj.MaxRanks = min(sj.MaxRanks, int(s.GetParallelism()))
	}
	if d := s.GetDeadlineUnixMs(); d > 0 {
		sj.Deadline = time.UnixMilli(d)
	}
	return sj
}

// runningJob is a running job for decide, after what only the leader can
// do about it: a job whose blocks are all done is completed (or, after a
// verified forward pass of a forward+backward job, asks for its backward
// epoch); ok is false when decide has nothing to do with it.
func (l *leader) runningJob(j *cpb.Job) (sj schedJob, ok bool) {
	if h := l.c.hooks.Load(); h != nil && h.tick != nil {
		h.tick(j)
	}
	sj = queuedJob(j)
	sj.Queued, sj.Epoch = false, j.Epoch
	sj.BlocksDone, sj.BlocksAll = len(j.DoneBlocks), int(j.BlocksTotal)
	if left := j.BlocksTotal - int64(len(j.DoneBlocks)); left > 0 && j.BlocksTotal > 0 {
		// The blocks left of this pass (a pass that ended starts the next
		// with the whole job's figures).
		sj.Work *= float64(left) / float64(j.BlocksTotal)
		sj.MaxRanks = int(max(left, kBlocks(j.Spec)))
		if sj.Fixed {
			sj.MaxRanks = min(sj.MaxRanks, int(j.Spec.GetParallelism()))
		}
	}
	for r, rk := range j.Plan.GetRanks() {
		_, done := slices.BinarySearch(j.DoneRanks, int32(r))
		sj.Ranks = append(sj.Ranks, schedRank{Worker: rk.WorkerId, Done: done})
	}
	if int64(len(j.DoneBlocks)) == j.BlocksTotal {
		if forwardOfFB(j) && l.verified(j) {
			sj.Replan = true // the backward pass starts
			return sj, true
		}
		l.complete(j)
		return sj, false
	}
	l.locked(func() {
		rq, flagged := l.replan[j.Id]
		switch {
		case flagged && rq.epoch != j.Epoch:
			delete(l.replan, j.Id)
		case flagged:
			sj.Replan, sj.Reason = true, rq.reason
		}
	})
	return sj, true
}

// schedWorkers is the registry for decide: each worker's slots, the slots
// it holds (what the log gives it, or what its heartbeat lists if that is
// more: shards of canceled jobs or old epochs it has not dropped yet still
// take its slots), its speed, whether it is suspect, and when its ranks
// are expected to end (rankEnd).
func (l *leader) schedWorkers(all map[string]*pb.Heartbeat, jobs []*cpb.Job, now time.Time) []schedWorker {
	used := usedSlots(jobs)
	ends := map[string]time.Time{}
	type shard struct {
		job   string
		epoch uint64
		rank  int32
	}
	// Shards whose reports the log has committed are finished, even if the
	// worker's last heartbeat (sent before the ack) still lists them.
	reported := map[shard]bool{}
	l.c.fsm.view(func(s *State) {
		for _, hb := range all {
			for _, ref := range hb.Running {
				j := s.Job(ref.JobId)
				if j == nil || j.Epoch != ref.Epoch {
					continue
				}
				if _, done := slices.BinarySearch(j.DoneRanks, ref.Rank); done {
					reported[shard{ref.JobId, ref.Epoch, ref.Rank}] = true
				}
			}
		}
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, j := range jobs {
		if j.State != pb.JobState_JOB_STATE_RUNNING {
			continue
		}
		for r, rk := range j.Plan.GetRanks() {
			if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); done {
				continue
			}
			hb := all[rk.WorkerId]
			if hb == nil {
				continue
			}
			if end := l.rankEnd(shardKey{j.Id, j.Epoch, int32(r)}, j.Plan, rk, hb.Gflops, now); end.After(ends[rk.WorkerId]) {
				ends[rk.WorkerId] = end
			}
		}
	}
	out := make([]schedWorker, 0, len(all))
	for id, hb := range all {
		held := 0
		for _, ref := range hb.Running {
			if !reported[shard{ref.JobId, ref.Epoch, ref.Rank}] {
				held++
			}
		}
		until, suspect := l.suspect[id]
		out = append(out, schedWorker{
			ID: id, Slots: int(slotsOf(hb)), Used: max(used[id], held), Gflops: hb.Gflops,
			Leaving: hb.Leaving, Suspect: suspect && now.Before(until), BusyUntil: ends[id],
		})
	}
	slices.SortFunc(out, func(a, b schedWorker) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// rankEnd is when rank k (rk of plan p, on a worker of speed gflops) is
// expected to end: from the share of its steps left once its worker
// reported some, else from when the worker accepted it (now if not yet)
// plus its cost at that speed (1 GFLOP/s when unknown). l.mu is held.
func (l *leader) rankEnd(k shardKey, p *pb.Plan, rk *pb.RankPlan, gflops float64, now time.Time) time.Time {
	if !(gflops > 0) {
		gflops = defaultGflops
	}
	full := rk.GetCost() / (gflops * 1e9)
	if !(full >= 0) || full > maxProgressTimeout.Seconds() {
		full = maxProgressTimeout.Seconds()
	}
	if pr := l.progress[k]; pr != nil && pr.total > 0 && pr.steps > 0 {
		left := 1 - float64(min(pr.steps, pr.total))/float64(pr.total)
		return now.Add(time.Duration(full * left * float64(time.Second)))
	}
	start := now
	if st := l.sent[k]; st != nil && !st.since.IsZero() {
		start = st.since
	}
	return start.Add(time.Duration(full * float64(time.Second)))
}

// commit carries out one decision about job j.
func (l *leader) commit(j *cpb.Job, d decision, all map[string]*pb.Heartbeat) {
	switch d.Kind {
	case decideFail:
		l.finish(j, pb.JobState_JOB_STATE_FAILED, d.Reason)
	case decideWait:
		if j.State == pb.JobState_JOB_STATE_RUNNING {
			l.locked(func() { l.replan[j.Id] = replanReq{epoch: j.Epoch, reason: d.Reason} })
			l.log.Debug("re-plan waits for a free worker", "job", j.Id, "epoch", j.Epoch, "reason", d.Reason)
		}
	case decideEpoch:
		cands := make([]*pb.Heartbeat, 0, len(d.Workers))
		for _, id := range d.Workers {
			if hb := all[id]; hb != nil {
				cands = append(cands, hb)
			}
		}
		if len(cands) == 0 {
			return
		}
		if j.State == pb.JobState_JOB_STATE_QUEUED {
			l.startEpoch(j, cands, nil, "")
			return
		}
		l.replanJob(j, d.Reason, cands)
	}
}

// replanJob starts the next epoch of running job j over cands: the blocks
// not done yet (or the next pass).
func (l *leader) replanJob(j *cpb.Job, reason string, cands []*pb.Heartbeat) {
	c := l.c
	// Re-read: reports may have finished blocks since j was read.
	c.fsm.view(func(s *State) {
		if fresh := s.Job(j.Id); fresh != nil {
			j = fresh
		}
	})
	if j.State != pb.JobState_JOB_STATE_RUNNING {
		return
	}
	if int64(len(j.DoneBlocks)) == j.BlocksTotal && !(forwardOfFB(j) && l.verified(j)) {
		l.complete(j)
		return
	}
	if j.Epoch >= uint64(c.cfg.MaxEpochs) {
		l.finish(j, pb.JobState_JOB_STATE_FAILED, fmt.Sprintf("gave up after %d epochs; last: %s", j.Epoch, reason))
		return
	}
	var left []int
	for b := range int(j.BlocksTotal) {
		if _, done := slices.BinarySearch(j.DoneBlocks, int32(b)); !done {
			left = append(left, b)
		}
	}
	l.startEpoch(j, cands, left, reason)
}

// keepRunning looks after a running job decide left as it is: the
// watchdog (a stalled rank asks for a re-plan, which the next round,
// started at once, makes), its progress events, and the assignments to
// (re-)send: every rank not done whose worker is live and has not
// acknowledged this epoch in this leadership term, or whose heartbeats
// stopped listing it.
func (l *leader) keepRunning(j *cpb.Job, live map[string]*pb.Heartbeat, grace bool, now time.Time) {
	if !grace {
		if reason := l.watchdog(j, live, now); reason != "" {
			l.locked(func() { l.replan[j.Id] = replanReq{epoch: j.Epoch, reason: reason} })
			l.wake()
			return
		}
	}
	l.maybePublishProgress(j, now)
	for r, rk := range j.Plan.GetRanks() {
		if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); done {
			continue
		}
		if _, ok := live[rk.WorkerId]; !ok {
			continue // in the grace period: wait to hear from it
		}
		if l.needsSend(shardKey{j.Id, j.Epoch, int32(r)}, rk.WorkerId, now) {
			l.send(j, int32(r))
		}
	}
}
