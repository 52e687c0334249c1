package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

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
	inputs    map[inputKey]string // tenant's input namespace -> submit in flight (api.go)
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
		inputs:   map[inputKey]string{},

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
