package transport_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportStoreGetCanceledPromptly: canceling a read of a 64 MiB
// block returns within the 1 s rule (bounded at 2 s here for a loaded
// machine), at several points of the transfer, and leaves no goroutine
// behind. The object store's own reader ignored the cancellation until its
// deadline: 5 s + 1 s per 4 MiB = 21 s.
func TestTransportStoreGetCanceledPromptly(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 120*time.Second)
	data := randVals(64, 64<<20/4)
	must(t, s.PutBlock(ctx, "job-c", "k", 0, data, transport.F32))
	start := time.Now()
	got, err := s.GetBlock(ctx, "job-c", "k", 0)
	must(t, err)
	full := time.Since(start)
	equalF32(t, "block", got, data)
	t.Logf("uncanceled read of 64 MiB: %v", full)

	ignore := goleak.IgnoreCurrent()
	var worst time.Duration
	canceledReads := 0
	for _, frac := range []float64{0.1, 0.3, 0.5, 0.8} {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := s.GetBlock(cctx, "job-c", "k", 0)
			done <- err
		}()
		time.Sleep(time.Duration(frac * float64(full)))
		cancel()
		canceled := time.Now()
		select {
		case err := <-done:
			lat := time.Since(canceled)
			worst = max(worst, lat)
			t.Logf("canceled at %.0f%% of the read: returned after %v: %v", 100*frac, lat, err)
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("canceled read: %v, want context.Canceled", err)
			}
			if err != nil {
				canceledReads++
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("canceled at %.0f%% of the read: not returned after 2 s", 100*frac)
		}
	}
	t.Logf("worst cancellation latency %v", worst)
	if canceledReads == 0 {
		t.Fatal("no read was canceled before it completed: the test measured nothing")
	}
	goleak.VerifyNone(t, ignore)
	// The store still reads.
	got, err = s.GetBlock(ctx, "job-c", "k", 0)
	must(t, err)
	equalF32(t, "block after canceled reads", got, data)
}

// TestTransportStoreGetCanceledWhileServerDown: the drain's worst case, a
// read stalled because NATS went away, returns within the 1 s rule of its
// cancellation (bounded at 2 s here), not at its attempt's deadline.
func TestTransportStoreGetCanceledWhileServerDown(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 120*time.Second)
	data := randVals(65, 64<<20/4)
	must(t, s.PutBlock(ctx, "job-d", "k", 0, data, transport.F32))
	start := time.Now()
	_, err := s.GetBlock(ctx, "job-d", "k", 0)
	must(t, err)
	full := time.Since(start)

	// The server must stop while the read is under way. On a loaded
	// machine a read can finish before the stop, which measures nothing:
	// then the attempt is repeated with the stop sooner, up to five times.
	wait := full / 5
	for attempt := 1; ; attempt++ {
		if stalledReadCanceled(t, e, nc, s, ctx, wait) {
			break
		}
		if attempt == 5 {
			t.Fatal("every read finished before the server stopped: the test measured nothing")
		}
		wait /= 2
	}
	must(t, e.Restart())
	transporttest.WaitConnected(t, nc, 10*time.Second)
	got, err := s.GetBlock(ctx, "job-d", "k", 0)
	must(t, err)
	equalF32(t, "block after the restart", got, data)
}

// TestTransportStorePutCanceledPromptly: a canceled write of a 64 MiB
// block returns within the 1 s rule too (bounded at 2 s here), leaving no
// goroutine behind.
func TestTransportStorePutCanceledPromptly(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 120*time.Second)
	data := randVals(66, 64<<20/4)
	start := time.Now()
	must(t, s.PutBlock(ctx, "job-w", "o", 0, data, transport.F32))
	full := time.Since(start)
	ignore := goleak.IgnoreCurrent()
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.PutBlock(cctx, "job-w", "o", 1, data, transport.F32) }()
	time.Sleep(full / 3)
	cancel()
	canceled := time.Now()
	select {
	case err := <-done:
		t.Logf("write of 64 MiB (%v uncanceled) canceled at a third: returned after %v: %v", full, time.Since(canceled), err)
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled write: %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("canceled write: not returned after 2 s")
	}
	goleak.VerifyNone(t, ignore)
}

// stalledReadCanceled starts a read, stops the server after wait, cancels
// the read 300 ms later and checks it returns context.Canceled within 2 s.
// It reports false, with the server running again, when the read finished
// before the server stopped.
func stalledReadCanceled(t *testing.T, e *transport.Embedded, nc *nats.Conn, s *transport.Store, ctx context.Context, wait time.Duration) bool {
	t.Helper()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.GetBlock(cctx, "job-d", "k", 0)
		done <- err
	}()
	time.Sleep(wait)
	select {
	case err := <-done:
		must(t, err)
		t.Logf("the read finished within %v, before the server stopped: again, sooner", wait)
		return false
	default:
	}
	e.Stop() // the read stalls (and retries, while NATS is unreachable)
	time.Sleep(300 * time.Millisecond)
	cancel()
	canceled := time.Now()
	select {
	case err := <-done:
		t.Logf("read of 64 MiB stalled by a stopped server, canceled: returned after %v: %v", time.Since(canceled), err)
		if err == nil {
			// The last bytes were already on their way when the server
			// stopped: nothing stalled.
			must(t, e.Restart())
			transporttest.WaitConnected(t, nc, 10*time.Second)
			return false
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled stalled read: %v, want context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("canceled stalled read: not returned after 2 s")
	}
	return true
}
