package transport_test

import (
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportRingStallIsSticky: once a frame to a peer that stopped
// listening without a word (it died) is abandoned after SendTimeout, the
// following frames to it are abandoned after two probe intervals, not
// SendTimeout each; a peer that listens again gets frames again. Found by
// testenv's TestSystemNATSRestarted: after a NATS restart a rank whose
// successor had finished from the store spent 30 s per remaining frame.
func TestTransportRingStallIsSticky(t *testing.T) {
	e := transporttest.RunServer(t)
	const sendTimeout = time.Second
	tweak := func(c *transport.RingConfig) {
		c.PieceBytes = 64 << 10
		c.WindowBytes = 128 << 10
		c.SendTimeout = sendTimeout
		c.ProbeInterval = 50 * time.Millisecond
		c.RecvTimeout = 5 * time.Second
	}
	rings, conns := newRings(t, e, 2, tweak)
	ctx := ctxT(t, 60*time.Second)
	f := stepFrame // 4 pieces
	must(t, rings[0].Send(ctx, 1, f(0)))
	got, err := rings[1].Recv(ctx, 0, f(0).Key)
	must(t, err)
	equalF32(t, "frame 0", got.Tensors[0], f(0).Tensors[0])
	conns[1].Close() // the peer dies without a word (SIGKILL): no close notice

	start := time.Now()
	const frames = 5
	for s := 1; s <= frames; s++ {
		must(t, rings[0].Send(ctx, 1, f(s)))
	}
	el := time.Since(start)
	if st := rings[0].Stats(); st.FramesAbandoned != frames {
		t.Fatalf("sender stats %+v: want %d frames abandoned", st, frames)
	}
	if el >= 2*sendTimeout {
		t.Fatalf("%d frames to a gone peer took %v: want one SendTimeout (%v) plus two probe intervals per later frame", frames, el, sendTimeout)
	}
	t.Logf("%d frames to a gone peer abandoned in %v (SendTimeout %v)", frames, el, sendTimeout)

	// The peer listens again (a new ring on its subject): its answers to
	// the probes clear the stall and frames flow.
	cfg := transport.RingConfig{Job: "job-r", Epoch: 3, Rank: 1, Size: 2, Logger: transporttest.Logger(t)}
	tweak(&cfg)
	r1, err := transport.NewNATSRing(transporttest.Connect(t, e), cfg)
	must(t, err)
	defer r1.Close()
	var sent error
	for s := 10; s < 20; s++ { // until a frame is not abandoned
		before := rings[0].Stats().FramesAbandoned
		if sent = rings[0].Send(ctx, 1, f(s)); sent == nil && rings[0].Stats().FramesAbandoned == before {
			got, err := r1.Recv(ctx, 0, f(s).Key)
			must(t, err)
			equalF32(t, "frame after the peer came back", got.Tensors[0], f(s).Tensors[0])
			return
		}
	}
	t.Fatalf("no frame reached the peer after it listened again (last send: %v, stats %+v)", sent, rings[0].Stats())
}
