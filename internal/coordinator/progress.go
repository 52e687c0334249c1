package coordinator

import (
	"slices"
	"time"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Progress per ring step (DESIGN.md, "Progress events"). Workers' heartbeats
// carry each rank's steps_done of steps_total; the leader sums them over the
// ranks of a running job's current epoch and publishes a PROGRESS event at
// most once per progressEvery per job, only when the sums changed, so
// clients' bars, rates and ETAs move between the (coarse) block counts.

const (
	// progressEvery is the least time between two PROGRESS events of a job.
	progressEvery = time.Second
	// maxRankSteps bounds one rank's counters (a heartbeat is not trusted):
	// sums over any plan stay far from overflowing.
	maxRankSteps = 1 << 40
)

// progressPub is the last PROGRESS event published for a job.
type progressPub struct {
	epoch       uint64
	done, total int64
	at          time.Time
}

// jobSteps sums the step counters of the ranks of j's current epoch:
// a finished rank counts as done = total; a rank whose total is not known
// yet (no heartbeat listed it) makes the sum unknown (ok false) unless it
// finished, when it counts as the mean of the known ranks' totals.
// Called with l.mu held.
func (l *leader) jobSteps(j *cpb.Job) (done, total int64, ok bool) {
	var known, unknownDone int64
	ranks := j.Plan.GetRanks()
	for r := range ranks {
		_, finished := slices.BinarySearch(j.DoneRanks, int32(r))
		p := l.progress[shardKey{j.Id, j.Epoch, int32(r)}]
		if p == nil || p.total <= 0 {
			if !finished {
				return 0, 0, false
			}
			unknownDone++
			continue
		}
		t := min(p.total, maxRankSteps)
		d := min(max(p.steps, 0), t)
		if finished {
			d = t
		}
		done += d
		total += t
		known++
	}
	if known == 0 {
		return 0, 0, false
	}
	est := unknownDone * (total / known)
	return done + est, total + est, total+est > 0
}

// stepsOf returns the step counters of a running job for its status
// (0, 0 when unknown).
func (l *leader) stepsOf(j *cpb.Job) (done, total int64) {
	if j.State != pb.JobState_JOB_STATE_RUNNING {
		return 0, 0
	}
	l.locked(func() { done, total, _ = l.jobSteps(j) })
	return done, total
}

// maybePublishProgress publishes j's PROGRESS event when its step counts
// changed and the last one is at least progressEvery old.
func (l *leader) maybePublishProgress(j *cpb.Job, now time.Time) {
	var (
		send bool
		ev   progressPub
	)
	l.locked(func() {
		done, total, ok := l.jobSteps(j)
		if !ok {
			return
		}
		last, had := l.published[j.Id]
		if had && (now.Sub(last.at) < progressEvery || (last.epoch == j.Epoch && last.done == done && last.total == total)) {
			return
		}
		ev = progressPub{epoch: j.Epoch, done: done, total: total, at: now}
		l.published[j.Id] = ev
		send = true
	})
	if send {
		l.publishProgress(j, ev.done, ev.total, now)
	}
}

// finalProgress publishes done = total for a job that just succeeded
// after PROGRESS events, so its event stream ends complete.
func (l *leader) finalProgress(j *cpb.Job) {
	var (
		last progressPub
		had  bool
	)
	l.locked(func() {
		last, had = l.published[j.Id]
		delete(l.published, j.Id)
	})
	if !had || j.State != pb.JobState_JOB_STATE_SUCCEEDED || last.total <= 0 {
		return
	}
	l.publishProgress(j, last.total, last.total, l.c.now())
}

func (l *leader) publishProgress(j *cpb.Job, done, total int64, now time.Time) {
	ev := &pb.JobEvent{
		Type: pb.JobEventType_JOB_EVENT_TYPE_PROGRESS, JobId: j.Id, Epoch: j.Epoch, State: j.State,
		BlocksDone: done, BlocksTotal: total, Rank: -1, UnixMs: now.UnixMilli(),
	}
	if err := l.c.conn.PublishTenantEvent(j.Owner, ev); err != nil {
		l.log.Debug("publish progress failed", "job", j.Id, "err", err)
	}
}

// stepTimes returns each worker's mean time per progress step over the
// ranks it runs (soft state of this term; workers without two
// observations of progress are absent).
func (l *leader) stepTimes() map[string]time.Duration {
	type acc struct {
		d     time.Duration
		steps int64
	}
	sum := map[string]acc{}
	l.locked(func() {
		for _, p := range l.progress {
			if n := p.steps - p.firstSteps; n > 0 && p.at.After(p.first) && p.worker != "" {
				a := sum[p.worker]
				a.d += p.at.Sub(p.first)
				a.steps += n
				sum[p.worker] = a
			}
		}
	})
	out := make(map[string]time.Duration, len(sum))
	for w, a := range sum {
		out[w] = a.d / time.Duration(a.steps)
	}
	return out
}
