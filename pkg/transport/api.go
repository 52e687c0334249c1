package transport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// API endpoints (under Subjects.APIPrefix).
const (
	EndpointSubmit  = "submit"
	EndpointGet     = "get"
	EndpointCancel  = "cancel"
	EndpointList    = "list"
	EndpointCluster = "cluster"
)

// Sentinels an *APIError wraps by its code, so errors.Is works on either.
var (
	ErrAPIInvalid     = errors.New("invalid request")
	ErrAPINotFound    = errors.New("not found")
	ErrAPIUnavailable = errors.New("coordinator unavailable")
	ErrAPIExhausted   = errors.New("limit reached")
	ErrAPIConflict    = errors.New("failed precondition")
	ErrAPIInternal    = errors.New("internal error")
	// ErrAPIBusy: the server handles as many requests as it allows at
	// once; nothing was done (retry after APIError.RetryAfter).
	ErrAPIBusy = errors.New("coordinator busy")
)

// APIError is an error reply of the API: a code, the request field at
// fault (when there is one) and a message naming the expected value.
type APIError struct {
	Code     pb.ErrorCode
	Field    string
	Message  string
	LeaderID string // with ERROR_CODE_NOT_LEADER, when known
	// RetryAfter is when to retry, with ERROR_CODE_BUSY (and
	// RESOURCE_EXHAUSTED for a full queue); 0 when not said.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	if e.Field != "" && !strings.HasPrefix(e.Message, e.Field) {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// Unwrap returns the sentinel of e's code.
func (e *APIError) Unwrap() error {
	switch e.Code {
	case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return ErrAPIInvalid
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return ErrAPINotFound
	case pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED:
		return ErrAPIExhausted
	case pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION:
		return ErrAPIConflict
	case pb.ErrorCode_ERROR_CODE_NOT_LEADER, pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return ErrAPIUnavailable
	case pb.ErrorCode_ERROR_CODE_INTERNAL:
		return ErrAPIInternal
	case pb.ErrorCode_ERROR_CODE_BUSY:
		return ErrAPIBusy
	}
	return nil
}

// Proto is e on the wire.
func (e *APIError) Proto() *pb.Error {
	return &pb.Error{Code: e.Code, Field: e.Field, Message: e.Error(), LeaderId: e.LeaderID,
		RetryAfterMs: e.RetryAfter.Milliseconds()}
}

// APIErrorOf is the *APIError err is or wraps; a *FieldError becomes
// INVALID_ARGUMENT (RESOURCE_EXHAUSTED for a limit) on its field, anything
// else UNAVAILABLE.
func APIErrorOf(err error) *APIError {
	var ae *APIError
	var fe *FieldError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &fe):
		return &APIError{Code: fe.Code(), Field: fe.Field, Message: fe.Error()}
	}
	return &APIError{Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, Message: err.Error()}
}

// Retryable reports whether an API call that failed with err may be
// repeated as it is: no leader, busy, no responder, a timeout.
func Retryable(err error) bool {
	return errors.Is(err, ErrAPIUnavailable) || errors.Is(err, ErrAPIBusy) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout)
}

// maxRetryAfter caps the wait a BUSY reply asks for.
const maxRetryAfter = 10 * time.Second

// APIClient calls the coordinator's API as a tenant. Each call is
// bounded by Timeout (default 5 s) and retried while Retryable until ctx
// ends.
type APIClient struct {
	conn *Conn
	// Timeout bounds one attempt (0: 5 s).
	Timeout time.Duration
	// Tenant the calls are made as: the API subject's tenant token
	// (Subjects.TenantAPI), which the server's permissions pin to the
	// client's identity. NewAPIClient sets c's (Config.Tenant).
	Tenant string
}

// NewAPIClient returns a client of the API on c, as c's tenant.
func NewAPIClient(c *Conn) *APIClient { return &APIClient{conn: c, Tenant: c.tenant} }

// Reply is any API reply: they all carry an Error.
type Reply interface {
	proto.Message
	GetError() *pb.Error
}

type errorReply = Reply

// Once makes one attempt of an API call (bounded by Timeout), without
// retrying: for callers with their own retry policy. Its errors are those
// of the calls: an *APIError for an error reply, ErrPermission when the
// server refuses this identity the subject, and errors Retryable reports
// for no leader, busy, no responder and timeouts.
func (a *APIClient) Once(ctx context.Context, endpoint string, req proto.Message, rep Reply) error {
	data, timeout, err := a.prepare(req)
	if err != nil {
		return err
	}
	return a.once(ctx, endpoint, data, timeout, rep)
}

func (a *APIClient) call(ctx context.Context, endpoint string, req proto.Message, rep errorReply) error {
	data, timeout, err := a.prepare(req)
	if err != nil {
		return err
	}
	wait := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := a.once(ctx, endpoint, data, timeout, rep)
		if err == nil || !Retryable(err) {
			return err
		}
		a.conn.log.Debug("api retry", "endpoint", endpoint, "attempt", attempt, "err", err)
		sleep := wait
		if ae, ok := errors.AsType[*APIError](err); ok && ae.RetryAfter > 0 {
			sleep = max(sleep, min(ae.RetryAfter, maxRetryAfter))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %v (after %d attempts)", ErrAPIUnavailable, endpoint, err, attempt)
		case <-time.After(sleep):
		}
		wait = min(2*wait, time.Second)
	}
}

// prepare checks the tenant, encodes req and resolves the attempt timeout.
func (a *APIClient) prepare(req proto.Message) (data []byte, timeout time.Duration, err error) {
	if err := ValidateTenant(a.Tenant); err != nil {
		return nil, 0, &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "tenant", Message: err.Error()}
	}
	if data, err = proto.Marshal(req); err != nil {
		return nil, 0, err
	}
	timeout = a.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return data, timeout, nil
}

func (a *APIClient) once(ctx context.Context, endpoint string, data []byte, timeout time.Duration, rep errorReply) error {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	subject := a.conn.subj.TenantAPI(orDefaultTenant(a.Tenant), endpoint)
	m, err := a.conn.nc.RequestWithContext(rctx, subject, data)
	if err != nil {
		if derr := a.conn.Denied(subject); derr != nil {
			// Not retried: the server refuses this identity the subject.
			return fmt.Errorf("this identity may not call the API as tenant %q: name the tenant of its credentials: %w",
				orDefaultTenant(a.Tenant), derr)
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nats.ErrTimeout
		}
		return err
	}
	if err := decode(m.Data, MaxControlBytes, rep); err != nil {
		return fmt.Errorf("bad reply to %s: %w", endpoint, err)
	}
	if e := rep.GetError(); e != nil && e.Code != pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
		return &APIError{Code: e.Code, Field: e.Field, Message: e.Message, LeaderID: e.LeaderId,
			RetryAfter: time.Duration(max(0, min(e.RetryAfterMs, maxRetryAfter.Milliseconds()))) * time.Millisecond}
	}
	return nil
}

// Submit submits a job.
func (a *APIClient) Submit(ctx context.Context, req *pb.SubmitRequest) (*pb.SubmitReply, error) {
	rep := new(pb.SubmitReply)
	return rep, a.call(ctx, EndpointSubmit, req, rep)
}

// Get returns a job's status.
func (a *APIClient) Get(ctx context.Context, req *pb.GetRequest) (*pb.GetReply, error) {
	rep := new(pb.GetReply)
	return rep, a.call(ctx, EndpointGet, req, rep)
}

// Cancel cancels a job.
func (a *APIClient) Cancel(ctx context.Context, req *pb.CancelRequest) (*pb.CancelReply, error) {
	rep := new(pb.CancelReply)
	return rep, a.call(ctx, EndpointCancel, req, rep)
}

// List lists jobs.
func (a *APIClient) List(ctx context.Context, req *pb.ListRequest) (*pb.ListReply, error) {
	rep := new(pb.ListReply)
	return rep, a.call(ctx, EndpointList, req, rep)
}

// Cluster describes the cluster.
func (a *APIClient) Cluster(ctx context.Context, req *pb.ClusterRequest) (*pb.ClusterReply, error) {
	rep := new(pb.ClusterReply)
	return rep, a.call(ctx, EndpointCluster, req, rep)
}

// Watch delivers job jobID's events until ctx ends or stop is called (see
// Conn.WatchTenantEvents), as a.Tenant.
func (a *APIClient) Watch(ctx context.Context, jobID string) (<-chan *pb.JobEvent, StopFunc, error) {
	return a.conn.WatchTenantEvents(ctx, a.Tenant, jobID)
}

// APIHandlers serve the API's endpoints. A handler returns its reply, or
// an error: an *APIError (or *FieldError) is sent as it is, anything else
// as UNAVAILABLE. A nil handler answers INTERNAL.
type APIHandlers struct {
	Submit  func(context.Context, *pb.SubmitRequest) (*pb.SubmitReply, error)
	Get     func(context.Context, *pb.GetRequest) (*pb.GetReply, error)
	Cancel  func(context.Context, *pb.CancelRequest) (*pb.CancelReply, error)
	List    func(context.Context, *pb.ListRequest) (*pb.ListReply, error)
	Cluster func(context.Context, *pb.ClusterRequest) (*pb.ClusterReply, error)
}

// APIConfig describes the API service.
type APIConfig struct {
	ServeConfig
	// Version and Description of the micro service; Metadata (e.g. the
	// node's id) is shown by `nats micro info`.
	Version, Description string
	Metadata             map[string]string
	// BusyRetryAfter is the retry-after of the BUSY reply a request gets
	// when Dispatch refuses it (default 100 ms).
	BusyRetryAfter time.Duration
	// MaxRequestBytes bounds a request (0: DefaultMaxRequestBytes); a
	// larger one is answered RESOURCE_EXHAUSTED on field "request".
	MaxRequestBytes int
	// Observe, when set, is called once per request with its endpoint and
	// result code (ERROR_CODE_UNSPECIFIED for success), e.g. for metrics.
	Observe func(endpoint string, code pb.ErrorCode)
	// EnforceTenants (auth on) makes each request's Caller the tenant its
	// subject names, an admin only on the AdminTenant token; the server's
	// permissions decide who may publish there. Unset (auth off), every
	// caller is an admin (of the tenant its subject names).
	EnforceTenants bool
}

// endpoint is one API endpoint, typed: decode a request, run the handler.
type endpoint struct {
	name  string
	run   func(ctx context.Context, data []byte, max int) (proto.Message, *APIError)
	reply func(*pb.Error) proto.Message
}

func typedEndpoint[Req proto.Message, Rep proto.Message](name string, newReq func() Req, h func(context.Context, Req) (Rep, error),
	reply func(*pb.Error) proto.Message) endpoint {
	return endpoint{name: name, reply: reply, run: func(ctx context.Context, data []byte, max int) (proto.Message, *APIError) {
		if h == nil {
			return nil, &APIError{Code: pb.ErrorCode_ERROR_CODE_INTERNAL, Message: "endpoint " + name + " not served"}
		}
		req := newReq()
		if err := decode(data, max, req); err != nil {
			if errors.Is(err, ErrMessageTooLarge) {
				return nil, &APIError{Code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, Field: "request",
					Message: fmt.Sprintf("%d bytes: want at most %d (Limits.MaxRequestBytes)", len(data), max)}
			}
			return nil, &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "request",
				Message: strings.TrimPrefix(err.Error(), ErrMalformed.Error()+": ")}
		}
		rep, err := h(ctx, req)
		if err != nil {
			return nil, APIErrorOf(err)
		}
		return rep, nil
	}}
}

func (h APIHandlers) endpoints() []endpoint {
	return []endpoint{
		typedEndpoint(EndpointSubmit, func() *pb.SubmitRequest { return new(pb.SubmitRequest) }, h.Submit,
			func(e *pb.Error) proto.Message { return &pb.SubmitReply{Error: e} }),
		typedEndpoint(EndpointGet, func() *pb.GetRequest { return new(pb.GetRequest) }, h.Get,
			func(e *pb.Error) proto.Message { return &pb.GetReply{Error: e} }),
		typedEndpoint(EndpointCancel, func() *pb.CancelRequest { return new(pb.CancelRequest) }, h.Cancel,
			func(e *pb.Error) proto.Message { return &pb.CancelReply{Error: e} }),
		typedEndpoint(EndpointList, func() *pb.ListRequest { return new(pb.ListRequest) }, h.List,
			func(e *pb.Error) proto.Message { return &pb.ListReply{Error: e} }),
		typedEndpoint(EndpointCluster, func() *pb.ClusterRequest { return new(pb.ClusterRequest) }, h.Cluster,
			func(e *pb.Error) proto.Message { return &pb.ClusterReply{Error: e} }),
	}
}

// ServeAPI serves the API on c as the NATS micro service
// Subjects.APIService with endpoints Subjects.APIServe(name), every
// tenant's <prefix>.api.<tenant>.<name>. A handler finds who called in
// its context (CallerOf): the tenant the subject names, admin per
// cfg.EnforceTenants; a request on a token that is no tenant is refused
// INVALID_ARGUMENT on field "tenant" before it is decoded.
// Each request is size-checked, decoded once and handled; a handler's
// panic is contained (logged with its stack, counted in HandlerPanics and
// cfg.OnPanic, answered INTERNAL). The context handlers get ends when
// stop is called; from then on no request is answered (a client retries
// with another server).
func (c *Conn) ServeAPI(h APIHandlers, cfg APIConfig) (StopFunc, error) {
	max := cfg.MaxRequestBytes
	if max <= 0 {
		max = DefaultMaxRequestBytes
	}
	version := cfg.Version
	if version == "" {
		version = "1.0.0"
	}
	svc, err := micro.AddService(c.nc, micro.Config{
		Name: c.subj.APIService(), Version: version, Description: cfg.Description, Metadata: cfg.Metadata,
	})
	if err != nil {
		return nil, fmt.Errorf("transport: api service: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	for _, ep := range h.endpoints() {
		handle := func(req micro.Request) {
			if ctx.Err() != nil {
				return // stopped: micro drains its subscriptions, but this server answers no more
			}
			c.serveAPIRequest(ctx, ep, cfg, max, req)
		}
		err := svc.AddEndpoint(ep.name, micro.HandlerFunc(func(req micro.Request) {
			if cfg.Dispatch == nil {
				handle(req)
				return
			}
			if !cfg.Dispatch(func() { handle(req) }) {
				c.busy(ep, cfg, req)
			}
		}), micro.WithEndpointSubject(c.subj.APIServe(ep.name)))
		if err != nil {
			cancel()
			_ = svc.Stop()
			return nil, fmt.Errorf("transport: api endpoint %s: %w", ep.name, err)
		}
	}
	return func() error {
		cancel()
		err := svc.Stop()
		if ferr := c.nc.FlushTimeout(DefaultRecvTimeout); err == nil && !c.nc.IsClosed() {
			err = ferr
		}
		return err
	}, nil
}

// serveAPIRequest answers one API request.
func (c *Conn) serveAPIRequest(ctx context.Context, ep endpoint, cfg APIConfig, max int, req micro.Request) {
	data := req.Data()
	if cfg.OnMessage != nil {
		cfg.OnMessage("api_"+ep.name, data)
	}
	var reply proto.Message
	caller, ae := c.callerOf(req.Subject(), cfg.EnforceTenants)
	if ae == nil {
		ctx = WithCaller(ctx, caller)
		if err := c.contain("api_"+ep.name, cfg.ServeConfig, func() { reply, ae = ep.run(ctx, data, max) }); err != nil {
			ae = &APIError{Code: pb.ErrorCode_ERROR_CODE_INTERNAL,
				Message: fmt.Sprintf("internal error while serving %s (logged on the server); retrying will not help", ep.name)}
		}
	}
	if cfg.Observe != nil {
		code := pb.ErrorCode_ERROR_CODE_UNSPECIFIED
		if ae != nil {
			code = ae.Code
		}
		cfg.Observe(ep.name, code)
	}
	if ae != nil {
		reply = ep.reply(ae.Proto())
	}
	out, err := proto.Marshal(reply)
	if err != nil {
		_ = req.Error("500", err.Error(), nil)
		return
	}
	if ae != nil {
		err = req.Error(httpCode(ae.Code), ae.Error(), out)
	} else {
		err = req.Respond(out)
	}
	if err != nil {
		c.log.Debug("api reply failed", "endpoint", ep.name, "err", err)
	}
}

// callerOf is who sent a request on subject: the tenant its token names;
// an admin on the AdminTenant token (acting for the default tenant), or
// on any token when enforce is off.
func (c *Conn) callerOf(subject string, enforce bool) (Caller, *APIError) {
	tenant, ok := c.subj.APITenant(subject)
	if ok && tenant == AdminTenant {
		return Caller{Tenant: DefaultTenant, Admin: true}, nil
	}
	if !ok || ValidateJobTenant(tenant) != nil {
		return Caller{}, &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "tenant",
			Message: fmt.Sprintf("tenant %.64q (from subject %.200q): want 1..128 characters of [A-Za-z0-9_-], not starting with \"_\"", tenant, subject)}
	}
	return Caller{Tenant: tenant, Admin: !enforce}, nil
}

// busy answers a request Dispatch refused: BUSY, retry after
// cfg.BusyRetryAfter.
func (c *Conn) busy(ep endpoint, cfg APIConfig, req micro.Request) {
	after := cfg.BusyRetryAfter
	if after <= 0 {
		after = 100 * time.Millisecond
	}
	ae := &APIError{Code: pb.ErrorCode_ERROR_CODE_BUSY, RetryAfter: after,
		Message: fmt.Sprintf("busy: handling as many requests as allowed; retry after %v", after)}
	if cfg.Observe != nil {
		cfg.Observe(ep.name, ae.Code)
	}
	out, err := proto.Marshal(ep.reply(ae.Proto()))
	if err == nil {
		err = req.Error(httpCode(ae.Code), ae.Error(), out)
	}
	if err != nil {
		c.log.Debug("api busy reply failed", "endpoint", ep.name, "err", err)
	}
}

// httpCode is the micro error code of an API error code.
func httpCode(c pb.ErrorCode) string {
	switch c {
	case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return "400"
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return "404"
	case pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION:
		return "409"
	case pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED:
		return "429"
	case pb.ErrorCode_ERROR_CODE_NOT_LEADER, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_BUSY:
		return "503"
	}
	return "500"
}
