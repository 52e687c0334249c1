package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Sentinel errors. An *APIError from the coordinator wraps the one that
// matches its code, so errors.Is works on either.
var (
	ErrInvalid     = errors.New("client: invalid request")
	ErrNotFound    = errors.New("client: not found")
	ErrUnavailable = errors.New("client: coordinator unavailable")
	ErrExhausted   = errors.New("client: limit reached")
	ErrConflict    = errors.New("client: failed precondition")
	ErrJobFailed   = errors.New("client: job failed")
	ErrJobCanceled = errors.New("client: job canceled")
)

// APIError is an error reply of the coordinator's API.
type APIError struct {
	Code    pb.ErrorCode
	Field   string // the request field at fault, when there is one
	Message string
	// RetryAfter is the least wait before retrying the coordinator asked
	// for (BUSY, a full queue); 0 when it named none.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	if e.Field != "" && !strings.HasPrefix(e.Message, e.Field) {
		return fmt.Sprintf("%s: %s", e.Field, e.Message)
	}
	return e.Message
}

func (e *APIError) Unwrap() error {
	switch e.Code {
	case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return ErrInvalid
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return ErrNotFound
	case pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED:
		return ErrExhausted
	case pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION:
		return ErrConflict
	case pb.ErrorCode_ERROR_CODE_NOT_LEADER, pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return ErrUnavailable
	case pb.ErrorCode_ERROR_CODE_BUSY:
		return ErrBusy
	}
	return nil
}

// retryable reports whether a request may be repeated as it is: no leader
// (or busy), no responder, a timeout.
func retryable(err error) bool {
	return errors.Is(err, ErrUnavailable) || transport.Retryable(err)
}

// Unreachable reports whether err says the cluster did not answer: no
// leader, busy, no responder, a timeout, or a closed connection. A caller
// may retry later; nothing was done (or it is unknown).
func Unreachable(err error) bool {
	return retryable(err) || errors.Is(err, transport.ErrConnectionClosed)
}

// NoServer reports whether err (of Connect) says no NATS server answered
// at the URLs given, as opposed to one refusing the credentials or the TLS
// settings.
func NoServer(err error) bool { return errors.Is(err, transport.ErrNoServers) }

// Options tune a Client; zero values mean the defaults.
type Options struct {
	// RequestTimeout bounds one API request (default 5 s); requests that
	// find no leader are retried until the context ends.
	RequestTimeout time.Duration
	// Logger receives debug logs of retries (default: discard).
	Logger *slog.Logger
	// Limits are the job limits checked before anything is uploaded: the
	// coordinator's (zero value: shard.DefaultLimits, the coordinator's
	// defaults).
	Limits shard.Limits
	// Transfers is how many tensor blocks an upload or a download moves at
	// once, across the tensors of a job, each extracted, encoded and
	// checksummed on its own goroutine (0: transport.DefaultTransfers; 1:
	// one after the other; at most transport.MaxTransfers).
	Transfers int
	// TransferBytes bounds the float32 bytes of the blocks in flight (0:
	// transport.DefaultTransferBytes); large blocks then move fewer at
	// once, never less than one.
	TransferBytes int64
}

// Client talks to a ringattn cluster: the coordinator's API and the tensor
// store. It is safe for concurrent use.
type Client struct {
	conn    *transport.Conn
	subj    transport.Subjects
	cfg     transport.Config
	timeout time.Duration
	log     *slog.Logger
	limits  shard.Limits
	opts    Options

	storeMu sync.Mutex
	store   *transport.Store
}

// Connect connects to NATS with cfg (the same options as the binaries) and
// returns a client that closes the connection on Close.
func Connect(ctx context.Context, cfg transport.Config, opts Options) (*Client, error) {
	conn, err := transport.Dial(cfg, opts.Logger)
	if err != nil {
		return nil, err
	}
	c, err := New(ctx, conn, cfg, opts)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

// New returns a client over an existing connection (Close closes it only
// when transport.Dial made it); cfg gives the store bucket.
func New(ctx context.Context, conn *transport.Conn, cfg transport.Config, opts Options) (*Client, error) {
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Limits == (shard.Limits{}) {
		opts.Limits = shard.DefaultLimits()
	}
	if err := opts.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("%w: Options.%v", ErrInvalid, err)
	}
	if opts.Transfers < 0 || opts.Transfers > transport.MaxTransfers || opts.TransferBytes < 0 {
		return nil, fmt.Errorf("%w: Options.Transfers = %d, TransferBytes = %d: want 0..%d and >= 0 (0: the defaults)",
			ErrInvalid, opts.Transfers, opts.TransferBytes, transport.MaxTransfers)
	}
	c := &Client{conn: conn, subj: conn.Subjects(), cfg: cfg, timeout: opts.RequestTimeout, log: opts.Logger, limits: opts.Limits, opts: opts}
	return c, nil
}

// Close closes the connection if the client opened it (Connect).
func (c *Client) Close() {
	_ = c.conn.Close()
}

// errorReply is any API reply: they all carry an Error.
type errorReply = transport.Reply

// call sends req to an API endpoint and decodes the reply, retrying with
// jittered exponential backoff while no leader answers or it is busy
// (honouring its retry-after; retry.go), until ctx ends.
func (c *Client) call(ctx context.Context, endpoint string, req proto.Message, reply errorReply) error {
	for attempt := 1; ; attempt++ {
		err := c.once(ctx, endpoint, req, reply)
		if err == nil || !retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %s: %v (after %d attempts)", ErrUnavailable, endpoint, err, attempt)
		}
		c.log.Debug("api retry", "endpoint", endpoint, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %v (after %d attempts)", ErrUnavailable, endpoint, err, attempt)
		case <-time.After(retryWait(attempt, err)):
		}
	}
}

func (c *Client) once(ctx context.Context, endpoint string, req proto.Message, reply errorReply) error {
	// One attempt through transport's API client; the retries are this
	// client's own (retryWait jitters and honours retry-after; retry.go).
	api := transport.NewAPIClient(c.conn)
	api.Timeout, api.Tenant = c.timeout, c.tenant()
	err := api.Once(ctx, endpoint, req, reply)
	if ae, ok := errors.AsType[*transport.APIError](err); ok {
		return &APIError{Code: ae.Code, Field: ae.Field, Message: ae.Message, RetryAfter: ae.RetryAfter}
	}
	return err
}

// Submit submits a job whose inputs are already in the store. Retries with
// the same idempotency key never create a second job.
func (c *Client) Submit(ctx context.Context, spec *pb.JobSpec) (*pb.JobStatus, error) {
	var r pb.SubmitReply
	if err := c.call(ctx, "submit", &pb.SubmitRequest{Spec: spec}, &r); err != nil {
		return nil, err
	}
	return r.Job, nil
}

// Get returns a job's status.
func (c *Client) Get(ctx context.Context, id string) (*pb.JobStatus, error) {
	var r pb.GetReply
	if err := c.call(ctx, "get", &pb.GetRequest{JobId: id}, &r); err != nil {
		return nil, err
	}
	return r.Job, nil
}

// Cancel cancels a job.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*pb.JobStatus, error) {
	var r pb.CancelReply
	if err := c.call(ctx, "cancel", &pb.CancelRequest{JobId: id, Reason: reason}, &r); err != nil {
		return nil, err
	}
	return r.Job, nil
}

// List lists jobs, newest first, optionally filtered by state.
func (c *Client) List(ctx context.Context, limit int, states ...pb.JobState) ([]*pb.JobStatus, error) {
	var r pb.ListReply
	if err := c.call(ctx, "list", &pb.ListRequest{States: states, Limit: int32(limit)}, &r); err != nil {
		return nil, err
	}
	return r.Jobs, nil
}

// Cluster describes the coordinators and live workers.
func (c *Client) Cluster(ctx context.Context) (*pb.ClusterReply, error) {
	var r pb.ClusterReply
	if err := c.call(ctx, "cluster", &pb.ClusterRequest{}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Finished reports whether a job state is final.
func Finished(s pb.JobState) bool {
	switch s {
	case pb.JobState_JOB_STATE_SUCCEEDED, pb.JobState_JOB_STATE_FAILED,
		pb.JobState_JOB_STATE_CANCELED, pb.JobState_JOB_STATE_EXPIRED:
		return true
	}
	return false
}

// Watch calls fn with the job's status whenever it changes (events from the
// job's event stream, with a status poll as a safety net every poll
// interval) until the job finishes or ctx ends; it returns the final status.
func (c *Client) Watch(ctx context.Context, id string, poll time.Duration, fn func(*pb.JobStatus)) (*pb.JobStatus, error) {
	if poll <= 0 {
		poll = time.Second
	}
	events, stop, err := c.conn.WatchEvents(ctx, id)
	if err != nil {
		return nil, err
	}
	defer stop() //nolint:errcheck // done with the events
	var last *pb.JobStatus
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		st, err := c.Get(ctx, id)
		if err != nil {
			return last, err
		}
		if last == nil || !proto.Equal(last, st) {
			last = st
			if fn != nil {
				fn(st)
			}
		}
		if Finished(st.State) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case _, ok := <-events:
			// One status read for every event that has arrived.
			if !ok || !drainEvents(events) {
				events = nil // stopped (ctx ended): poll until ctx.Done is seen
			}
		case <-t.C:
		}
	}
}

// drainEvents discards the events waiting in ch and reports whether ch is
// still open.
func drainEvents(ch <-chan *pb.JobEvent) bool {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return false
			}
		default:
			return true
		}
	}
}

// Wait waits for a job to finish and returns its status; a failed or
// canceled job is an error wrapping ErrJobFailed or ErrJobCanceled.
func (c *Client) Wait(ctx context.Context, id string) (*pb.JobStatus, error) {
	st, err := c.Watch(ctx, id, 0, nil)
	if err != nil {
		return st, err
	}
	return st, jobError(st)
}

func jobError(st *pb.JobStatus) error {
	switch st.State {
	case pb.JobState_JOB_STATE_FAILED:
		return fmt.Errorf("%w: job %s: %s", ErrJobFailed, st.Id, st.Reason)
	case pb.JobState_JOB_STATE_CANCELED:
		return fmt.Errorf("%w: job %s: %s", ErrJobCanceled, st.Id, st.Reason)
	case pb.JobState_JOB_STATE_EXPIRED:
		return fmt.Errorf("%w: job %s expired", ErrNotFound, st.Id)
	}
	return nil
}

// tenant is the tenant the client acts as: its connection's (transport
// Config.Tenant, --nats-tenant), or the default tenant.
func (c *Client) tenant() string {
	if t := c.conn.Tenant(); t != "" {
		return t
	}
	return transport.DefaultTenant
}
