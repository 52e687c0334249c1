package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Control-plane message limits: a message is refused by its size before it
// is decoded.
const (
	// MaxHeartbeatBytes bounds an encoded heartbeat (1024 shard refs take
	// about 50 KiB).
	MaxHeartbeatBytes = 256 << 10
	// MaxControlBytes bounds every other control message (assignments,
	// reports, acknowledgements, job events) a serve or call decodes.
	MaxControlBytes = 4 << 20
	// DefaultMaxRequestBytes bounds an API request when APIConfig leaves
	// it 0.
	DefaultMaxRequestBytes = 1 << 20
)

// ErrMessageTooLarge is wrapped when a control message is larger than its
// limit; ErrMalformed when it does not decode.
var (
	ErrMessageTooLarge = errors.New("transport: control message too large")
	ErrMalformed       = errors.New("transport: malformed control message")
)

// Conn is a NATS connection with ringattn's subjects: every control-plane
// call (API, heartbeats, assignments, reports, job events) is a method of
// it or of APIClient, so no other package of ringattn speaks NATS. Build
// one with Dial, or NewConn on a connection of your own.
type Conn struct {
	nc       *nats.Conn
	subj     Subjects
	tenant   string
	worker   string // Config.Worker: rings send as it
	log      *slog.Logger
	panics   atomic.Int64
	rejected atomic.Int64
	owned    bool
}

// NewConn wraps nc (which the caller keeps owning) with the subjects subj,
// as the default tenant (see ForTenant).
func NewConn(nc *nats.Conn, subj Subjects, logger *slog.Logger) *Conn {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Conn{nc: nc, subj: subj, tenant: DefaultTenant, log: logger}
}

// ForTenant returns a Conn on c's connection (which c keeps owning) that
// calls the API and watches events as tenant (AdminTenant: as the admin).
func (c *Conn) ForTenant(tenant string) (*Conn, error) {
	if err := ValidateTenant(tenant); err != nil {
		return nil, err
	}
	return &Conn{nc: c.nc, subj: c.subj, tenant: orDefaultTenant(tenant), worker: c.worker, log: c.log}, nil
}

// Tenant is the tenant c calls the API and watches events as.
func (c *Conn) Tenant() string { return c.tenant }

// Dial connects per cfg (see Connect) and returns the Conn, which owns the
// connection: Close closes it.
func Dial(cfg Config, logger *slog.Logger) (*Conn, error) {
	nc, err := Connect(cfg, logger)
	if err != nil {
		return nil, err
	}
	c := NewConn(nc, cfg.Subjects(), logger)
	c.tenant = orDefaultTenant(cfg.Tenant)
	c.worker = cfg.Worker
	c.owned = true
	return c, nil
}

// NATS returns the underlying connection, for NewNATSRing and OpenStore.
func (c *Conn) NATS() *nats.Conn { return c.nc }

// IsConnected reports whether c is connected to a server now.
func (c *Conn) IsConnected() bool { return c.nc.IsConnected() }

// NewRing is NewNATSRing on c, under c's subject prefix unless cfg sets
// one, sending as c's worker (Config.Worker) unless cfg names a Worker or
// Workers.
func (c *Conn) NewRing(cfg RingConfig) (*NATSRing, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = c.subj.Prefix()
	}
	if cfg.Worker == "" && cfg.Workers == nil {
		cfg.Worker = c.worker
	}
	return NewNATSRing(c.nc, cfg)
}

// OpenStore is OpenStore on c.
func (c *Conn) OpenStore(ctx context.Context, cfg StoreConfig) (*Store, error) {
	return OpenStore(ctx, c.nc, cfg, c.log)
}

// Subjects returns the subjects c uses.
func (c *Conn) Subjects() Subjects { return c.subj }

// HandlerPanics is how many serve handlers of c panicked (each was
// contained: logged with its stack, the request answered or dropped).
func (c *Conn) HandlerPanics() int64 { return c.panics.Load() }

// Rejected is how many heartbeats and reports c's serves refused because
// the worker id in their body is not the one their subject names (a
// worker speaking as another).
func (c *Conn) Rejected() int64 { return c.rejected.Load() }

// Close drains a connection Dial made (nothing for NewConn's).
func (c *Conn) Close() error {
	if !c.owned {
		return nil
	}
	return c.nc.Drain()
}

// Flush waits until the server has processed everything sent so far
// (subscriptions included).
func (c *Conn) Flush(ctx context.Context) error { return c.nc.FlushWithContext(ctx) }

// StopFunc ends a serve: it unsubscribes (requests in flight finish).
type StopFunc func() error

// ServeConfig tunes a serve; the zero value runs handlers inline on the
// subscription's goroutine.
type ServeConfig struct {
	// Dispatch, when set, runs each request's handling (decode, handler,
	// reply): it may run it on another goroutine, or refuse it by
	// returning false. A refused request is answered busy where the call
	// has such an answer (API: ERROR_CODE_BUSY; reports:
	// REPORT_STATUS_RETRY) and dropped otherwise (the requester times
	// out). It is the hook for bounded concurrency.
	Dispatch func(run func()) bool
	// OnPanic, when set, is called (after logging) with what a handler
	// panicked with, e.g. to count it in a metric.
	OnPanic func(handler string, v any)
	// OnMessage, when set, sees each message's bytes before they are
	// decoded (tests: observe or delay what arrives).
	OnMessage func(handler string, data []byte)
}

// errBusy is what a serve's bad reply is built from when Dispatch refuses
// a request.
var errBusy = errors.New("busy: handling as many requests as allowed; retry later")

// decode checks data's size against max and decodes it into m.
func decode(data []byte, max int, m proto.Message) error {
	if len(data) > max {
		return fmt.Errorf("%w: %d bytes: want at most %d", ErrMessageTooLarge, len(data), max)
	}
	if err := proto.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: not a valid %T: %v", ErrMalformed, m, err)
	}
	return nil
}

// contain runs f; a panic in it is logged with its stack, counted and
// returned as an error.
func (c *Conn) contain(name string, cfg ServeConfig, f func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			c.panics.Add(1)
			c.log.Error("control handler panicked; request dropped or refused", "handler", name,
				"panic", v, "stack", string(debug.Stack()))
			if cfg.OnPanic != nil {
				cfg.OnPanic(name, v)
			}
			err = fmt.Errorf("internal error in %s (logged)", name)
		}
	}()
	f()
	return nil
}

// serve subscribes subject and answers
// each request: decoded into newReq() (bounded by max) and passed to h,
// whose reply is sent. A request that does not decode, or whose handler
// panics, is answered with bad(err) when bad is set, else dropped; one
// cfg.Dispatch refuses is answered with bad(errBusy), else dropped.
func serve[Req, Rep proto.Message](c *Conn, name, subject string, max int, cfg ServeConfig,
	newReq func() Req, h func(Req) Rep, bad func(error) Rep) (StopFunc, error) {
	return serveChecked(c, name, subject, max, cfg, newReq, nil, h, bad)
}

// serveChecked is serve with check, when set, run on each decoded request
// and its subject before h: a request it refuses is answered bad(err)
// (dropped without bad), logged and counted in Rejected.
func serveChecked[Req, Rep proto.Message](c *Conn, name, subject string, max int, cfg ServeConfig,
	newReq func() Req, check func(subject string, req Req) error, h func(Req) Rep, bad func(error) Rep) (StopFunc, error) {
	handle := func(m *nats.Msg) {
		if cfg.OnMessage != nil {
			cfg.OnMessage(name, m.Data)
		}
		var rep Rep
		var ok bool
		req := newReq()
		err := decode(m.Data, max, req)
		switch {
		case err != nil:
			c.log.Warn("dropping control message", "handler", name, "bytes", len(m.Data), "err", err)
		case check != nil:
			if err = check(m.Subject, req); err != nil {
				c.rejected.Add(1)
				c.log.Warn("refusing control message", "handler", name, "err", err)
			}
		}
		if err == nil {
			err = c.contain(name, cfg, func() { rep = h(req); ok = true })
		}
		if !ok {
			if bad == nil {
				return
			}
			rep = bad(err)
		}
		c.respond(name, m, rep)
	}
	cb := func(m *nats.Msg) {
		if cfg.Dispatch == nil {
			handle(m)
			return
		}
		if !cfg.Dispatch(func() { handle(m) }) && bad != nil {
			c.respond(name, m, bad(errBusy))
		}
	}
	sub, err := c.nc.Subscribe(subject, cb)
	if err != nil {
		return nil, fmt.Errorf("transport: subscribe %s: %w", name, err)
	}
	return sub.Unsubscribe, nil
}

// respond sends rep to m's requester (nothing for a publish, or a nil
// reply, typed or not).
func (c *Conn) respond(name string, m *nats.Msg, rep proto.Message) {
	if m.Reply == "" || rep == nil || !rep.ProtoReflect().IsValid() {
		return
	}
	data, err := proto.Marshal(rep)
	if err == nil {
		err = m.Respond(data)
	}
	if err != nil {
		c.log.Debug("control reply failed", "handler", name, "err", err)
	}
}

// request sends req to subject and decodes the reply (bounded by
// MaxControlBytes) into rep.
func (c *Conn) request(ctx context.Context, subject string, req, rep proto.Message) error {
	data, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	m, err := c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return fmt.Errorf("transport: request %s: %w", subject, err)
	}
	return decode(m.Data, MaxControlBytes, rep)
}

// SendHeartbeat sends a worker's heartbeat and returns the leader's
// acknowledgement (an error wrapping nats.ErrNoResponders or
// context.DeadlineExceeded when no leader answers).
func (c *Conn) SendHeartbeat(ctx context.Context, hb *pb.Heartbeat) (*pb.HeartbeatAck, error) {
	subject, err := c.workerSubject(hb.GetWorkerId(), c.subj.WorkerHeartbeat, c.subj.Heartbeat)
	if err != nil {
		return nil, err
	}
	var ack pb.HeartbeatAck
	if err := c.request(ctx, subject, hb, &ack); err != nil {
		return nil, err
	}
	return &ack, nil
}

// PublishHeartbeat sends a heartbeat without waiting for an answer (a
// worker's final, leaving heartbeat).
func (c *Conn) PublishHeartbeat(hb *pb.Heartbeat) error {
	subject, err := c.workerSubject(hb.GetWorkerId(), c.subj.WorkerHeartbeat, c.subj.Heartbeat)
	if err != nil {
		return err
	}
	data, err := proto.Marshal(hb)
	if err != nil {
		return err
	}
	return c.nc.Publish(subject, data)
}

// ServeHeartbeats answers heartbeats with h's acknowledgement (nil: no
// answer). A heartbeat on Subjects.WorkerHeartbeat(id) whose worker_id is
// not id is dropped (logged, counted in Rejected): with per-worker
// permissions no worker can speak for another. Heartbeats over
// MaxHeartbeatBytes, malformed ones and those whose handler panics are
// dropped (logged, counted). The legacy subject Subjects.Heartbeat (no id
// in it; no role may publish there with auth on) is served too.
func (c *Conn) ServeHeartbeats(cfg ServeConfig, h func(*pb.Heartbeat) *pb.HeartbeatAck) (StopFunc, error) {
	same := checkWorker(c.subj.Prefix()+".worker.", ".heartbeat")
	stop, err := serveChecked(c, "heartbeat", c.subj.Heartbeats(), MaxHeartbeatBytes, cfg,
		func() *pb.Heartbeat { return new(pb.Heartbeat) },
		func(subject string, hb *pb.Heartbeat) error { return same(subject, hb.GetWorkerId()) }, h, nil)
	if err != nil {
		return nil, err
	}
	legacy, err := serve(c, "heartbeat", c.subj.Heartbeat(), MaxHeartbeatBytes, cfg,
		func() *pb.Heartbeat { return new(pb.Heartbeat) }, h, nil)
	if err != nil {
		_ = stop()
		return nil, err
	}
	return joinStops(stop, legacy), nil
}

// joinStops returns a StopFunc calling every one of stops.
func joinStops(stops ...StopFunc) StopFunc {
	return func() error {
		var errs []error
		for _, s := range stops {
			errs = append(errs, s())
		}
		return errors.Join(errs...)
	}
}

// Assign sends an assignment to worker workerID and returns its answer.
func (c *Conn) Assign(ctx context.Context, workerID string, a *pb.Assignment) (*pb.AssignmentAck, error) {
	if err := ValidateName("worker id", workerID); err != nil {
		return nil, err
	}
	var ack pb.AssignmentAck
	if err := c.request(ctx, c.subj.Assign(workerID), a, &ack); err != nil {
		return nil, err
	}
	return &ack, nil
}

// ServeAssignments answers the assignments sent to worker workerID with
// h's acknowledgement. A malformed or oversized assignment, one whose
// handler panics or one cfg.Dispatch refuses, is refused (Accepted false,
// the reason).
func (c *Conn) ServeAssignments(workerID string, cfg ServeConfig, h func(*pb.Assignment) *pb.AssignmentAck) (StopFunc, error) {
	if err := ValidateName("worker id", workerID); err != nil {
		return nil, err
	}
	return serve(c, "assign", c.subj.Assign(workerID), MaxControlBytes, cfg,
		func() *pb.Assignment { return new(pb.Assignment) }, h,
		func(err error) *pb.AssignmentAck {
			if errors.Is(err, ErrMalformed) || errors.Is(err, ErrMessageTooLarge) {
				return &pb.AssignmentAck{Reason: "malformed assignment: " + err.Error()}
			}
			return &pb.AssignmentAck{Reason: err.Error()}
		})
}

// Report sends a worker's shard report and returns the leader's
// acknowledgement.
func (c *Conn) Report(ctx context.Context, r *pb.Report) (*pb.ReportAck, error) {
	subject, err := c.workerSubject(r.GetWorkerId(), c.subj.WorkerReport, c.subj.Report)
	if err != nil {
		return nil, err
	}
	var ack pb.ReportAck
	if err := c.request(ctx, subject, r, &ack); err != nil {
		return nil, err
	}
	return &ack, nil
}

// ServeReports answers reports with h's acknowledgement. A report on
// Subjects.WorkerReport(id) whose worker_id is not id, a malformed or an
// oversized one is answered REPORT_STATUS_REJECTED (retrying it cannot
// help; the first is counted in Rejected); one whose handler panics, or
// cfg.Dispatch refuses, REPORT_STATUS_RETRY. The legacy subject
// Subjects.Report is served too (see ServeHeartbeats).
func (c *Conn) ServeReports(cfg ServeConfig, h func(*pb.Report) *pb.ReportAck) (StopFunc, error) {
	bad := func(err error) *pb.ReportAck {
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrMessageTooLarge) || errors.Is(err, ErrImpersonation) {
			return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_REJECTED, Message: err.Error()}
		}
		return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_RETRY, Message: err.Error()}
	}
	same := checkWorker(c.subj.Prefix()+".coord.report.", "")
	stop, err := serveChecked(c, "report", c.subj.Reports(), MaxControlBytes, cfg,
		func() *pb.Report { return new(pb.Report) },
		func(subject string, r *pb.Report) error { return same(subject, r.GetWorkerId()) }, h, bad)
	if err != nil {
		return nil, err
	}
	legacy, err := serve(c, "report", c.subj.Report(), MaxControlBytes, cfg,
		func() *pb.Report { return new(pb.Report) }, h, bad)
	if err != nil {
		_ = stop()
		return nil, err
	}
	return joinStops(stop, legacy), nil
}

// PublishEvent publishes a job event of the default tenant's job on the
// job's event stream; PublishTenantEvent names the tenant.
func (c *Conn) PublishEvent(ev *pb.JobEvent) error { return c.PublishTenantEvent(DefaultTenant, ev) }

// PublishTenantEvent publishes an event of tenant's job on the job's event
// stream, Subjects.TenantJobEvents (best-effort: events are hints, the
// job's status is the truth).
func (c *Conn) PublishTenantEvent(tenant string, ev *pb.JobEvent) error {
	if err := ValidateJobID(ev.GetJobId()); err != nil {
		return fmt.Errorf("transport: publish event: %w", err)
	}
	if err := ValidateJobTenant(tenant); err != nil {
		return fmt.Errorf("transport: publish event: %w", err)
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	return c.nc.Publish(c.subj.TenantJobEvents(orDefaultTenant(tenant), ev.GetJobId()), data)
}

// OnEvents calls h with each event of job jobID ("" for every job), of
// whatever tenant, on the subscription's goroutine (or cfg.Dispatch),
// until stop is called (workers and tools: a client may subscribe only its
// own tenant's events, see WatchEvents). Malformed or oversized events are
// dropped; a panic in h is contained (logged, counted in HandlerPanics).
func (c *Conn) OnEvents(jobID string, cfg ServeConfig, h func(*pb.JobEvent)) (StopFunc, error) {
	subject := c.subj.AllJobEvents()
	if jobID != "" {
		if err := ValidateJobID(jobID); err != nil {
			return nil, err
		}
		subject = c.subj.AnyJobEvents(jobID)
	}
	return serve(c, "events", subject, MaxControlBytes, cfg,
		func() *pb.JobEvent { return new(pb.JobEvent) },
		func(ev *pb.JobEvent) proto.Message { h(ev); return nil }, nil)
}

// eventBuffer is how many events WatchEvents holds for a slow reader;
// beyond it new events are dropped (events are hints).
const eventBuffer = 64

// WatchEvents is WatchTenantEvents as c's tenant (Conn.Tenant).
func (c *Conn) WatchEvents(ctx context.Context, jobID string) (<-chan *pb.JobEvent, StopFunc, error) {
	return c.WatchTenantEvents(ctx, c.tenant, jobID)
}

// WatchTenantEvents delivers the events of tenant's job jobID ("" for
// every job of tenant; with tenant AdminTenant, of every tenant) on the
// returned channel until ctx ends or stop is called; then the channel is
// closed. Malformed or oversized events are dropped; so are events while
// the channel is full (the reader is eventBuffer events behind).
func (c *Conn) WatchTenantEvents(ctx context.Context, tenant, jobID string) (<-chan *pb.JobEvent, StopFunc, error) {
	if err := ValidateTenant(tenant); err != nil {
		return nil, nil, err
	}
	tenant = orDefaultTenant(tenant)
	var subject string
	switch {
	case jobID == "" && tenant == AdminTenant:
		subject = c.subj.AllJobEvents()
	case jobID == "":
		subject = c.subj.TenantAllJobEvents(tenant)
	default:
		if err := ValidateJobID(jobID); err != nil {
			return nil, nil, err
		}
		subject = c.subj.TenantJobEvents(tenant, jobID)
		if tenant == AdminTenant {
			subject = c.subj.AnyJobEvents(jobID)
		}
	}
	ch := make(chan *pb.JobEvent, eventBuffer)
	var (
		mu     sync.Mutex
		closed bool
	)
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		ev := new(pb.JobEvent)
		if err := decode(m.Data, MaxControlBytes, ev); err != nil {
			c.log.Debug("dropping job event", "subject", m.Subject, "err", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return
		}
		select {
		case ch <- ev:
		default:
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("transport: watch events: %w", err)
	}
	done := make(chan struct{})
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			stopErr = sub.Unsubscribe()
			if errors.Is(stopErr, nats.ErrConnectionClosed) || errors.Is(stopErr, nats.ErrBadSubscription) {
				stopErr = nil
			}
			mu.Lock()
			closed = true
			close(ch)
			mu.Unlock()
			close(done)
		})
		return stopErr
	}
	go func() {
		select {
		case <-ctx.Done():
			_ = stop()
		case <-done:
		}
	}()
	return ch, stop, nil
}
