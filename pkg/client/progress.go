package client

import (
	"context"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Units name what Progress.Done and Progress.Total count.
const (
	// UnitBlocks: output blocks finished (the job status's counters).
	UnitBlocks = "blocks"
	// UnitSteps: ring steps folded, summed over the ranks (PROGRESS events,
	// published by the leader from the workers' heartbeats).
	UnitSteps = "steps"
)

// Progress is a job's progress as a watcher sees it.
type Progress struct {
	// Status is the latest job status read from the coordinator.
	Status *pb.JobStatus
	// Done of Total units (Unit) are finished. The finest counters known
	// are used: ring steps once the job publishes them, else blocks.
	Done, Total int64
	Unit        string
	// Rate is in units per second over the recent window of observed
	// progress; RateOK is false while too little progress was observed to
	// tell (just started, queued, stalled, re-planned, or finished before
	// the watch began).
	Rate   float64
	RateOK bool
	// ETA is the remaining time at Rate; ETAOK as RateOK, and false when
	// nothing remains.
	ETA   time.Duration
	ETAOK bool
	// Elapsed is the job's run time so far (from its start, as recorded by
	// the coordinator, to its finish or now); 0 before it starts.
	Elapsed time.Duration
	// FinishedBeforeWatch is true when the job had already finished when
	// the watch began: Rate is then never set.
	FinishedBeforeWatch bool
}

// Fraction is Done/Total in [0, 1] (0 when Total is unknown).
func (p *Progress) Fraction() float64 {
	if p.Total <= 0 {
		return 0
	}
	f := float64(p.Done) / float64(p.Total)
	return min(max(f, 0), 1)
}

// Meter turns observations of a job's progress into a rate and an ETA over
// a sliding window, so the rate follows the job's current speed rather than
// its average since the start (upload, queueing and a re-plan excluded).
// The zero value uses a 10 s window. A Meter is not safe for concurrent use.
type Meter struct {
	// Window is how far back observations count (default 10 s).
	Window time.Duration
	// MinSpan is the least time between the first and last observation of
	// the window for the rate to count (default 900 ms).
	MinSpan time.Duration

	samples []sample
	total   int64
	unit    string
	epoch   uint64
}

type sample struct {
	t    time.Time
	done int64
}

// Reset forgets the observations.
func (m *Meter) Reset() { m.samples = m.samples[:0] }

// Observe records that done of total units were finished at t. A change of
// total, unit or epoch (a re-plan) or progress going backwards starts the
// window afresh.
func (m *Meter) Observe(t time.Time, done, total int64, unit string, epoch uint64) {
	if total != m.total || unit != m.unit || epoch != m.epoch {
		m.Reset()
		m.total, m.unit, m.epoch = total, unit, epoch
	}
	if n := len(m.samples); n > 0 {
		last := m.samples[n-1]
		switch {
		case done < last.done || t.Before(last.t):
			m.Reset()
		case done == last.done:
			// No news: the time of a count is when it was first seen, so
			// repeated observations do not stretch the window; a stall
			// shows in Rate, which counts the silence since.
			m.trim(t)
			return
		}
	}
	m.samples = append(m.samples, sample{t, done})
	m.trim(t)
}

func (m *Meter) window() time.Duration {
	if m.Window > 0 {
		return m.Window
	}
	return 10 * time.Second
}

func (m *Meter) minSpan() time.Duration {
	if m.MinSpan > 0 {
		return m.MinSpan
	}
	return 900 * time.Millisecond
}

// trim drops samples older than the window, keeping at least two.
func (m *Meter) trim(now time.Time) {
	cut := 0
	for cut < len(m.samples)-2 && now.Sub(m.samples[cut].t) > m.window() {
		cut++
	}
	if cut > 0 {
		m.samples = append(m.samples[:0], m.samples[cut:]...)
	}
}

// Rate returns units per second over the window as of now; ok is false
// when the window holds less than MinSpan of observations, no progress, or
// when the last observation is older than the window (a stall).
func (m *Meter) Rate(now time.Time) (rate float64, ok bool) {
	n := len(m.samples)
	if n < 2 {
		return 0, false
	}
	first, last := m.samples[0], m.samples[n-1]
	span := last.t.Sub(first.t)
	if span < m.minSpan() || last.done <= first.done || now.Sub(last.t) > m.window() {
		return 0, false
	}
	// Silence since the last observation counts once it is well past
	// the usual interval between them, so a stall lowers the rate.
	end := last.t
	if gap := now.Sub(last.t); gap > 2*span/time.Duration(n-1)+time.Second {
		end = now
	}
	return float64(last.done-first.done) / end.Sub(first.t).Seconds(), true
}

// ETA returns the time left at the window's rate for done of the total.
func (m *Meter) ETA(now time.Time, done int64) (time.Duration, bool) {
	r, ok := m.Rate(now)
	if !ok || r <= 0 || m.total <= 0 || done >= m.total {
		return 0, false
	}
	secs := float64(m.total-done) / r
	if secs > 1e6 { // beyond 11 days: not meaningful
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// StatusProgress returns a status's finest progress counters: ring steps
// of the current epoch when the coordinator knows them, else blocks.
func StatusProgress(st *pb.JobStatus) (done, total int64, unit string) {
	if t := st.GetStepsTotal(); t > 0 && st.GetStepsDone() >= 0 && st.GetStepsDone() <= t {
		return st.GetStepsDone(), t, UnitSteps
	}
	return st.GetBlocksDone(), st.GetBlocksTotal(), UnitBlocks
}

// progressEvent checks a job event from the network (decoded by
// transport.Conn.WatchEvents) and returns the ring-step progress it
// carries: nil for another job's event; ok only for a well-formed PROGRESS
// event of job id with 0 <= done <= total and total > 0.
func progressEvent(ev *pb.JobEvent, id string) (_ *pb.JobEvent, ok bool) {
	if ev == nil || ev.GetJobId() != "" && ev.GetJobId() != id {
		return nil, false
	}
	if ev.GetType() != pb.JobEventType_JOB_EVENT_TYPE_PROGRESS {
		return ev, false
	}
	if ev.GetBlocksTotal() <= 0 || ev.GetBlocksDone() < 0 || ev.GetBlocksDone() > ev.GetBlocksTotal() {
		return ev, false
	}
	return ev, true
}

// WatchProgress follows a job until it finishes or ctx ends, calling fn
// with its progress on every job event and at least once a second, and
// returns the final status. Progress counts ring steps once the job's
// PROGRESS events arrive, blocks before; the rate and ETA come from a Meter.
func (c *Client) WatchProgress(ctx context.Context, id string, fn func(Progress)) (*pb.JobStatus, error) {
	// A watcher that falls behind loses events (WatchEvents drops them);
	// the next poll catches up.
	events, stop, err := c.conn.WatchEvents(ctx, id)
	if err != nil {
		return nil, err
	}
	defer stop() //nolint:errcheck // done with the events

	var (
		m        Meter
		st       *pb.JobStatus
		first    = true
		before   bool
		stepDone int64
		stepTot  int64
		stepEp   uint64
		tick     = time.NewTicker(time.Second)
	)
	defer tick.Stop()
	emit := func(now time.Time) {
		p := Progress{Status: st, FinishedBeforeWatch: before}
		p.Done, p.Total, p.Unit = StatusProgress(st)
		// A PROGRESS event of the current epoch newer than the status.
		if stepTot > 0 && stepEp == st.GetEpoch() && (p.Unit != UnitSteps || (stepTot == p.Total && stepDone > p.Done)) {
			p.Unit, p.Done, p.Total = UnitSteps, stepDone, stepTot
		}
		if st.GetState() == pb.JobState_JOB_STATE_SUCCEEDED && p.Total > 0 {
			p.Done = p.Total
		}
		if s := st.GetStartedUnixMs(); s > 0 {
			end := now
			if f := st.GetFinishedUnixMs(); f > 0 {
				end = time.UnixMilli(f)
			}
			p.Elapsed = max(0, end.Sub(time.UnixMilli(s)))
		}
		if st.GetState() == pb.JobState_JOB_STATE_RUNNING {
			m.Observe(now, p.Done, p.Total, p.Unit, st.GetEpoch())
			p.Rate, p.RateOK = m.Rate(now)
			p.ETA, p.ETAOK = m.ETA(now, p.Done)
		} else if Finished(st.GetState()) && !before {
			// The rate of the last window, for the final line.
			p.Rate, p.RateOK = m.Rate(now)
		}
		if fn != nil {
			fn(p)
		}
	}
	poll := true
	for {
		if poll {
			s, err := c.Get(ctx, id)
			if err != nil {
				return st, err
			}
			if first && Finished(s.GetState()) {
				before = true
			}
			first = false
			st = s
		}
		emit(time.Now())
		if Finished(st.GetState()) {
			return st, nil
		}
		poll = false
		// Wait for something that changes what is shown: an event of the
		// job or the tick (a closed event channel or a foreign event is
		// not one).
		for waiting := true; waiting; {
			waiting = false
			select {
			case <-ctx.Done():
				return st, ctx.Err()
			case raw, open := <-events:
				ev, progress := progressEvent(raw, id)
				if !open || ev == nil {
					if !open {
						events = nil // stopped (ctx ended): ctx.Done is next
					}
					waiting = true
					continue
				}
				if progress {
					if ev.GetEpoch() != 0 {
						stepEp = ev.GetEpoch()
					} else {
						stepEp = st.GetEpoch()
					}
					stepDone, stepTot = ev.GetBlocksDone(), ev.GetBlocksTotal()
					if st.GetState() == pb.JobState_JOB_STATE_QUEUED && ev.GetState() == pb.JobState_JOB_STATE_RUNNING {
						poll = true
					}
					if stepEp != st.GetEpoch() {
						poll = true // a re-plan: read the new status
					}
				} else {
					poll = true
				}
			case <-tick.C:
				poll = true
			}
		}
	}
}
