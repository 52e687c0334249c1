package coordinator

import (
	"context"
	"fmt"
	"slices"
	"time"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// step time without progress (but at least ProgressTimeout).
const progressStepFactor = 10

// maxProgressTimeout caps the computed progress timeout.
const maxProgressTimeout = 24 * time.Hour

// progressTimeout is how long rank rk of plan p may go without its
// steps_done changing: max(floor, progressStepFactor × the expected time of
// one step: the rank's cost over the plan's steps at the worker's speed,
// taken as 1 GFLOP/s when unknown).
func progressTimeout(floor time.Duration, p *pb.Plan, rk *pb.RankPlan, gflops float64) time.Duration {
	if !(gflops > 0) {
		gflops = 1
	}
	step := rk.GetCost() / float64(max(p.GetSteps(), 1)) / (gflops * 1e9) // seconds
	d := progressStepFactor * step
	if !(d >= 0) || d > maxProgressTimeout.Seconds() {
		if d > 0 {
			return maxProgressTimeout
		}
		return floor
	}
	return max(floor, time.Duration(d*float64(time.Second)))
}

// watchdog returns why j's epoch must be re-planned because a rank stopped
// making progress ("" if none did): its worker heartbeats but the rank's
// steps_done has not changed (or was never listed) for longer than its
// progress timeout since the assignment was first acknowledged. In a ring
// the ranks after a stuck one soon stall too, waiting for its blocks, so
// the rank blamed is the one idle longest (it stopped first); only its
// worker is marked suspect, like any other loss.
func (l *leader) watchdog(j *cpb.Job, live map[string]*pb.Heartbeat, now time.Time) string {
	blame, worst := -1, time.Duration(0)
	var worstLimit time.Duration
	l.locked(func() { blame, worst, worstLimit = l.stalledRank(j, live, now) })
	if blame < 0 {
		return ""
	}
	worker := j.Plan.Ranks[blame].WorkerId
	l.c.met.stalls.Inc()
	l.log.Warn("rank made no progress; re-planning without its worker", "job", j.Id, "epoch", j.Epoch, "rank", blame,
		"worker", worker, "idle", worst, "timeout", worstLimit)
	return fmt.Sprintf("rank %d on worker %s made no progress for %v", blame, worker, worst.Round(time.Millisecond))
}

// stalledRank finds the rank of j stalled longest (-1: none) and marks
// its worker suspect. l.mu is held.
func (l *leader) stalledRank(j *cpb.Job, live map[string]*pb.Heartbeat, now time.Time) (blame int, worst, worstLimit time.Duration) {
	blame = -1
	for r, rk := range j.Plan.GetRanks() {
		if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); done {
			continue
		}
		hb, ok := live[rk.WorkerId]
		if !ok {
			continue
		}
		st := l.sent[shardKey{j.Id, j.Epoch, int32(r)}]
		if st == nil || st.since.IsZero() {
			continue
		}
		last := st.since
		if p := l.progress[shardKey{j.Id, j.Epoch, int32(r)}]; p != nil && p.at.After(last) {
			last = p.at
		}
		idle := now.Sub(last)
		limit := progressTimeout(l.c.cfg.ProgressTimeout, j.Plan, rk, hb.Gflops)
		if idle > limit && idle > worst {
			blame, worst, worstLimit = r, idle, limit
		}
	}
	if blame >= 0 {
		l.suspect[j.Plan.Ranks[blame].WorkerId] = now.Add(l.c.cfg.HeartbeatTimeout)
	}
	return blame, worst, worstLimit
}

// candidates returns the live workers with a free slot, fastest first,

// and must not hold up scheduling.
func (l *leader) maybeExpire(jobs []*cpb.Job, now time.Time) {
	l.mu.Lock()
	busy := l.expiring
	l.expiring = true
	l.mu.Unlock()
	if busy {
		return
	}
	if !l.enter() {
		l.mu.Lock()
		l.expiring = false
		l.mu.Unlock()
		return
	}
	go func() {
		defer l.wg.Done()
		l.guard("expiring", func() { l.expire(jobs, now) })
		l.mu.Lock()
		l.expiring = false
		l.mu.Unlock()
	}()
}

// expire deletes the tensors and records of jobs finished longer than
// JobTTL ago and purges tombstones older than TombstoneTTL.
func (l *leader) expire(jobs []*cpb.Job, now time.Time) {
	c := l.c
	cmd := &cpb.Expire{UnixMs: now.UnixMilli()}
	refs := map[inputKey]int{} // input namespaces (of a tenant's bucket) still used by live jobs
	for _, j := range jobs {
		if j.State != pb.JobState_JOB_STATE_EXPIRED {
			refs[inputKey{j.Owner, inputRef(j)}]++
		}
	}
	for _, j := range jobs {
		if len(cmd.JobIds)+len(cmd.PurgeIds) >= 500 {
			break
		}
		switch {
		case j.State == pb.JobState_JOB_STATE_EXPIRED:
			if now.Sub(time.UnixMilli(j.ExpiredUnixMs)) >= c.cfg.TombstoneTTL {
				cmd.PurgeIds = append(cmd.PurgeIds, j.Id)
			}
		case Terminal(j.State):
			if now.Sub(time.UnixMilli(j.FinishedUnixMs)) < c.cfg.JobTTL {
				continue
			}
			l.mu.Lock()
			next := l.deleteAt[j.Id]
			l.mu.Unlock()
			if now.Before(next) {
				continue
			}
			if err := l.deleteTensors(j, refs[inputKey{j.Owner, inputRef(j)}] <= 1); err != nil {
				l.log.Warn("deleting expired job's tensors failed; will retry", "job", j.Id, "err", err)
				l.mu.Lock()
				l.deleteAt[j.Id] = now.Add(min(10*time.Second, max(c.cfg.JobTTL, c.cfg.SchedulerInterval)))
				l.mu.Unlock()
				continue
			}
			refs[inputKey{j.Owner, inputRef(j)}]--
			cmd.JobIds = append(cmd.JobIds, j.Id)
		}
	}
	if len(cmd.JobIds)+len(cmd.PurgeIds) == 0 {
		return
	}
	if _, err := c.apply(cpb.CommandType_COMMAND_TYPE_EXPIRE, cmd); err != nil {
		l.log.Warn("expire not committed", "err", err)
		return
	}
	l.mu.Lock()
	for _, id := range cmd.JobIds {
		delete(l.deleteAt, id)
	}
	l.mu.Unlock()
	l.log.Info("jobs expired", "expired", len(cmd.JobIds), "purged", len(cmd.PurgeIds))
}

// deleteTensors deletes a job's outputs and, when no other job reads
// them, its inputs, in its owner's bucket. Deletion is idempotent: a new
// leader may repeat it.
func (l *leader) deleteTensors(j *cpb.Job, inputs bool) error {
	td := l.c.tensorsOf(j.Owner)
	if td == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	if err := td.DeleteJob(ctx, j.Id); err != nil {
		return err
	}
	if ref := inputRef(j); inputs && ref != "" && ref != j.Id {
		return td.DeleteJob(ctx, ref)
	}
	return nil
}

// forget drops soft state about epochs that are over (read afresh: this
// tick may have started epochs).
func (l *leader) forget() {
	cur := map[string]uint64{}
	l.c.fsm.view(func(s *State) {
		for id, j := range s.jobs {
			if j.State == pb.JobState_JOB_STATE_RUNNING {
				cur[id] = j.Epoch
			}
		}
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.sent {
		if e, ok := cur[k.job]; !ok || e != k.epoch {
			delete(l.sent, k)
		}
	}
	for id, rq := range l.replan {
		if e, ok := cur[id]; !ok || e != rq.epoch {
			delete(l.replan, id)
		}
	}
	for id, v := range l.verifying {
		if e, ok := cur[id]; !ok || (e != v.epoch && !v.running) {
			delete(l.verifying, id)
		}
	}
	for k := range l.progress {
		if e, ok := cur[k.job]; !ok || e != k.epoch {
			delete(l.progress, k)
		}
	}
	for id := range l.published {
		if _, ok := cur[id]; !ok {
			delete(l.published, id)
		}
	}
}
