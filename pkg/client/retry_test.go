package client

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestClientRetryWait: the backoff grows, stays within its cap, is
// jittered, and never undercuts the coordinator's retry-after.
func TestClientRetryWait(t *testing.T) {
	for attempt := 1; attempt <= 12; attempt++ {
		hi := min(retryFirst<<(attempt-1), retryMax)
		for range 50 {
			if d := retryWait(attempt, ErrUnavailable); d < hi/2 || d > hi {
				t.Fatalf("attempt %d: wait %v, want in [%v, %v]", attempt, d, hi/2, hi)
			}
		}
	}
	busy := &APIError{Code: pb.ErrorCode_ERROR_CODE_BUSY, RetryAfter: 700 * time.Millisecond}
	seen := map[time.Duration]bool{}
	for range 50 {
		d := retryWait(1, busy)
		if d < 700*time.Millisecond || d > 840*time.Millisecond {
			t.Fatalf("busy with retry-after 700ms: wait %v, want in [700ms, 840ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("%d distinct waits in 50: want jitter", len(seen))
	}
	if !errors.Is(busy, ErrBusy) || !errors.Is(busy, ErrUnavailable) || !retryable(busy) {
		t.Fatalf("BUSY is not a retryable ErrBusy")
	}
}

// TestClientRetriesBusy: calls answered BUSY are retried after the
// retry-after until served; a full queue (RESOURCE_EXHAUSTED) is returned
// at once with its retry-after. The coordinator is a typed fake served
// with transport's ServeAPI.
func TestClientRetriesBusy(t *testing.T) {
	e := transporttest.RunServer(t)
	conn := transport.NewConn(transporttest.Connect(t, e), transporttest.Config(e).Subjects(), transporttest.Logger(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(ctx, conn, transporttest.Config(e), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var gets, submits atomic.Int32
	stop, err := conn.ServeAPI(transport.APIHandlers{
		Get: func(context.Context, *pb.GetRequest) (*pb.GetReply, error) {
			if gets.Add(1) <= 2 {
				return nil, &transport.APIError{Code: pb.ErrorCode_ERROR_CODE_BUSY, Message: "coordinator busy", RetryAfter: 150 * time.Millisecond}
			}
			return &pb.GetReply{Job: &pb.JobStatus{Id: "j-1", State: pb.JobState_JOB_STATE_RUNNING}}, nil
		},
		Submit: func(context.Context, *pb.SubmitRequest) (*pb.SubmitReply, error) {
			submits.Add(1)
			return nil, &transport.APIError{Code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED,
				Message: "queue full: 5 jobs queued, want fewer than 5 (Limits.MaxQueued); retry later", RetryAfter: time.Second}
		},
	}, transport.APIConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer stop() //nolint:errcheck
	if err := conn.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	st, err := c.Get(ctx, "j-1")
	if err != nil || st.GetId() != "j-1" {
		t.Fatalf("get: %v, %v", st, err)
	}
	if n, took := gets.Load(), time.Since(start); n != 3 || took < 300*time.Millisecond {
		t.Fatalf("%d attempts in %v: want 3, at least 2 × the 150ms retry-after", n, took)
	}

	_, err = c.Submit(ctx, &pb.JobSpec{})
	var ae *APIError
	if !errors.As(err, &ae) || !errors.Is(err, ErrExhausted) || ae.RetryAfter != time.Second || submits.Load() != 1 {
		t.Fatalf("full queue: %v (%d attempts), want ErrExhausted once with retry-after 1s", err, submits.Load())
	}

	// A coordinator busy until the context ends: the call gives up then.
	gets.Store(-1000)
	sctx, scancel := context.WithTimeout(ctx, 400*time.Millisecond)
	defer scancel()
	if _, err := c.Get(sctx, "j-1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("busy until the deadline: %v, want ErrUnavailable", err)
	}
}

// TestClientUnreachable: the errors of a cluster that does not answer are
// told apart from the coordinator's refusals: no server at the URL
// (NoServer, from Connect), no responder, a timeout, a closed connection
// and BUSY are Unreachable; a refusal is not.
func TestClientUnreachable(t *testing.T) {
	cfg := transport.DefaultConfig()
	cfg.URLs, cfg.ConnectTimeout = []string{"nats://127.0.0.1:1"}, 200*time.Millisecond
	_, err := Connect(context.Background(), cfg, Options{})
	if !NoServer(err) {
		t.Fatalf("Connect to a closed port: %v, want NoServer", err)
	}

	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	c, err := New(context.Background(), transport.NewConn(nc, transporttest.Config(e).Subjects(), nil), transporttest.Config(e),
		Options{RequestTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = c.Get(ctx, "j-1") // nobody serves the API
	if !Unreachable(err) || NoServer(err) {
		t.Fatalf("no coordinator: %v, want Unreachable (not NoServer)", err)
	}
	nc.Close()
	if _, err = c.Get(context.Background(), "j-1"); !Unreachable(err) {
		t.Fatalf("closed connection: %v, want Unreachable", err)
	}
	for _, err := range []error{
		&APIError{Code: pb.ErrorCode_ERROR_CODE_BUSY},
		&APIError{Code: pb.ErrorCode_ERROR_CODE_NOT_LEADER},
	} {
		if !Unreachable(err) {
			t.Errorf("%v: want Unreachable", err)
		}
	}
	for _, err := range []error{
		&APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "spec.d", Message: "0: want 1..256"},
		&APIError{Code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED},
		errors.New("something else"),
	} {
		if Unreachable(err) {
			t.Errorf("%v: Unreachable, want not", err)
		}
	}
}
