package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// leader is one leadership term's session: the scheduler, the worker
// registry (soft state, rebuilt from heartbeats), the report handler and
// the client API. It is built fresh each time this node becomes leader and
// reads everything durable from the FSM, so a new leader resumes every job
// where the log says it is and re-issues each running job's current epoch.
//
// Lock order: planMu before mu. mu guards the soft state only and is never
// held across a Raft apply or a NATS request.
type leader struct {
	c     *Coordinator
	log   *slog.Logger
	ctx   context.Context
	stopF context.CancelFunc
	wakeC chan struct{}
	since time.Time
	ready atomic.Bool
	term  uint64

	// planMu serialises planning decisions (the tick, failure reports).
	planMu sync.Mutex

	mu       sync.Mutex
	stopped  bool
	wg       sync.WaitGroup
	workers  map[string]*workerInfo
	sent     map[shardKey]*sendState
	replan   map[string]replanReq
	suspect  map[string]time.Time // worker -> excluded from plans until
	deleteAt map[string]time.Time // job -> next tensor-deletion attempt
	subs     []*nats.Subscription
	svc      micro.Service
}

type workerInfo struct {
	hb   *pb.Heartbeat
	seen time.Time
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
	}
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
	subs, svc := l.subs, l.svc
	l.subs, l.svc = nil, nil
	l.mu.Unlock()
	l.ready.Store(false)
	if svc != nil {
		if err := svc.Stop(); err != nil {
			l.log.Warn("stopping API service", "err", err)
		}
	}
	for _, s := range subs {
		_ = s.Unsubscribe()
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

// listen subscribes to heartbeats and reports and starts the API service.
func (l *leader) listen() error {
	c := l.c
	hb, err := c.nc.Subscribe(c.subj.Heartbeat(), l.onHeartbeat)
	if err != nil {
		return fmt.Errorf("subscribe heartbeats: %w", err)
	}
	rep, err := c.nc.Subscribe(c.subj.Report(), func(m *nats.Msg) {
		if !l.enter() {
			return
		}
		go func() {
			defer l.wg.Done()
			l.respond(m, l.handleReport(m.Data))
		}()
	})
	if err != nil {
		_ = hb.Unsubscribe()
		return fmt.Errorf("subscribe reports: %w", err)
	}
	svc, err := l.startAPI()
	if err != nil {
		_ = hb.Unsubscribe()
		_ = rep.Unsubscribe()
		return err
	}
	if err := c.nc.Flush(); err != nil {
		_ = hb.Unsubscribe()
		_ = rep.Unsubscribe()
		_ = svc.Stop()
		return fmt.Errorf("flush subscriptions: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		_ = hb.Unsubscribe()
		_ = rep.Unsubscribe()
		_ = svc.Stop()
		return context.Canceled
	}
	l.subs = []*nats.Subscription{hb, rep}
	l.svc = svc
	return nil
}

func (l *leader) respond(m *nats.Msg, reply proto.Message) {
	if m.Reply == "" {
		return
	}
	data, err := proto.Marshal(reply)
	if err == nil {
		err = m.Respond(data)
	}
	if err != nil {
		l.log.Debug("reply failed", "subject", m.Subject, "err", err)
	}
}

// ---- worker registry ----

func (l *leader) onHeartbeat(m *nats.Msg) {
	var hb pb.Heartbeat
	if err := proto.Unmarshal(m.Data, &hb); err != nil || validName("worker_id", hb.WorkerId, true) != nil {
		l.log.Warn("dropping malformed heartbeat", "bytes", len(m.Data), "err", err)
		return
	}
	now := l.c.now()
	l.mu.Lock()
	old, known := l.workers[hb.WorkerId]
	l.workers[hb.WorkerId] = &workerInfo{hb: &hb, seen: now}
	l.mu.Unlock()
	if !known || hb.Leaving != old.hb.GetLeaving() {
		l.log.Info("worker heartbeat", "worker", hb.WorkerId, "slots", hb.Slots, "gflops", hb.Gflops, "leaving", hb.Leaving, "new", !known)
		l.wake()
	}
	if m.Reply != "" {
		l.respond(m, &pb.HeartbeatAck{LeaderId: l.c.cfg.NodeID, Term: l.term, Abort: l.aborts(&hb)})
	}
}

// aborts lists the shards a worker holds that are over: their job finished
// or moved to a newer epoch, or the rank belongs to another worker.
func (l *leader) aborts(hb *pb.Heartbeat) []*pb.ShardRef {
	var out []*pb.ShardRef
	l.c.fsm.view(func(s *State) {
		for _, ref := range hb.Running {
			j := s.jobs[ref.JobId]
			over := j == nil || Terminal(j.State) || ref.Epoch < j.Epoch
			if !over && ref.Epoch == j.Epoch {
				ranks := j.Plan.GetRanks()
				over = ref.Rank < 0 || int(ref.Rank) >= len(ranks) || ranks[ref.Rank].WorkerId != hb.WorkerId
			}
			if over {
				out = append(out, proto.CloneOf(ref))
			}
		}
	})
	return out
}

// liveWorkers returns the workers that may take work now, dropping those
// not heard from within HeartbeatTimeout.
func (l *leader) liveWorkers(now time.Time) map[string]*pb.Heartbeat {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := map[string]*pb.Heartbeat{}
	for id, w := range l.workers {
		if now.Sub(w.seen) > l.c.cfg.HeartbeatTimeout {
			l.log.Warn("worker lost: missed heartbeats", "worker", id, "last_seen", w.seen)
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

func (l *leader) tick() {
	l.planMu.Lock()
	defer l.planMu.Unlock()
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
			l.tickRunning(j, live, used, grace, now)
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
		l.startEpoch(j, cands, nil, used, "")
	}
	l.expire(jobs, now)
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
}

func deadlinePassed(j *cpb.Job, now time.Time) bool {
	d := j.Spec.GetDeadlineUnixMs()
	return d > 0 && now.UnixMilli() >= d
}

func (l *leader) tickRunning(j *cpb.Job, live map[string]*pb.Heartbeat, used map[string]int, grace bool, now time.Time) {
	if deadlinePassed(j, now) {
		l.finish(j, pb.JobState_JOB_STATE_FAILED, fmt.Sprintf("deadline exceeded in epoch %d (%d of %d blocks done)", j.Epoch, len(j.DoneBlocks), j.BlocksTotal))
		return
	}
	if int64(len(j.DoneBlocks)) == j.BlocksTotal {
		l.finish(j, pb.JobState_JOB_STATE_SUCCEEDED, "")
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
	if !flagged && !grace {
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
	if !flagged && grace {
		// In the grace period only an explicit leave counts: workers not
		// heard from yet may still be alive.
		for r, rk := range j.Plan.GetRanks() {
			if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); !done && l.isLeaving(rk.WorkerId) {
				reason = fmt.Sprintf("worker %s of rank %d is leaving", rk.WorkerId, r)
				break
			}
		}
	}
	if reason != "" {
		l.replanJob(j, reason, live, used, now)
		return
	}
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
	if int64(len(j.DoneBlocks)) == j.BlocksTotal {
		l.finish(j, pb.JobState_JOB_STATE_SUCCEEDED, "")
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
	nq := int(j.BlocksTotal)
	if qblocks != nil {
		nq = len(qblocks)
	}
	nk := int(BlockCount(&pb.JobSpec{N: j.Spec.GetNk(), Block: j.Spec.GetBlock()}))
	w = max(1, min(w, max(nq, nk)))
	cands = cands[:w]
	weights := make([]float64, w)
	for i, hb := range cands {
		weights[i] = hb.Gflops
		if !(weights[i] > 0) {
			weights[i] = 1
		}
	}
	sp, err := shard.NewPlan(planRequest(j.Spec, w, weights, qblocks))
	if err != nil {
		l.finish(j, pb.JobState_JOB_STATE_FAILED, "cannot plan: "+err.Error())
		return
	}
	plan := planProto(sp, cands)
	epoch := j.Epoch + 1
	r, err := c.apply(cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: j.Id, Epoch: epoch, Plan: plan, UnixMs: c.now().UnixMilli()})
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
	if reason != "" {
		msg += "; re-planned: " + reason
	}
	l.publish(r.Job, pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED, -1, "", msg)
	for rank := range plan.Ranks {
		l.send(r.Job, int32(rank))
	}
}

func planProto(sp *shard.Plan, workers []*pb.Heartbeat) *pb.Plan {
	p := &pb.Plan{
		Strategy: string(sp.Strategy), N: int64(sp.N), Nk: int64(sp.Nk), Block: int64(sp.Block),
		QBlockCount: int32(sp.QBlockCount), KBlockCount: int32(sp.KBlockCount), Steps: int32(sp.Steps),
		Imbalance: sp.Imbalance,
	}
	for i, rk := range sp.Ranks {
		rp := &pb.RankPlan{Cost: rk.Cost, Bytes: rk.Bytes, WorkerId: workers[i%len(workers)].WorkerId}
		for _, b := range rk.QBlocks {
			rp.QBlocks = append(rp.QBlocks, int32(b))
		}
		for _, b := range rk.KVBlocks {
			rp.KvBlocks = append(rp.KvBlocks, int32(b))
		}
		p.Ranks = append(p.Ranks, rp)
	}
	return p
}

// assignment is what rank `rank` of j's current epoch needs to run.
func (l *leader) assignment(j *cpb.Job, rank int32) *pb.Assignment {
	s := j.Spec
	scale := s.Scale
	if scale == 0 {
		scale = 1 / math.Sqrt(float64(s.D))
	}
	return &pb.Assignment{
		JobId: j.Id, Epoch: j.Epoch, Rank: rank, Size: int32(len(j.Plan.GetRanks())), Plan: j.Plan,
		Params: &pb.KernelParams{
			Kind: s.Kind, B: s.B, Hq: s.Hq, Hkv: s.Hkv, D: s.D, DModel: s.DModel, Mask: s.Mask, Scale: scale,
			WireDtype: s.WireDtype, WantLse: s.WantLse, AllowNonfinite: s.AllowNonfinite, MhaBias: s.MhaBias,
		},
		Bucket: l.c.bucket(), InputRef: inputRef(j), OutputRef: j.Id,
		DeadlineUnixMs: s.DeadlineUnixMs, LeaderId: l.c.cfg.NodeID, Term: l.term,
	}
}

func inputRef(j *cpb.Job) string {
	if r := j.Spec.GetInputRef(); r != "" {
		return r
	}
	return j.Spec.GetIdempotencyKey()
}

// send delivers one assignment (asynchronously). A worker that does not
// accept it is excluded from plans for a while and the job re-planned.
func (l *leader) send(j *cpb.Job, rank int32) {
	k := shardKey{j.Id, j.Epoch, rank}
	worker := j.Plan.Ranks[rank].WorkerId
	l.mu.Lock()
	l.sent[k] = &sendState{at: l.c.now(), inflight: true}
	l.mu.Unlock()
	a := l.assignment(j, rank)
	if !l.enter() {
		return
	}
	go func() {
		defer l.wg.Done()
		err := l.request(l.c.subj.Assign(worker), a)
		l.mu.Lock()
		defer l.mu.Unlock()
		st := l.sent[k]
		if st == nil {
			return
		}
		st.inflight = false
		if err == nil {
			st.acked = true
			st.at = l.c.now()
			l.c.met.assignments.WithLabelValues("accepted").Inc()
			return
		}
		l.c.met.assignments.WithLabelValues("failed").Inc()
		if l.ctx.Err() != nil {
			return
		}
		l.log.Warn("assignment not accepted; re-planning without the worker", "job", k.job, "epoch", k.epoch, "rank", k.rank, "worker", worker, "err", err)
		delete(l.sent, k)
		l.suspect[worker] = l.c.now().Add(l.c.cfg.HeartbeatTimeout)
		l.replan[k.job] = replanReq{epoch: k.epoch, reason: fmt.Sprintf("worker %s did not accept rank %d: %v", worker, k.rank, err)}
		l.wake()
	}()
}

func (l *leader) request(subject string, a *pb.Assignment) error {
	data, err := proto.Marshal(a)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.c.cfg.AssignTimeout)
	defer cancel()
	m, err := l.c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return err
	}
	var ack pb.AssignmentAck
	if err := proto.Unmarshal(m.Data, &ack); err != nil {
		return fmt.Errorf("bad assignment ack: %w", err)
	}
	if !ack.Accepted {
		return fmt.Errorf("rejected: %s", ack.Reason)
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
	l.publish(j, pb.JobEventType_JOB_EVENT_TYPE_FINISHED, -1, "", j.Reason)
}

func (l *leader) publish(j *cpb.Job, typ pb.JobEventType, rank int32, worker, msg string) {
	ev := &pb.JobEvent{
		Type: typ, JobId: j.Id, Epoch: j.Epoch, State: j.State, BlocksDone: int64(len(j.DoneBlocks)),
		BlocksTotal: j.BlocksTotal, Rank: rank, WorkerId: worker, Message: msg, UnixMs: l.c.now().UnixMilli(),
	}
	data, err := proto.Marshal(ev)
	if err == nil {
		err = l.c.nc.Publish(l.c.subj.JobEvents(j.Id), data)
	}
	if err != nil {
		l.log.Debug("publish event failed", "job", j.Id, "err", err)
	}
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

// ---- reports ----

func ack(st pb.ReportStatus, js pb.JobState, format string, args ...any) *pb.ReportAck {
	return &pb.ReportAck{Status: st, JobState: js, Message: fmt.Sprintf(format, args...)}
}

// handleReport commits a worker's report and says what became of it. The
// ack is sent only after the change is committed, so a worker that retries
// until it gets ACCEPTED, DUPLICATE or STALE loses nothing across a leader
// change, and a repeated report changes nothing.
func (l *leader) handleReport(data []byte) *pb.ReportAck {
	c := l.c
	a := l.report(data)
	a.LeaderId = c.cfg.NodeID
	c.met.reports.WithLabelValues(reportStatusName(a.Status)).Inc()
	return a
}

func (l *leader) report(data []byte) *pb.ReportAck {
	c := l.c
	var rep pb.Report
	if err := proto.Unmarshal(data, &rep); err != nil {
		return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, 0, "malformed report: %v", err)
	}
	if e := validName("job_id", rep.JobId, true); e != nil {
		return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, 0, "%v", e)
	}
	if !l.isReady() {
		return ack(pb.ReportStatus_REPORT_STATUS_RETRY, 0, "leader not ready")
	}
	switch res := rep.Result.(type) {
	case *pb.Report_Done:
		r, err := c.apply(cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{
			JobId: rep.JobId, Epoch: rep.Epoch, Rank: rep.Rank, WorkerId: rep.WorkerId,
			Blocks: res.Done.GetBlocks(), UnixMs: c.now().UnixMilli(),
		})
		switch {
		case err != nil:
			return ack(pb.ReportStatus_REPORT_STATUS_RETRY, 0, "%v", err)
		case errors.Is(r.Err, ErrStaleEpoch), errors.Is(r.Err, ErrFinished):
			return ack(pb.ReportStatus_REPORT_STATUS_STALE, r.Job.GetState(), "%v", r.Err)
		case r.Err != nil:
			return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, r.Job.GetState(), "%v", r.Err)
		case r.Existing:
			return ack(pb.ReportStatus_REPORT_STATUS_DUPLICATE, r.Job.State, "already recorded")
		}
		j := r.Job
		l.publish(j, pb.JobEventType_JOB_EVENT_TYPE_SHARD_DONE, rep.Rank, rep.WorkerId,
			fmt.Sprintf("rank %d done: %d of %d blocks", rep.Rank, len(j.DoneBlocks), j.BlocksTotal))
		if int64(len(j.DoneBlocks)) == j.BlocksTotal {
			l.finish(j, pb.JobState_JOB_STATE_SUCCEEDED, "")
		}
		return ack(pb.ReportStatus_REPORT_STATUS_ACCEPTED, j.State, "committed")
	case *pb.Report_Failed:
		return l.reportFailed(&rep, res.Failed)
	default:
		return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, 0, "report carries neither done nor failed")
	}
}

func (l *leader) reportFailed(rep *pb.Report, f *pb.ShardFailed) *pb.ReportAck {
	c := l.c
	l.planMu.Lock()
	defer l.planMu.Unlock()
	var j *cpb.Job
	c.fsm.view(func(s *State) { j = s.Job(rep.JobId) })
	switch {
	case j == nil:
		return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, 0, "unknown job %s", rep.JobId)
	case Terminal(j.State) || j.State != pb.JobState_JOB_STATE_RUNNING || rep.Epoch != j.Epoch:
		return ack(pb.ReportStatus_REPORT_STATUS_STALE, j.State, "job %s is %v in epoch %d", j.Id, j.State, j.Epoch)
	case rep.Rank < 0 || int(rep.Rank) >= len(j.Plan.GetRanks()):
		return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, j.State, "rank %d outside [0,%d)", rep.Rank, len(j.Plan.GetRanks()))
	}
	why := fmt.Sprintf("rank %d on worker %s: %s", rep.Rank, rep.WorkerId, f.Reason)
	if f.Block >= 0 {
		why += fmt.Sprintf(" (block %d)", f.Block)
	}
	l.publish(j, pb.JobEventType_JOB_EVENT_TYPE_ERROR, rep.Rank, rep.WorkerId, why)
	if f.Fatal {
		r, err := c.apply(cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: j.Id, Reason: why, UnixMs: c.now().UnixMilli()})
		if err != nil {
			return ack(pb.ReportStatus_REPORT_STATUS_RETRY, j.State, "%v", err)
		}
		if r.Err == nil && !r.Existing {
			l.finished(r.Job)
		}
		return ack(pb.ReportStatus_REPORT_STATUS_ACCEPTED, r.Job.GetState(), "job failed")
	}
	now := c.now()
	l.mu.Lock()
	l.suspect[rep.WorkerId] = now.Add(c.cfg.HeartbeatTimeout)
	l.mu.Unlock()
	var jobs []*cpb.Job
	c.fsm.view(func(s *State) {
		jobs = s.Jobs(func(x *cpb.Job) bool { return x.State == pb.JobState_JOB_STATE_RUNNING })
	})
	l.replanJob(j, why, l.liveWorkers(now), usedSlots(jobs), now)
	return ack(pb.ReportStatus_REPORT_STATUS_ACCEPTED, pb.JobState_JOB_STATE_RUNNING, "re-planning")
}
