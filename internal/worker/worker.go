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

	"github.com/prometheus/client_golang/prometheus"

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
	conn      *transport.Conn
	store     *transport.Store
	stores    map[string]*transport.Store // other buckets named by assignments
	gflops    float64
	addr      string
	draining  bool
	shards    map[shardKey]*shardRun
	jobEpoch  map[string]epochMark          // highest epoch seen per job
	jobSubs   map[string]transport.StopFunc // event subscriptions of jobs held
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
		jobSubs:   map[string]transport.StopFunc{},
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

	conn, err := w.connect(ctx)
	if err != nil {
		if isClosed(w.drainCh) {
			w.log.Info("drained before connecting")
			return nil
		}
		return err
	}
	defer conn.Close() //nolint:errcheck // leaving anyway
	// A worker may not create the bucket: OpenStore waits for the
	// coordinator to, until a drain ends the wait.
	octx, ocancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-w.drainCh:
			ocancel()
		case <-octx.Done():
		}
	}()
	store, err := conn.OpenStore(octx, w.storeConfig())
	ocancel()
	if err != nil {
		if isClosed(w.drainCh) {
			w.log.Info("drained before the tensor store opened")
			return nil
		}
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
	w.conn, w.store, w.gflops = conn, store, gf
	w.mu.Unlock()

	stopAssign, err := conn.ServeAssignments(w.cfg.ID, transport.ServeConfig{}, func(a *pb.Assignment) *pb.AssignmentAck {
		return w.onAssign(runCtx, a)
	})
	if err != nil {
		return fmt.Errorf("worker: subscribing to assignments: %w", err)
	}
	defer stopAssign() //nolint:errcheck // closing anyway
	fctx, cancelFlush := context.WithTimeout(ctx, subscribeFlushTimeout)
	err = conn.Flush(fctx)
	cancelFlush()
	if err != nil {
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
	_ = stopAssign()
	cancelRun(ErrStopped)
	<-hbDone
	w.abortAll(ErrStopped)
	w.wg.Wait()
	w.mu.Lock()
	for job, stop := range w.jobSubs {
		_ = stop()
		delete(w.jobSubs, job)
	}
	w.mu.Unlock()
	if drained := isClosed(w.drainCh); drained {
		// The last word: leaving with nothing held.
		// Flush only a live connection, and briefly: nats.go's Flush waits
		// 10 s for a server that is gone, and a drain must end within its
		// timeout even when NATS is unreachable.
		w.sendHeartbeat(context.Background(), conn, true)
		if conn.IsConnected() {
			fctx, cancel := context.WithTimeout(context.Background(), finalFlushTimeout)
			_ = conn.Flush(fctx)
			cancel()
		}
	}
	w.log.Info("worker stopped")
	return nil
}

// connect dials NATS, retrying with backoff while no server is reachable
// (NATS may start after the worker) until ctx ends; bad configuration and
// rejected credentials fail at once.
func (w *Worker) connect(ctx context.Context) (*transport.Conn, error) {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		// As this worker: its reply inbox and ring sender token are the
		// ones its credentials allow (roles, docs/SECURITY.md).
		conn, err := transport.Dial(w.cfg.NATS.ForRole(transport.RoleWorker, w.cfg.ID), w.log)
		if err == nil {
			return conn, nil
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

// finalFlushTimeout bounds the flush of the last heartbeat at exit;
// subscribeFlushTimeout the flush that confirms the assignment
// subscription at start (nats.go's Flush default).
const (
	finalFlushTimeout     = 500 * time.Millisecond
	subscribeFlushTimeout = 10 * time.Second
)

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
		conn, draining := w.conn, w.draining
		w.mu.Unlock()
		if conn == nil || !conn.IsConnected() || draining {
			http.Error(rw, "not ready", http.StatusServiceUnavailable)
			return
		}
		rw.Write([]byte("ok\n")) //nolint:errcheck
	})
	return mux
}
