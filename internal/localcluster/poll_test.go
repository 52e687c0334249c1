package localcluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestPollNamesTheCause: when the deadline cuts the last call short, the
// timeout still names the last error that had a cause of its own.
func TestPollNamesTheCause(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	calls := 0
	err := Poll(ctx, 5*time.Millisecond, func() error {
		calls++
		if calls == 1 {
			return errors.New("worker-0 not listed by the leader")
		}
		<-ctx.Done() // every later call is cut short by the deadline
		return ctx.Err()
	}, "workers live")
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("err = %v; want ErrNotReady", err)
	}
	if !strings.Contains(err.Error(), "worker-0 not listed by the leader") {
		t.Errorf("err = %q; want it to name the earlier cause", err)
	}
}

// TestPollPermanent: a permanent error ends the poll at once with it.
func TestPollPermanent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	boom := errors.New("process exited")
	start := time.Now()
	err := Poll(ctx, time.Millisecond, func() error { return Permanent(boom) }, "ready")
	if !errors.Is(err, boom) || errors.Is(err, ErrNotReady) || time.Since(start) > 10*time.Second {
		t.Fatalf("err = %v after %v; want the permanent error at once", err, time.Since(start))
	}
}
