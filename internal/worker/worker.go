package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/metrics"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Worker is one worker process's service. Build it with New, start it with
// Run, stop it gracefully with Drain or abruptly by ending Run's context.
//
// Locking: mu guards every field below it; it is never held across a
// request/reply, a store access (opening a bucket included) or a wait on
// a shard (it is held while subscribing to or unsubscribing from a job's
// events, which only buffer a protocol line). Lock order: mu, then the
// leaves — outputs.mu, mhaSource.mu and failFastRing.mu are never held
// while taking another lock of the package, and mu is never taken under
// them. NATS handlers (assignments, job events) and the heartbeat loop
// take mu only briefly and never call NATS while holding it.
//
// Containment: every NATS handler, the heartbeat loop, report delivery
// and every rank's goroutine recover panics (logged with the stack,
// counted in ringattn_worker_panics_total); a rank that panicked reports
// FAILED, not fatal ("internal error"), and the worker lives on.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	met     *workerMetrics
	gather  prometheus.Gatherer
	subj    transport.Subjects
	threads int

	started chan struct{} // closed when Run is entered
	ready   chan struct{} // closed when connected, measured and subscribed
	drainCh chan struct{} // closed by Drain: Run returns once drained
	stopped chan struct{} // closed when Run returned

	mu        sync.Mutex
	run       bool
	nc        *nats.Conn
	store     *transport.Store
	stores    map[string]*transport.Store // other buckets named by assignments
	gflops    float64
	addr      string
	draining  bool
	shards    map[shardKey]*shardRun
	jobEpoch  map[string]epochMark          // highest epoch seen per job
	jobSubs   map[string]*nats.Subscription // event subscriptions of jobs held
	unwinding map[*shardRun]struct{}        // stopped shards whose computation has not returned yet
	drainOnce sync.Once
	wg        sync.WaitGroup // shard and report goroutines

	// hooks are test seams; zero in production.
	hooks hooks
}

// epochMark remembers the newest epoch of a job seen here (assigned, or
// announced on the job's events), so older assignments are refused.
type epochMark struct {
	epoch uint64
	at    time.Time
}

// hooks let the package's tests stall a rank at a ring step, panic in a
// handler and watch store openings.
type hooks struct {
	// progress is called from the rank's goroutine after each ring step;
	// blocking it holds the rank at that step.
	progress func(ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress)
	// handler is called as a NATS handler or background loop iteration
	// starts, with its name ("assign", "job events", "heartbeat", "shard
	// <job>/<epoch>/<rank>", "report delivery ..."); a test panics in it.
	handler func(where string)
	// openStore is called before a store of another bucket is opened.
	openStore func(bucket string)
}

// ShardStatus describes one shard the worker holds.
type ShardStatus struct {
	Job   string
	Epoch uint64
	Rank  int
	// State is "running", "reporting" (finished, report not yet answered)
	// or "reported" (answered; kept for idempotent re-assignment).
	State string
}

// Shards lists the shards the worker holds, ordered by job, epoch, rank.
func (w *Worker) Shards() []ShardStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]ShardStatus, 0, len(w.shards))
	for k, s := range w.shards {
		st := "running"
		switch {
		case s.settled():
			st = "reported"
		case s.finished():
			st = "reporting"
		}
		out = append(out, ShardStatus{Job: k.job, Epoch: k.epoch, Rank: int(k.rank), State: st})
	}
	slices.SortFunc(out, func(a, b ShardStatus) int {
		return cmp.Or(cmp.Compare(a.Job, b.Job), cmp.Compare(a.Epoch, b.Epoch), cmp.Compare(a.Rank, b.Rank))
	})
	return out
}

// Draining reports whether Drain has begun.
func (w *Worker) Draining() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.draining
}

// New validates cfg and returns a worker; nothing is started.
func New(cfg Config) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	reg, gather := cfg.Registerer, cfg.Gatherer
	if reg == nil {
		r := metrics.NewRegistry()
		reg, gather = r, r
	}
	if gather == nil {
		gather, _ = reg.(prometheus.Gatherer)
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("worker: registering metrics: %w", err)
	}
	threads := cfg.Threads
	if threads == 0 {
		threads = max(1, runtime.GOMAXPROCS(0)/cfg.Slots)
	}
	return &Worker{
		cfg:       cfg,
		log:       cfg.Logger.With("worker", cfg.ID),
		met:       met,
		gather:    gather,
		subj:      cfg.NATS.Subjects(),
		threads:   threads,
		started:   make(chan struct{}),
		ready:     make(chan struct{}),
		drainCh:   make(chan struct{}),
		stopped:   make(chan struct{}),
		shards:    map[shardKey]*shardRun{},
		stores:    map[string]*transport.Store{},
		jobEpoch:  map[string]epochMark{},
		jobSubs:   map[string]*nats.Subscription{},
		unwinding: map[*shardRun]struct{}{},
	}, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Ready is closed once the worker is connected, has measured its speed and
// listens for assignments.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Done is closed when Run has returned.
func (w *Worker) Done() <-chan struct{} { return w.stopped }

// GFLOPS returns the kernel speed the worker reports (0 before Ready).
func (w *Worker) GFLOPS() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gflops
}

// MetricsAddr returns the address the HTTP metrics server listens on, ""
// when disabled or not started.
func (w *Worker) MetricsAddr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.addr
}

// Run connects, measures the kernel speed, and serves assignments until
// ctx ends (an abrupt stop: running shards are canceled, no leave notice is
// sent, Run returns nil) or until Drain completes (Run returns nil). It
// returns an error when it cannot start.
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.run {
		w.mu.Unlock()
		return ErrStarted
	}
	w.run = true
	w.mu.Unlock()
	close(w.started)
	defer close(w.stopped)

	nc, err := w.connect(ctx)
	if err != nil {
		if isClosed(w.drainCh) {
			w.log.Info("drained before connecting")
			return nil
		}
		return err
	}
	defer nc.Close()
	store, err := transport.OpenStore(ctx, nc, w.storeConfig(), w.log)
	if err != nil {
		return fmt.Errorf("worker: opening the tensor store: %w", err)
	}
	gf := w.cfg.GFLOPS
	if gf == 0 {
		if gf, err = MeasureGFLOPS(ctx, w.cfg.MeasureDuration, w.threads); err != nil {
			return fmt.Errorf("worker: measuring kernel speed: %w", err)
		}
	}
	w.met.gflops.Set(gf)

	// runCtx ends on an abrupt stop; every shard context derives from it.
	runCtx, cancelRun := context.WithCancelCause(ctx)
	defer cancelRun(ErrStopped)

	var srv *http.Server
	if w.cfg.MetricsAddr != MetricsDisabled {
		ln, err := net.Listen("tcp", w.cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("worker: metrics listener on %q: %w", w.cfg.MetricsAddr, err)
		}
		srv = &http.Server{Handler: w.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		w.mu.Lock()
		w.addr = ln.Addr().String()
		w.mu.Unlock()
	}

	w.mu.Lock()
	w.nc, w.store, w.gflops = nc, store, gf
	w.mu.Unlock()

	sub, err := nc.Subscribe(w.subj.Assign(w.cfg.ID), func(m *nats.Msg) {
		replied := false
		defer func() {
			if r := recover(); r != nil {
				_ = w.recovered("assign", r)
				if !replied && m.Reply != "" {
					data, _ := proto.Marshal(&pb.AssignmentAck{Reason: "internal error"})
					_ = m.Respond(data)
				}
			}
		}()
		if h := w.hooks.handler; h != nil {
			h("assign")
		}
		w.onAssign(runCtx, m, &replied)
	})
	if err != nil {
		return fmt.Errorf("worker: subscribing to assignments: %w", err)
	}
	defer sub.Unsubscribe() //nolint:errcheck // closing anyway
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("worker: subscribing to assignments: %w", err)
	}
	w.log.Info("worker ready", "gflops", fmt.Sprintf("%.1f", gf), "slots", w.cfg.Slots, "threads", w.threads,
		"metrics", w.MetricsAddr(), "assign", w.subj.Assign(w.cfg.ID))
	close(w.ready)

	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		w.heartbeatLoop(runCtx)
	}()
	w.safely("heartbeat", func() { w.heartbeat(runCtx) }) // announce at once

	select {
	case <-ctx.Done():
		// The embedding program ended the context (ringattn dev on
		// Ctrl-C, a test): a stop it asked for, logged as such. Shards
		// still held are abandoned and re-planned by the leader.
		w.log.Info("worker stopping: its context ended (no drain)", "cause", context.Cause(ctx))
	case <-w.drainCh:
	}
	_ = sub.Unsubscribe()
	cancelRun(ErrStopped)
	<-hbDone
	w.abortAll(ErrStopped)
	w.wg.Wait()
	w.mu.Lock()
	for job, s := range w.jobSubs {
		_ = s.Unsubscribe()
		delete(w.jobSubs, job)
	}
	w.mu.Unlock()
	if drained := isClosed(w.drainCh); drained {
		// The last word: leaving with nothing held.
		// Flush only a live connection, and briefly: nats.go's Flush waits
		// 10 s for a server that is gone, and a drain must end within its
		// timeout even when NATS is unreachable.
		w.sendHeartbeat(context.Background(), nc, true)
		if nc.IsConnected() {
			_ = nc.FlushTimeout(finalFlushTimeout)
		}
	}
	w.log.Info("worker stopped")
	return nil
}

// connect dials NATS, retrying with backoff while no server is reachable
// (NATS may start after the worker) until ctx ends; bad configuration and
// rejected credentials fail at once.
func (w *Worker) connect(ctx context.Context) (*nats.Conn, error) {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := transport.Connect(w.cfg.NATS, w.log)
		if err == nil {
			return nc, nil
		}
		if !errors.Is(err, transport.ErrConnect) {
			return nil, err
		}
		w.log.Warn("cannot reach NATS yet; retrying", "attempt", attempt, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("worker: %w (gave up: %v)", err, context.Cause(ctx))
		case <-w.drainCh:
			return nil, fmt.Errorf("worker: drained before connecting: %w", err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (w *Worker) storeConfig() transport.StoreConfig {
	return w.cfg.NATS.StoreConfig()
}

// Drain stops the worker gracefully: it takes no new work, tells the leader
// at once that it is leaving (heartbeat leaving = true, so its unfinished
// shards are re-planned without waiting for a timeout), lets running shards
// finish and their reports be acknowledged until ctx ends — or
// Config.DrainTimeout when ctx has no deadline — abandons what is left,
// and makes Run return nil. Drain returns when Run has returned (at once
// when Run never started).
func (w *Worker) Drain(ctx context.Context) {
	select {
	case <-w.started:
	default:
		return
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, w.cfg.DrainTimeout)
		defer cancel()
	}
	w.drainOnce.Do(func() {
		w.mu.Lock()
		w.draining = true
		n := len(w.shards)
		w.mu.Unlock()
		w.met.leaving.Set(1)
		w.log.Info("draining", "shards_held", n)
		if isClosed(w.ready) {
			w.heartbeat(ctx)
		}
		// Wait until nothing is held (shards finished and acknowledged, or
		// aborted by the leader) or the drain timeout.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			w.mu.Lock()
			n = len(w.pendingLocked())
			w.mu.Unlock()
			if n == 0 {
				break
			}
			select {
			case <-ctx.Done():
				w.log.Warn("drain timeout: abandoning shards", "shards", n)
				w.abortAll(ErrDrained)
			case <-tick.C:
				continue
			case <-w.stopped:
			}
			break
		}
		close(w.drainCh)
	})
	<-w.stopped
}

// finalFlushTimeout bounds the flush of the last heartbeat at exit.
const finalFlushTimeout = 500 * time.Millisecond

// pendingLocked lists the shards still held: running, or finished with a
// report not yet acknowledged.
func (w *Worker) pendingLocked() []*shardRun {
	var out []*shardRun
	for _, s := range w.shards {
		if !s.settled() {
			out = append(out, s)
		}
	}
	return out
}

func (w *Worker) httpHandler() http.Handler {
	mux := http.NewServeMux()
	if w.gather != nil {
		mux.Handle("/metrics", metrics.Handler(w.gather))
	}
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Write([]byte("ok\n")) //nolint:errcheck
	})
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		w.mu.Lock()
		nc, draining := w.nc, w.draining
		w.mu.Unlock()
		if nc == nil || !nc.IsConnected() || draining {
			http.Error(rw, "not ready", http.StatusServiceUnavailable)
			return
		}
		rw.Write([]byte("ok\n")) //nolint:errcheck
	})
	return mux
}

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
	nc := w.nc
	w.mu.Unlock()
	if nc != nil {
		w.sendHeartbeat(ctx, nc, false)
	}
}

// sendHeartbeat sends one heartbeat as a request and applies the leader's
// abort list; the final one (leaving, nothing held) is only published.
// abort list.
func (w *Worker) sendHeartbeat(ctx context.Context, nc *nats.Conn, final bool) {
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
	data, err := proto.Marshal(hb)
	if err != nil {
		w.log.Error("encoding heartbeat", "err", err)
		return
	}
	if final {
		if err := nc.Publish(w.subj.Heartbeat(), data); err != nil {
			w.log.Debug("final heartbeat", "err", err)
		}
		return
	}
	rctx, cancel := context.WithTimeout(ctx, min(w.cfg.RequestTimeout, w.cfg.HeartbeatInterval))
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, w.subj.Heartbeat(), data)
	if err != nil {
		w.met.heartbeats.WithLabelValues("unanswered").Inc()
		w.log.Debug("heartbeat unanswered", "err", err)
		return
	}
	w.met.heartbeats.WithLabelValues("acked").Inc()
	leader, aborts, err := decodeHeartbeatAck(msg.Data)
	if err != nil {
		w.log.Warn("bad heartbeat ack", "err", err)
		return
	}
	for _, k := range aborts {
		w.abort(k, "leader: "+leader)
	}
}

// onAssign handles one Assignment request and replies with an
// AssignmentAck (setting *replied once it did).
func (w *Worker) onAssign(runCtx context.Context, m *nats.Msg, replied *bool) {
	var a pb.Assignment
	var ack *pb.AssignmentAck
	if err := proto.Unmarshal(m.Data, &a); err != nil {
		ack = &pb.AssignmentAck{Reason: fmt.Sprintf("malformed assignment: %v", err)}
	} else {
		ack = w.assign(runCtx, &a)
	}
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
	if m.Reply == "" {
		return
	}
	data, err := proto.Marshal(ack)
	if err == nil {
		*replied = true
		err = m.Respond(data)
	}
	if err != nil {
		w.log.Warn("replying to assignment", "err", err)
	}
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
	if _, ok := w.jobSubs[job]; ok || w.nc == nil {
		return
	}
	sub, err := w.nc.Subscribe(w.subj.JobEvents(job), func(m *nats.Msg) {
		w.safely("job events", func() { w.onJobEvent(job, m.Data) })
	})
	if err != nil {
		w.log.Warn("subscribing to job events", "job", job, "err", err)
		return
	}
	w.jobSubs[job] = sub
}

func (w *Worker) releaseJobLocked(job string) {
	if w.holdsJobLocked(job) {
		return
	}
	if sub, ok := w.jobSubs[job]; ok {
		_ = sub.Unsubscribe()
		delete(w.jobSubs, job)
	}
}

// onJobEvent applies one event of a job held here: the job's end or a
// newer epoch stops its shards.
func (w *Worker) onJobEvent(job string, data []byte) {
	act, err := decodeJobEvent(job, data)
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
