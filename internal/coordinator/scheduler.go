package coordinator

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The scheduler is a pure function: decide(schedInput) returns what the
// leader should do this round (fail a job past its deadline, re-plan a
// running job over some workers, start a queued one, or let a job wait),
// from a snapshot of the jobs, the workers and the clock. It reads no
// clock, no lock, no Raft and no NATS; the leader builds its input
// (tick.go), commits its decisions through Raft and sends the assignments
// (dispatch.go). The policy is DESIGN.md, "Scheduling".

// schedPolicy tunes decide.
type schedPolicy struct {
	// MinRankTime: a job gets no more ranks than keep each rank busy at
	// least this long (its estimated compute at the workers' measured
	// speed over the ranks); 0 turns the size rule off (every job gets as
	// many ranks as it has blocks, up to its parallelism).
	MinRankTime time.Duration
}

// schedJob is a job as decide sees it.
type schedJob struct {
	ID       string
	Seq      uint64 // submission order (log index)
	Priority int32
	Queued   bool // QUEUED; else RUNNING
	// Work is the compute the job has left, in FLOPs (an estimate:
	// jobFLOPs scaled by the blocks left).
	Work float64
	// MaxRanks is the most ranks the job can use: its parallelism when
	// set, else its blocks (at least 1).
	MaxRanks int
	// Fixed: the client set parallelism; the size rule does not apply.
	Fixed    bool
	Deadline time.Time // zero: none

	// Running jobs only.
	Epoch      uint64
	BlocksDone int
	BlocksAll  int
	// Ranks are the current epoch's ranks: the worker of each and
	// whether it reported done.
	Ranks []schedRank
	// Replan is set when the job needs a new epoch: a report, a refused
	// assignment or the watchdog asked for one (Reason says why), or its
	// pass ended (Reason "": the backward pass starts).
	Replan bool
	Reason string
}

type schedRank struct {
	Worker string
	Done   bool
}

// schedWorker is a worker of the registry as decide sees it.
type schedWorker struct {
	ID      string
	Slots   int     // ranks it runs at once (>= 1)
	Used    int     // slots held now: by the log or its heartbeat, whichever is more
	Gflops  float64 // measured speed; 0 = unknown
	Leaving bool    // drains: takes no new ranks
	Suspect bool    // excluded from plans for a while (a refused assignment, a stall)
	// BusyUntil is when its held ranks are expected to end (zero when it
	// holds none or nothing is known).
	BusyUntil time.Time
}

// schedInput is everything decide reads.
type schedInput struct {
	Now     time.Time
	Policy  schedPolicy
	Jobs    []schedJob
	Workers []schedWorker // live: heard from within HeartbeatTimeout
	// Grace: the leader is new and workers not heard from yet may be
	// alive: a rank's missing worker is not yet a reason to re-plan (only
	// an explicit leave is).
	Grace bool
}

type decisionKind int

const (
	// decideFail: fail the job with Reason.
	decideFail decisionKind = iota + 1
	// decideEpoch: commit a new epoch of the job over Workers (a queued
	// job's first, or a running job's re-plan with Reason).
	decideEpoch
	// decideWait: the running job needs a re-plan (Reason) but no worker
	// is free; a queued job waits (Reason says for what).
	decideWait
)

// decision is one thing the leader should do.
type decision struct {
	Kind    decisionKind
	Job     string
	Workers []string // decideEpoch: the ranks' workers, fastest first
	Reason  string
}

func (d decision) String() string {
	switch d.Kind {
	case decideFail:
		return fmt.Sprintf("fail %s: %s", d.Job, d.Reason)
	case decideEpoch:
		return fmt.Sprintf("epoch %s on %v (%s)", d.Job, d.Workers, d.Reason)
	}
	return fmt.Sprintf("wait %s: %s", d.Job, d.Reason)
}

// defaultGflops is the speed of a worker whose speed is unknown when no
// worker's is known.
const defaultGflops = 1.0

// scheduler is one round of decide: the input and what is free so far.
type scheduler struct {
	in      schedInput
	workers map[string]*schedWorker
	used    map[string]int
	def     float64 // speed of a worker of unknown speed: the known median
	out     []decision
}

// decide runs one scheduling round. Order: deadlines; then running jobs
// that need a new epoch (they hold workers already and finishing them
// first is fair); then queued jobs by priority, then submission order,
// each gang-sized, with the head job reserving workers while it waits and
// later jobs backfilling only where they end before the reservation.
func decide(in schedInput) []decision {
	s := &scheduler{in: in, workers: map[string]*schedWorker{}, used: map[string]int{}}
	var speeds []float64
	for i := range in.Workers {
		w := &in.Workers[i]
		s.workers[w.ID] = w
		s.used[w.ID] = w.Used
		if w.Gflops > 0 {
			speeds = append(speeds, w.Gflops)
		}
	}
	s.def = defaultGflops
	if len(speeds) > 0 {
		slices.Sort(speeds)
		s.def = speeds[len(speeds)/2]
	}
	jobs := slices.Clone(in.Jobs)
	slices.SortStableFunc(jobs, func(a, b schedJob) int {
		if d := cmp.Compare(b.Priority, a.Priority); d != 0 {
			return d
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	var queued []schedJob
	for _, j := range jobs {
		if !j.Deadline.IsZero() && !in.Now.Before(j.Deadline) {
			reason := "deadline exceeded while queued"
			if !j.Queued {
				reason = fmt.Sprintf("deadline exceeded in epoch %d (%d of %d blocks done)", j.Epoch, j.BlocksDone, j.BlocksAll)
			}
			s.emit(decision{Kind: decideFail, Job: j.ID, Reason: reason})
			continue
		}
		if j.Queued {
			queued = append(queued, j)
			continue
		}
		s.running(j)
	}
	s.queue(queued)
	return s.out
}

func (s *scheduler) emit(d decision) { s.out = append(s.out, d) }

// speed is w's speed in FLOP/s for estimates.
func (s *scheduler) speed(id string) float64 {
	g := s.def
	if w := s.workers[id]; w != nil && w.Gflops > 0 {
		g = w.Gflops
	}
	return g * 1e9
}

// runTime is how long work takes on workers (a plan weighs ranks by
// speed, so their speeds add up).
func (s *scheduler) runTime(work float64, workers []string) time.Duration {
	var sum float64
	for _, id := range workers {
		sum += s.speed(id)
	}
	if sum <= 0 || !(work > 0) {
		return 0
	}
	sec := work / sum
	if sec > maxProgressTimeout.Seconds() {
		return maxProgressTimeout
	}
	return time.Duration(sec * float64(time.Second))
}

// usable reports whether w may take new ranks at all.
func usable(w *schedWorker) bool { return !w.Leaving && !w.Suspect }

// free returns the usable workers with a free slot, fastest first, counting
// the unfinished ranks of `own` (being re-planned) as free.
func (s *scheduler) free(own *schedJob) []string {
	mine := map[string]int{}
	if own != nil {
		for _, rk := range own.Ranks {
			if !rk.Done {
				mine[rk.Worker]++
			}
		}
	}
	var out []string
	for id, w := range s.workers {
		if usable(w) && s.used[id]-mine[id] < max(w.Slots, 1) {
			out = append(out, id)
		}
	}
	s.fastestFirst(out)
	return out
}

func (s *scheduler) fastestFirst(ids []string) {
	slices.SortFunc(ids, func(a, b string) int {
		if d := cmp.Compare(s.speed(b), s.speed(a)); d != 0 {
			return d
		}
		return cmp.Compare(a, b)
	})
}

// gang is how many ranks job j should run on: at most MaxRanks and the
// usable workers; unless the client fixed it, at most as many as keep
// each rank busy MinRankTime at the cluster's median speed; at least 1.
func (s *scheduler) gang(j *schedJob) int {
	n := 0
	for _, w := range s.workers {
		if usable(w) {
			n++
		}
	}
	g := min(max(j.MaxRanks, 1), max(n, 1))
	if !j.Fixed && s.in.Policy.MinRankTime > 0 {
		one := j.Work / (s.def * 1e9) // seconds on one median worker
		byWork := math.Floor(one / s.in.Policy.MinRankTime.Seconds())
		if byWork < float64(g) {
			g = max(1, int(byWork))
		}
	}
	return g
}

// start commits job j's epoch over workers in this round's accounting.
func (s *scheduler) start(j *schedJob, workers []string, reason string) {
	for _, rk := range j.Ranks {
		if !rk.Done {
			s.used[rk.Worker]--
		}
	}
	for _, id := range workers {
		s.used[id]++
	}
	s.emit(decision{Kind: decideEpoch, Job: j.ID, Workers: workers, Reason: reason})
}

// running decides about a running job: a re-plan when asked for, when
// every rank reported with blocks left, or when a rank's worker is gone
// (or, in the grace period, leaving); it takes the free workers at once
// (up to its gang), since its ranks already wait on each other.
func (s *scheduler) running(j schedJob) {
	reason, replan := j.Reason, j.Replan
	if !replan {
		done := 0
		for _, rk := range j.Ranks {
			if rk.Done {
				done++
			}
		}
		if len(j.Ranks) > 0 && done == len(j.Ranks) {
			replan, reason = true, fmt.Sprintf("epoch %d ended with %d of %d blocks done", j.Epoch, j.BlocksDone, j.BlocksAll)
		}
	}
	if !replan {
		for r, rk := range j.Ranks {
			if rk.Done {
				continue
			}
			w := s.workers[rk.Worker]
			switch {
			case !s.in.Grace && (w == nil || w.Leaving):
				replan, reason = true, fmt.Sprintf("worker %s of rank %d is gone", rk.Worker, r)
			case s.in.Grace && w != nil && w.Leaving:
				replan, reason = true, fmt.Sprintf("worker %s of rank %d is leaving", rk.Worker, r)
			}
			if replan {
				break
			}
		}
	}
	if !replan {
		return
	}
	free := s.free(&j)
	if len(free) == 0 {
		s.emit(decision{Kind: decideWait, Job: j.ID, Reason: reason})
		return
	}
	s.start(&j, free[:min(len(free), s.gang(&j))], reason)
}

// queue decides about the queued jobs, in order. A job whose gang is free
// starts on it. One whose gang is not free starts on the free workers
// only when that ends sooner than waiting for its gang (the workers' busy
// ranks are expected to end at their BusyUntil); else it waits, and the
// first job that waits reserves its gang from the time it is expected
// free: a later job then starts only where it is expected to end by then
// (backfill), so it never delays the head.
func (s *scheduler) queue(jobs []schedJob) {
	var reserved time.Time // zero: no reservation yet
	for i := range jobs {
		j := &jobs[i]
		g := s.gang(j)
		free := s.free(nil)
		if !reserved.IsZero() {
			take := free[:min(len(free), g)]
			if len(take) > 0 && !s.in.Now.Add(s.runTime(j.Work, take)).After(reserved) {
				s.start(j, take, "")
			} else {
				s.emit(decision{Kind: decideWait, Job: j.ID, Reason: "behind a job waiting for its workers"})
			}
			continue
		}
		if len(free) >= g {
			s.start(j, free[:g], "")
			continue
		}
		at, gangIDs := s.gangFreeAt(g)
		now := s.runTime(j.Work, free)
		wait := at.Sub(s.in.Now) + s.runTime(j.Work, gangIDs)
		if len(free) > 0 && (at.IsZero() || now <= wait) {
			s.start(j, free, "")
			continue
		}
		reason := fmt.Sprintf("waiting for %d workers (%d free)", g, len(free))
		if !at.IsZero() {
			reserved = at
			reason += fmt.Sprintf("; expected free in %v", at.Sub(s.in.Now).Round(time.Millisecond))
		} else {
			reserved = s.in.Now // nothing known frees: nothing may overtake
		}
		s.emit(decision{Kind: decideWait, Job: j.ID, Reason: reason})
	}
}

// gangFreeAt returns when g usable workers are expected to have a free
// slot, and which (the earliest free, then fastest): free workers are free
// now, busy ones at their BusyUntil (one overdue by d at now + d). It returns the zero time when fewer
// than g are usable or a busy one's end is unknown before g are found.
func (s *scheduler) gangFreeAt(g int) (time.Time, []string) {
	type cand struct {
		id string
		at time.Time
	}
	var cs []cand
	for id, w := range s.workers {
		if !usable(w) {
			continue
		}
		at := s.in.Now
		if s.used[id] >= max(w.Slots, 1) {
			if w.BusyUntil.IsZero() {
				continue
			}
			at = w.BusyUntil
			if at.Before(s.in.Now) {
				// Overdue: the estimate was wrong. Expect it as late again
				// as it is already late, so a long overrun soon lets the
				// job start on the free workers instead of waiting on.
				at = s.in.Now.Add(s.in.Now.Sub(at))
			}
		}
		cs = append(cs, cand{id, at})
	}
	if len(cs) < g {
		return time.Time{}, nil
	}
	slices.SortFunc(cs, func(a, b cand) int {
		if d := a.at.Compare(b.at); d != 0 {
			return d
		}
		if d := cmp.Compare(s.speed(b.id), s.speed(a.id)); d != 0 {
			return d
		}
		return cmp.Compare(a.id, b.id)
	})
	ids := make([]string, g)
	for i := range g {
		ids[i] = cs[i].id
	}
	return cs[g-1].at, ids
}

// jobFLOPs estimates the compute of a job's pass: 4·B·Hq·D FLOPs per
// (query, key) pair its mask keeps (QKᵀ and PV), plus an mha job's four
// projections; a backward pass counts 2.5 forward passes. It is for
// sizing gangs, not for billing: masks are counted by their density.
func jobFLOPs(s *pb.JobSpec) float64 {
	b, hq, d := float64(s.GetB()), float64(s.GetHq()), float64(s.GetD())
	n, nk := float64(s.GetN()), float64(s.GetNk())
	f := 4 * b * hq * d * n * nk * maskDensity(s.GetMask(), n, nk)
	if s.GetKind() == pb.JobKind_JOB_KIND_MHA {
		f += 8 * b * n * float64(s.GetDModel()) * hq * d
	}
	switch s.GetMode() {
	case pb.JobMode_JOB_MODE_BACKWARD:
		f *= 2.5
	case pb.JobMode_JOB_MODE_FORWARD_BACKWARD:
		f *= 3.5
	}
	if math.IsNaN(f) || f < 0 {
		return 0
	}
	return f
}

// maskDensity is the share of the n×nk (query, key) pairs mask m keeps.
func maskDensity(m *pb.Mask, n, nk float64) float64 {
	if n <= 0 || nk <= 0 {
		return 0
	}
	dens := 1.0
	if docs := m.GetSeqlens(); len(docs) > 0 {
		var sq float64
		for _, l := range docs {
			sq += float64(l) * float64(l)
		}
		dens = min(dens, sq/(n*nk))
	}
	if m.GetWindowed() {
		left, right := float64(m.GetWindowLeft()), float64(m.GetWindowRight())
		if left < 0 {
			left = nk
		}
		if right < 0 {
			right = nk
		}
		if m.GetCausal() {
			right = 0
		}
		dens = min(dens, (left+right+1)/nk)
	}
	if m.GetCausal() {
		dens = min(dens, 0.5+0.5/nk)
	}
	return max(0, dens)
}
