package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// leader is one leadership term's session: the scheduler, the worker
// registry (soft state, rebuilt from heartbeats), the report handler and
// the client API. It is built fresh each time this node becomes leader and
// reads everything durable from the FSM, so a new leader resumes every job
// where the log says it is and re-issues each running job's current epoch.
//
// Locks: mu guards the soft state (maps below) and nothing else: it is
// never held across a Raft apply, a store call, a NATS request or publish,
// or planning, and no other lock is taken while it is held (fsm.mu and
// Coordinator.mu are taken only when mu is not held). Only the scheduler
// goroutine (run → tick) plans and starts epochs; the report and API
// handlers record what they learn in the soft state and wake it. See
// DESIGN.md, "Locks".
type leader struct {
	c     *Coordinator
	log   *slog.Logger
	ctx   context.Context
	stopF context.CancelFunc
	wakeC chan struct{}
	since time.Time
	ready atomic.Bool
	term  uint64

	mu       sync.Mutex
	stopped  bool
	wg       sync.WaitGroup
	workers  map[string]*workerInfo
	sent     map[shardKey]*sendState
	replan   map[string]replanReq
	suspect  map[string]time.Time // worker -> excluded from plans until
	deleteAt map[string]time.Time // job -> next tensor-deletion attempt
	progress map[shardKey]*progressState
	// published: the last PROGRESS event of each running job (progress.go).
	published map[string]progressPub
	inputs    map[string]string // input namespace -> submit in flight (api.go)
	// verifying: output checks of jobs about to succeed (verify.go);
	// outChecks: get's cached checks of succeeded jobs.
	verifying map[string]*verifyState
	outChecks map[string]outputsCheck
	// sweep is the upload sweeper's state (sweep.go); expiring: expire
	// runs in the background.
	sweep    sweepState
	expiring bool
	// stops end the serves listen started (heartbeats, reports, API).
	stops []transport.StopFunc
	// apiGate and reportGate bound the API requests and worker reports
	// handled at once (busy.go).
	apiGate, reportGate slots
}

type workerInfo struct {
	hb   *pb.Heartbeat // sanitized (sanitizeHeartbeat)
	seen time.Time
	// warned: a bad speed of this worker has been logged.
	warned bool
}

// progressState is when a rank's steps_done last changed, the steps_total
// its worker last reported, and when (and at which count) the leader first
// heard of it: the worker's step time is (at-first)/(steps-firstSteps).
type progressState struct {
	steps, total int64
	at           time.Time
	first        time.Time
	firstSteps   int64
	worker       string
}

type shardKey struct {
	job   string
	epoch uint64
	rank  int32
}

type sendState struct {
	at       time.Time
	acked    bool
	inflight bool
	// since is when the worker first accepted this shard in this term
	// (kept across re-sends): the progress watchdog counts from it.
	since time.Time
}

type replanReq struct {
	epoch  uint64
	reason string
}

func newLeader(c *Coordinator) *leader {
	ctx, cancel := context.WithCancel(context.Background())
	return &leader{
		c: c, log: c.log.With("role", "leader"), ctx: ctx, stopF: cancel,
		wakeC:    make(chan struct{}, 1),
		since:    c.now(),
		term:     c.raft.CurrentTerm(),
		workers:  map[string]*workerInfo{},
		sent:     map[shardKey]*sendState{},
		replan:   map[string]replanReq{},
		suspect:  map[string]time.Time{},
		deleteAt: map[string]time.Time{},
		progress: map[shardKey]*progressState{},
		inputs:   map[string]string{},

		published: map[string]progressPub{},

		verifying: map[string]*verifyState{},
		outChecks: map[string]outputsCheck{},

		apiGate:    newSlots(c.cfg.Limits.MaxConcurrentRequests),
		reportGate: newSlots(c.cfg.Limits.MaxConcurrentReports),
	}
}

// locked runs fn holding l.mu and releases it even if fn panics: a panic
// under the lock, once contained, must not leave the whole leader
// deadlocked.
func (l *leader) locked(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fn()
}

// enter registers a handler goroutine; false once the session stops.
func (l *leader) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	l.wg.Add(1)
	return true
}

func (l *leader) isReady() bool { return l.ready.Load() }

func (l *leader) wake() {
	select {
	case l.wakeC <- struct{}{}:
	default:
	}
}

func (l *leader) start() {
	if !l.enter() {
		return
	}
	go func() {
		defer l.wg.Done()
		l.run()
	}()
}

func (l *leader) stop() {
	l.mu.Lock()
	l.stopped = true
	stops := l.stops
	l.stops = nil
	l.mu.Unlock()
	l.ready.Store(false)
	for i := len(stops) - 1; i >= 0; i-- {
		if err := stops[i](); err != nil {
			l.log.Warn("stopping a serve", "err", err)
		}
	}
	l.stopF()
	l.wg.Wait()
}

func (l *leader) run() {
	c := l.c
	// Everything committed by earlier leaders must be applied here before
	// this node answers or plans anything.
	for {
		if err := c.raft.Barrier(c.cfg.ApplyTimeout).Error(); err == nil {
			break
		} else if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || l.ctx.Err() != nil {
			return
		}
		if !sleepCtx(l.ctx, 100*time.Millisecond) {
			return
		}
	}
	for {
		err := l.listen()
		if err == nil {
			break
		}
		l.log.Warn("cannot serve yet; retrying", "err", err)
		if !sleepCtx(l.ctx, 500*time.Millisecond) {
			return
		}
	}
	l.ready.Store(true)
	l.log.Info("leader serving", "applied_index", c.raft.AppliedIndex(), "startup", c.now().Sub(l.since))
	t := time.NewTicker(c.cfg.SchedulerInterval)
	defer t.Stop()
	for {
		l.tick()
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
		case <-l.wakeC:
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// listen serves heartbeats, reports and the client API.
func (l *leader) listen() error {
	c := l.c
	var stops []transport.StopFunc
	undo := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			_ = stops[i]()
		}
	}
	hb, err := c.conn.ServeHeartbeats(transport.ServeConfig{OnPanic: l.onServePanic}, l.onHeartbeat)
	if err != nil {
		return fmt.Errorf("serve heartbeats: %w", err)
	}
	stops = append(stops, hb)
	rep, err := c.conn.ServeReports(transport.ServeConfig{OnPanic: l.onServePanic,
		Dispatch: l.dispatch(l.reportGate, func() { c.met.reports.WithLabelValues("busy").Inc() })}, l.handleReport)
	if err != nil {
		undo()
		return fmt.Errorf("serve reports: %w", err)
	}
	stops = append(stops, rep)
	api, err := c.conn.ServeAPI(l.apiHandlers(), l.apiConfig())
	if err != nil {
		undo()
		return err
	}
	stops = append(stops, api)
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	if err := c.conn.Flush(ctx); err != nil {
		undo()
		return fmt.Errorf("flush subscriptions: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		undo()
		return context.Canceled
	}
	l.stops = stops
	return nil
}

// ---- worker registry ----

// Heartbeat limits. A heartbeat is decoded once, here, into a value the
// scheduler can trust: numbers it weighs plans by are finite and bounded,
// lists are bounded, names are valid subject tokens.
const (
	// maxHeartbeatBytes bounds an encoded heartbeat (transport drops a
	// larger one before it is decoded).
	maxHeartbeatBytes = transport.MaxHeartbeatBytes
	// maxRunning bounds the shards one heartbeat lists; more are dropped.
	maxRunning = 1024
	// maxSlots bounds the ranks one worker may run at once.
	maxSlots = 1024
	// maxGflops: a speed above this (10 PFLOP/s) is not a measurement.
	maxGflops = 1e7
	// maxWorkers bounds the registry: heartbeats of further new worker ids
	// are dropped until some worker times out.
	maxWorkers = 4096
	// maxVersionBytes bounds the version string kept for display.
	maxVersionBytes = 64
)

// sanitizeHeartbeat makes hb trustworthy in place and says what it had to
// change: a speed that is not finite and within (0, maxGflops] becomes 0
// (unknown: plans give it a default weight), slots are clamped to
// [0, maxSlots], shard refs with an invalid job id or negative rank and
// duplicates are dropped and at most maxRunning are kept, the version is
// cut to maxVersionBytes. The worker id is checked by the caller.
func sanitizeHeartbeat(hb *pb.Heartbeat) (badSpeed bool, dropped int) {
	if g := hb.Gflops; math.IsNaN(g) || math.IsInf(g, 0) || g <= 0 || g > maxGflops {
		badSpeed = true
		hb.Gflops = 0
	}
	hb.Slots = min(max(hb.Slots, 0), maxSlots)
	if len(hb.Version) > maxVersionBytes {
		hb.Version = strings.ToValidUTF8(hb.Version[:maxVersionBytes], "")
	}
	seen := map[shardKey]bool{}
	keep := hb.Running[:0]
	for _, ref := range hb.Running {
		k := shardKey{ref.GetJobId(), ref.GetEpoch(), ref.GetRank()}
		if ref == nil || len(keep) >= maxRunning || validName("job_id", ref.JobId, true) != nil || ref.Rank < 0 || seen[k] {
			dropped++
			continue
		}
		seen[k] = true
		keep = append(keep, ref)
	}
	clear(hb.Running[len(keep):])
	hb.Running = keep
	return badSpeed, dropped
}

// onHeartbeat handles one heartbeat transport decoded; a panic drops it
// (no ack).
func (l *leader) onHeartbeat(hb *pb.Heartbeat) (a *pb.HeartbeatAck) {
	l.guard("heartbeat", func() { a = l.heartbeat(hb) })
	return a
}

// heartbeat records one heartbeat and returns its ack (nil: dropped). It
// keeps hb (sanitized in place).
func (l *leader) heartbeat(hbp *pb.Heartbeat) *pb.HeartbeatAck {
	if h := l.c.hooks.Load(); h != nil && h.heartbeat != nil {
		data, _ := proto.Marshal(hbp)
		h.heartbeat(data)
	}
	hb := hbp
	if e := validName("worker_id", hb.WorkerId, true); e != nil {
		l.log.Warn("dropping heartbeat", "err", e)
		return nil
	}
	rawSpeed := hb.Gflops
	badSpeed, dropped := sanitizeHeartbeat(hb)
	abort, owned := l.classify(hb)
	now := l.c.now()
	var (
		old               *workerInfo
		known, full, warn bool
	)
	l.locked(func() {
		old, known = l.workers[hb.WorkerId]
		if full = !known && len(l.workers) >= maxWorkers; full {
			return
		}
		wi := &workerInfo{hb: hb, seen: now}
		if known {
			wi.warned = old.warned
		}
		warn = badSpeed && !wi.warned
		wi.warned = wi.warned || badSpeed
		l.workers[hb.WorkerId] = wi
		for _, ref := range owned {
			k := shardKey{ref.JobId, ref.Epoch, ref.Rank}
			p := l.progress[k]
			switch {
			case p == nil:
				p = &progressState{steps: ref.StepsDone, at: now, first: now, firstSteps: ref.StepsDone}
				l.progress[k] = p
			case p.steps != ref.StepsDone:
				p.steps, p.at = ref.StepsDone, now
			}
			p.total, p.worker = ref.StepsTotal, hb.WorkerId
		}
	})
	if full {
		l.log.Warn("dropping heartbeat of a new worker: registry full", "worker", hb.WorkerId, "max", maxWorkers)
		return nil
	}
	if warn {
		l.log.Warn("worker reports an unusable speed; planning it with a default weight", "worker", hb.WorkerId,
			"gflops", rawSpeed, "want", fmt.Sprintf("finite, in (0, %g]", float64(maxGflops)))
	}
	if dropped > 0 {
		l.log.Debug("heartbeat shard refs dropped", "worker", hb.WorkerId, "dropped", dropped)
	}
	if !known || hb.Leaving != old.hb.GetLeaving() {
		l.log.Info("worker heartbeat", "worker", hb.WorkerId, "slots", hb.Slots, "gflops", hb.Gflops, "leaving", hb.Leaving, "new", !known)
		l.wake()
	}
	return &pb.HeartbeatAck{LeaderId: l.c.cfg.NodeID, Term: l.term, Abort: abort}
}

// classify sorts the shards a worker lists: abort those that are over
// (their job finished or moved to a newer epoch, or the rank belongs to
// another worker); owned are the ranks of running jobs' current epochs
// that the plan gives this worker (their progress is tracked).
func (l *leader) classify(hb *pb.Heartbeat) (abort, owned []*pb.ShardRef) {
	l.c.fsm.view(func(s *State) {
		for _, ref := range hb.Running {
			j := s.jobs[ref.JobId]
			over := j == nil || Terminal(j.State) || ref.Epoch < j.Epoch
			if !over && ref.Epoch == j.Epoch {
				ranks := j.Plan.GetRanks()
				over = ref.Rank < 0 || int(ref.Rank) >= len(ranks) || ranks[ref.Rank].WorkerId != hb.WorkerId
			}
			switch {
			case over:
				abort = append(abort, proto.CloneOf(ref))
			case ref.Epoch == j.Epoch && j.State == pb.JobState_JOB_STATE_RUNNING:
				owned = append(owned, ref)
			}
		}
	})
	return abort, owned
}

// liveWorkers returns the workers that may take work now, dropping those
// not heard from within HeartbeatTimeout.
func (l *leader) liveWorkers(now time.Time) map[string]*pb.Heartbeat {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := map[string]*pb.Heartbeat{}
	for id, w := range l.workers {
		if now.Sub(w.seen) > l.c.cfg.HeartbeatTimeout {
			if w.hb.Leaving {
				// It said it was leaving: its silence is the drain ending.
				l.log.Info("worker left", "worker", id, "last_seen", w.seen)
			} else {
				l.log.Warn("worker lost: missed heartbeats", "worker", id, "last_seen", w.seen)
			}
			delete(l.workers, id)
			continue
		}
		if w.hb.Leaving {
			continue
		}
		live[id] = w.hb
	}
	for id, until := range l.suspect {
		if now.After(until) {
			delete(l.suspect, id)
		}
	}
	return live
}

// WorkerInfos is the leader's registry for the cluster endpoint.
func (l *leader) workerInfos(used map[string]int) []*pb.WorkerInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*pb.WorkerInfo
	for id, w := range l.workers {
		out = append(out, &pb.WorkerInfo{Id: id, Slots: slotsOf(w.hb), UsedSlots: int32(used[id]), Gflops: w.hb.Gflops,
			LastSeenUnixMs: w.seen.UnixMilli(), Version: w.hb.Version, Leaving: w.hb.Leaving})
	}
	slices.SortFunc(out, func(a, b *pb.WorkerInfo) int { return cmp.Compare(a.Id, b.Id) })
	return out
}

func (l *leader) isLeaving(worker string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.workers[worker]
	return w != nil && w.hb.Leaving
}

func slotsOf(hb *pb.Heartbeat) int32 { return max(hb.GetSlots(), 1) }

// usedSlots counts the unfinished ranks each worker holds in running jobs.
func usedSlots(jobs []*cpb.Job) map[string]int {
	used := map[string]int{}
	for _, j := range jobs {
		if j.State != pb.JobState_JOB_STATE_RUNNING {
			continue
		}
		for r, rk := range j.Plan.GetRanks() {
			if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); !done {
				used[rk.WorkerId]++
			}
		}
	}
	return used
}

// ---- the scheduler ----

// tick is one scheduling round. It runs on the scheduler goroutine only,
// holds no lock across its effects, and contains panics: one per job (that
// job fails) and one for the round.
func (l *leader) tick() { l.guard("scheduling", l.schedule) }

func (l *leader) schedule() {
	c := l.c
	now := c.now()
	var jobs []*cpb.Job
	c.fsm.view(func(s *State) { jobs = s.Jobs(nil) })
	live := l.liveWorkers(now)
	used := usedSlots(jobs)
	grace := now.Sub(l.since) < c.cfg.HeartbeatTimeout
	c.met.workersLive.Set(float64(len(live)))

	var queued []*cpb.Job
	for _, j := range jobs {
		if l.ctx.Err() != nil {
			return
		}
		switch j.State {
		case pb.JobState_JOB_STATE_QUEUED:
			queued = append(queued, j)
		case pb.JobState_JOB_STATE_RUNNING:
			l.guardJob("scheduling", j, func() { l.tickRunning(j, live, used, grace, now) })
		}
	}
	slices.SortStableFunc(queued, func(a, b *cpb.Job) int {
		if d := cmp.Compare(b.Spec.GetPriority(), a.Spec.GetPriority()); d != 0 {
			return d
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	for _, j := range queued {
		if l.ctx.Err() != nil {
			return
		}
		if deadlinePassed(j, now) {
			l.finish(j, pb.JobState_JOB_STATE_FAILED, "deadline exceeded while queued")
			continue
		}
		cands := l.candidates(live, used, nil, now)
		if len(cands) == 0 {
			break // strict priority/FIFO: the head waits for capacity
		}
		l.guardJob("scheduling", j, func() { l.startEpoch(j, cands, nil, used, "") })
	}
	l.maybeExpire(jobs, now)
	l.maybeSweep(now)
	l.forget()
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

func deadlinePassed(j *cpb.Job, now time.Time) bool {
	d := j.Spec.GetDeadlineUnixMs()
	return d > 0 && now.UnixMilli() >= d
}

func (l *leader) tickRunning(j *cpb.Job, live map[string]*pb.Heartbeat, used map[string]int, grace bool, now time.Time) {
	if h := l.c.hooks.Load(); h != nil && h.tick != nil {
		h.tick(j)
	}
	if deadlinePassed(j, now) {
		l.finish(j, pb.JobState_JOB_STATE_FAILED, fmt.Sprintf("deadline exceeded in epoch %d (%d of %d blocks done)", j.Epoch, len(j.DoneBlocks), j.BlocksTotal))
		return
	}
	if int64(len(j.DoneBlocks)) == j.BlocksTotal {
		if forwardOfFB(j) && l.verified(j) {
			l.replanJob(j, "", live, used, now) // the backward pass starts
			return
		}
		l.complete(j)
		return
	}
	l.mu.Lock()
	rq, flagged := l.replan[j.Id]
	if flagged && rq.epoch != j.Epoch {
		delete(l.replan, j.Id)
		flagged = false
	}
	l.mu.Unlock()
	reason := rq.reason
	if !flagged && len(j.DoneRanks) == len(j.Plan.GetRanks()) {
		// Every rank reported, yet blocks are not done (a redo, or a new
		// leader after one): plan the rest.
		reason = fmt.Sprintf("epoch %d ended with %d of %d blocks done", j.Epoch, len(j.DoneBlocks), j.BlocksTotal)
	}
	if reason == "" && !grace {
		for r, rk := range j.Plan.GetRanks() {
			if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); done {
				continue
			}
			if _, ok := live[rk.WorkerId]; !ok {
				reason = fmt.Sprintf("worker %s of rank %d is gone", rk.WorkerId, r)
				break
			}
		}
	}
	if reason == "" && !flagged && grace {
		// In the grace period only an explicit leave counts: workers not
		// heard from yet may still be alive.
		for r, rk := range j.Plan.GetRanks() {
			if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); !done && l.isLeaving(rk.WorkerId) {
				reason = fmt.Sprintf("worker %s of rank %d is leaving", rk.WorkerId, r)
				break
			}
		}
	}
	if reason == "" && !grace {
		reason = l.watchdog(j, live, now)
	}
	if reason != "" {
		l.replanJob(j, reason, live, used, now)
		return
	}
	l.maybePublishProgress(j, now)
	// (Re-)issue assignments: every rank not done whose worker is live
	// and has not acknowledged this epoch in this leadership term, or whose
	// heartbeats stopped listing it.
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
// counting the ranks of job `freeing` (being re-planned) as free.
func (l *leader) candidates(live map[string]*pb.Heartbeat, used map[string]int, freeing *cpb.Job, now time.Time) []*pb.Heartbeat {
	own := map[string]int{}
	if freeing != nil {
		for r, rk := range freeing.Plan.GetRanks() {
			if _, done := slices.BinarySearch(freeing.DoneRanks, int32(r)); !done {
				own[rk.WorkerId]++
			}
		}
	}
	// Shards whose reports the log has committed are finished, even if the
	// worker's last heartbeat (sent before the ack) still lists them.
	type shard struct {
		job   string
		epoch uint64
		rank  int32
	}
	reported := map[shard]bool{}
	l.c.fsm.view(func(s *State) {
		for _, hb := range live {
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
	var out []*pb.Heartbeat
	for id, hb := range live {
		if until, ok := l.suspect[id]; ok && now.Before(until) {
			continue
		}
		// Busy is what the log says this worker holds, or what the worker
		// says it holds if that is more (shards of canceled jobs or old
		// epochs it has not dropped yet still take its slots).
		busy := used[id] - own[id]
		held := 0
		for _, ref := range hb.Running {
			if (freeing == nil || ref.JobId != freeing.Id) && !reported[shard{ref.JobId, ref.Epoch, ref.Rank}] {
				held++
			}
		}
		if max(busy, held) < int(slotsOf(hb)) {
			out = append(out, hb)
		}
	}
	slices.SortFunc(out, func(a, b *pb.Heartbeat) int {
		if d := cmp.Compare(b.Gflops, a.Gflops); d != 0 {
			return d
		}
		return cmp.Compare(a.WorkerId, b.WorkerId)
	})
	return out
}

func (l *leader) replanJob(j *cpb.Job, reason string, live map[string]*pb.Heartbeat, used map[string]int, now time.Time) {
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
	cands := l.candidates(live, used, j, now)
	if len(cands) == 0 {
		l.mu.Lock()
		l.replan[j.Id] = replanReq{epoch: j.Epoch, reason: reason}
		l.mu.Unlock()
		l.log.Debug("re-plan waits for a free worker", "job", j.Id, "epoch", j.Epoch, "reason", reason)
		return
	}
	l.startEpoch(j, cands, left, used, reason)
}

// startEpoch plans job j over cands (restricted to qblocks when
// re-planning), commits the new epoch and sends its assignments.
func (l *leader) startEpoch(j *cpb.Job, cands []*pb.Heartbeat, qblocks []int, used map[string]int, reason string) {
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
	req.Weights, req.QBlocks = planWeights(cands), qblocks
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
	for _, rk := range plan.Ranks {
		used[rk.WorkerId]++
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
		Bucket: l.c.bucket(), InputRef: inputRef(j), OutputRef: j.Id,
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
	if err := l.c.conn.PublishEvent(ev); err != nil {
		l.log.Debug("publish event failed", "job", j.Id, "err", err)
	}
}

// maybeExpire runs expire in the background unless it already runs: its
// store deletes may take long (a store down times out after 30 s per job)
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
	refs := map[string]int{} // input namespaces still used by live jobs
	for _, j := range jobs {
		if j.State != pb.JobState_JOB_STATE_EXPIRED {
			refs[inputRef(j)]++
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
			if err := l.deleteTensors(j, refs[inputRef(j)] <= 1); err != nil {
				l.log.Warn("deleting expired job's tensors failed; will retry", "job", j.Id, "err", err)
				l.mu.Lock()
				l.deleteAt[j.Id] = now.Add(min(10*time.Second, max(c.cfg.JobTTL, c.cfg.SchedulerInterval)))
				l.mu.Unlock()
				continue
			}
			refs[inputRef(j)]--
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
// them, its inputs. Deletion is idempotent: a new leader may repeat it.
func (l *leader) deleteTensors(j *cpb.Job, inputs bool) error {
	td := l.c.deps.Tensors
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
