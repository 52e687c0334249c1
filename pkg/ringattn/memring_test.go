package ringattn_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/ringattn"
)

func kv(step, block int) ringattn.Frame {
	return ringattn.Frame{Key: ringattn.Key{Kind: ringattn.KindKV, Step: step, Block: block},
		Tensors: [][]float32{{float32(step)}, {float32(block)}}}
}

// TestRingMemNetSemantics checks the in-memory ring's contract: keyed
// receive holding early frames, timeouts, stale frames dropped, bounded
// buffers, and dead ranks.
func TestRingMemNetSemantics(t *testing.T) {
	ctx := context.Background()
	net := newNet(t, 3, ringattn.MemOptions{RecvTimeout: 30 * time.Millisecond, Buffer: 2})
	defer net.Close()
	r0, r1 := net.Rank(0), net.Rank(1)
	if r1.Rank() != 1 || r1.Size() != 3 {
		t.Fatalf("rank %d of %d", r1.Rank(), r1.Size())
	}

	// Frames are matched by key, not order.
	for _, f := range []ringattn.Frame{kv(1, 5), kv(1, 4)} {
		if err := r0.Send(ctx, 1, f); err != nil {
			t.Fatal(err)
		}
	}
	f, err := r1.Recv(ctx, 0, ringattn.Key{Kind: ringattn.KindKV, Step: 1, Block: 4})
	if err != nil || f.Tensors[1][0] != 4 {
		t.Fatalf("recv block 4: %+v, %v", f, err)
	}

	// A missing frame times out.
	_, err = r1.Recv(ctx, 0, ringattn.Key{Kind: ringattn.KindKV, Step: 1, Block: 9})
	if !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("missing frame: %v", err)
	}

	// Asking for step 2 drops the stale step-1 frame still queued, and a
	// late step-1 frame is dropped on arrival.
	if err := r0.Send(ctx, 1, kv(2, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Recv(ctx, 0, ringattn.Key{Kind: ringattn.KindKV, Step: 2, Block: 0}); err != nil {
		t.Fatal(err)
	}
	if err := r0.Send(ctx, 1, kv(1, 7)); err != nil {
		t.Fatal(err)
	}
	if st := net.Stats(); st.Stale != 2 {
		t.Fatalf("stale = %d, expected 2 (%+v)", st.Stale, st)
	}

	// The buffer holds 2 frames; a third Send blocks until ctx ends.
	for b := range 2 {
		if err := r0.Send(ctx, 1, kv(3, b)); err != nil {
			t.Fatal(err)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	err = r0.Send(cctx, 1, kv(3, 2))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("send into a full buffer: %v", err)
	}

	// A receive blocked on a rank that dies returns ErrPeerGone at once;
	// the dead rank's own calls return ErrKilled; sends to it ErrPeerGone.
	net2 := newNet(t, 3, ringattn.MemOptions{RecvTimeout: time.Minute})
	defer net2.Close()
	done := make(chan error, 1)
	go func() {
		_, err := net2.Rank(2).Recv(ctx, 1, ringattn.Key{Kind: ringattn.KindKV, Step: 1})
		done <- err
	}()
	net2.Kill(1)
	select {
	case err := <-done:
		if !errors.Is(err, ringattn.ErrPeerGone) {
			t.Fatalf("recv from a killed rank: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("recv from a killed rank did not return")
	}
	if err := net2.Rank(1).Send(ctx, 2, kv(1, 0)); !errors.Is(err, ringattn.ErrKilled) {
		t.Fatalf("send from a killed rank: %v", err)
	}
	if err := net2.Rank(0).Send(ctx, 1, kv(1, 0)); !errors.Is(err, ringattn.ErrPeerGone) {
		t.Fatalf("send to a killed rank: %v", err)
	}
	if err := net2.Rank(0).Send(ctx, 0, kv(1, 0)); !errors.Is(err, ringattn.ErrInvalid) {
		t.Fatalf("send to self: %v", err)
	}
}

func TestRingMemNetBadInput(t *testing.T) {
	for name, c := range map[string]struct {
		size int
		opts ringattn.MemOptions
	}{
		"size 0":      {0, ringattn.MemOptions{}},
		"RecvTimeout": {2, ringattn.MemOptions{RecvTimeout: -time.Second}},
		"Buffer":      {2, ringattn.MemOptions{Buffer: -1}},
	} {
		if _, err := ringattn.NewMemNet(c.size, c.opts); !errors.Is(err, ringattn.ErrInvalid) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
	net := newNet(t, 2, ringattn.MemOptions{})
	defer net.Close()
	if err := net.Rank(5).Send(context.Background(), 0, kv(1, 0)); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("send from rank 5 of 2: %v", err)
	}
	if _, err := net.Rank(0).Recv(context.Background(), -1, ringattn.Key{}); !errors.Is(err, ringattn.ErrInvalid) {
		t.Errorf("recv from rank -1: %v", err)
	}
}
