package transport_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportRingPeerClosedAbandonsAtOnce: when rank 0's ring closes
// (its shard finished) while rank 1 still has frames for it — one of them
// blocked on rank 0's full buffer — every one of them is abandoned at once
// instead of after SendTimeout (then two probe intervals) each. Found by
// `ringattn bench recovery`: after a NATS restart a rank spent 11 s sending
// ten frames to a finished peer. A ring opened later on rank 0's subject
// gets frames again, and a replayed close notice of the earlier ring does
// not silence it.
func TestTransportRingPeerClosedAbandonsAtOnce(t *testing.T) {
	e := transporttest.RunServer(t)
	const sendTimeout = 10 * time.Second
	tweak := func(c *transport.RingConfig) {
		c.PieceBytes = 64 << 10
		c.WindowBytes = 128 << 10
		c.BufferBytes = 1 // one completed frame fills it: acks withheld
		c.SendTimeout = sendTimeout
		c.ProbeInterval = time.Second
		c.RecvTimeout = 30 * time.Second
	}
	rings, conns := newRings(t, e, 2, tweak)
	ctx := ctxT(t, 60*time.Second)
	f := stepFrame // 4 pieces

	// Record the notices to rank 1, to replay rank 0's close later.
	var mu sync.Mutex
	var closes []*nats.Msg
	spy := transporttest.Connect(t, e)
	sub, err := spy.Subscribe(transport.NewSubjects("").RingCtl("job-r", 3, 1), func(m *nats.Msg) {
		if m.Header.Get("Ra-Ctl") == "closed" {
			mu.Lock()
			closes = append(closes, m)
			mu.Unlock()
		}
	})
	must(t, err)
	defer sub.Unsubscribe()
	must(t, spy.Flush())

	must(t, rings[1].Send(ctx, 0, f(0))) // fills rank 0's buffer
	const frames = 10
	start := time.Now()
	blocked := sendAsync(ctx, rings[1], 0, f(1))
	transporttest.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st := rings[1].Stats(); st.PiecesSent < 4+2 { // frame 0, then a window of frame 1
			return fmt.Errorf("frame 1 not blocked on the window yet: %+v", st)
		}
		return nil
	})
	must(t, rings[0].Close()) // rank 0 finished
	must(t, blocked())
	for s := 2; s <= frames; s++ {
		must(t, rings[1].Send(ctx, 0, f(s)))
	}
	el := time.Since(start)
	st := rings[1].Stats()
	t.Logf("%d frames to a closed peer abandoned in %v (SendTimeout %v); sender stats %+v", frames, el, sendTimeout, st)
	if st.FramesAbandoned != frames || st.FramesSent != 1 {
		t.Fatalf("sender stats %+v: want %d frames abandoned, 1 sent", st, frames)
	}
	// Without the notice the blocked frame alone takes SendTimeout.
	if el >= sendTimeout {
		t.Fatalf("%d frames to a closed peer took %v: want well under one SendTimeout (%v)", frames, el, sendTimeout)
	}

	// Rank 0 listens again (a new ring, a new session): frames reach it.
	cfg := transport.RingConfig{Job: "job-r", Epoch: 3, Rank: 0, Size: 2, Logger: transporttest.Logger(t)}
	tweak(&cfg)
	cfg.BufferBytes = 0
	r0, err := transport.NewNATSRing(conns[0], cfg)
	must(t, err)
	defer r0.Close()
	step := 100
	sendUntilDelivered := func(what string) {
		t.Helper()
		transporttest.Eventually(t, 20*time.Second, time.Millisecond, func() error {
			step++
			before := rings[1].Stats().FramesAbandoned
			must(t, rings[1].Send(ctx, 0, f(step)))
			if rings[1].Stats().FramesAbandoned != before {
				return fmt.Errorf("%s: frame %d abandoned", what, step)
			}
			got, err := r0.Recv(ctx, 1, f(step).Key)
			must(t, err)
			equalF32(t, what, got.Tensors[0], f(step).Tensors[0])
			return nil
		})
	}
	sendUntilDelivered("frame after the peer listened again")

	// The earlier ring's close notice, replayed, is old news.
	mu.Lock()
	if len(closes) != 1 {
		t.Fatalf("saw %d close notices to rank 1, want 1", len(closes))
	}
	old := closes[0]
	mu.Unlock()
	must(t, spy.PublishMsg(old))
	must(t, spy.Flush())
	transporttest.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := rings[1].Stats().PeersClosed; n != 2 {
			return fmt.Errorf("rank 1 handled %d close notices, want 2", n)
		}
		return nil
	})
	before := rings[1].Stats().FramesAbandoned
	step++
	must(t, rings[1].Send(ctx, 0, f(step)))
	got, err := r0.Recv(ctx, 1, f(step).Key)
	must(t, err)
	equalF32(t, "frame after a replayed close notice", got.Tensors[0], f(step).Tensors[0])
	if n := rings[1].Stats().FramesAbandoned; n != before {
		t.Fatalf("%d frames abandoned after a replayed close notice of an earlier ring", n-before)
	}
}

// TestTransportRingAbandonedFrameFailsAtOnce: a frame its sender abandons
// (the receiver is busy: its buffer is full) is reported to the receiver,
// whose Recv of it returns ringattn.ErrTimeout at once — and again when
// asked again — instead of after RecvTimeout; pieces of it arriving late
// are dropped, and the frames after it arrive intact. Found by `ringattn
// bench recovery`: a drained worker's busy peer waited the full receive
// timeout for every frame abandoned to it.
func TestTransportRingAbandonedFrameFailsAtOnce(t *testing.T) {
	e := transporttest.RunServer(t)
	const recvTimeout = 30 * time.Second
	rings, conns := newRings(t, e, 2, func(c *transport.RingConfig) {
		c.PieceBytes = 64 << 10
		c.WindowBytes = 128 << 10
		c.BufferBytes = 1
		c.SendTimeout = 300 * time.Millisecond
		c.ProbeInterval = 50 * time.Millisecond
		c.RecvTimeout = recvTimeout
	})
	ctx := ctxT(t, 60*time.Second)
	f := stepFrame // 4 pieces
	var mu sync.Mutex
	var sent []*nats.Msg
	transport.SetMutate(rings[0], func(m *nats.Msg) []*nats.Msg {
		if m.Header.Get("Ra-Step") == "1" {
			mu.Lock()
			sent = append(sent, m)
			mu.Unlock()
		}
		return []*nats.Msg{m}
	})
	must(t, rings[0].Send(ctx, 1, f(0))) // fills the receiver's buffer
	must(t, rings[0].Send(ctx, 1, f(1))) // acks withheld: abandoned after SendTimeout
	if st := rings[0].Stats(); st.FramesAbandoned != 1 {
		t.Fatalf("sender stats %+v: want frame 1 abandoned", st)
	}
	for try := range 2 {
		start := time.Now()
		_, err := rings[1].Recv(ctx, 0, f(1).Key)
		el := time.Since(start)
		if !errors.Is(err, ringattn.ErrTimeout) {
			t.Fatalf("Recv %d of the abandoned frame: %v, want ringattn.ErrTimeout", try, err)
		}
		t.Logf("Recv %d of the abandoned frame: %v after %v (RecvTimeout %v)", try, err, el, recvTimeout)
		if el >= recvTimeout/6 {
			t.Fatalf("Recv %d of the abandoned frame took %v: want it at once, well before RecvTimeout %v", try, el, recvTimeout)
		}
	}
	// The pieces of frame 1 that went out, replayed late (as if delayed;
	// another session, so the link's sequence accepts them), are dropped;
	// nothing is delivered twice.
	mu.Lock()
	late := sent
	mu.Unlock()
	if len(late) == 0 {
		t.Fatal("no piece of frame 1 was published before it was abandoned")
	}
	got, err := rings[1].Recv(ctx, 0, f(0).Key) // frees the buffer
	must(t, err)
	equalF32(t, "frame 0", got.Tensors[0], f(0).Tensors[0])
	must(t, rings[0].Send(ctx, 1, f(2)))
	got, err = rings[1].Recv(ctx, 0, f(2).Key)
	must(t, err)
	equalF32(t, "frame 2", got.Tensors[0], f(2).Tensors[0])
	for _, m := range late {
		c := nats.NewMsg(m.Subject)
		c.Data = m.Data
		c.Header = nats.Header{}
		for k, v := range m.Header {
			c.Header[k] = v
		}
		c.Header.Set("Ra-Sess", "replay")
		must(t, conns[0].PublishMsg(c))
	}
	must(t, conns[0].Flush())
	transporttest.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st := rings[1].Stats(); st.Late < 1 {
			return fmt.Errorf("late pieces of the abandoned frame not dropped yet: %+v", st)
		}
		return nil
	})
	if _, err := rings[1].Recv(ctx, 0, f(1).Key); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("Recv of the abandoned frame after late pieces: %v, want ringattn.ErrTimeout", err)
	}
	must(t, rings[0].Send(ctx, 1, f(3)))
	got, err = rings[1].Recv(ctx, 0, f(3).Key)
	must(t, err)
	equalF32(t, "frame 3", got.Tensors[0], f(3).Tensors[0])
	st := rings[1].Stats()
	t.Logf("receiver stats %+v", st)
	if st.AbandonedByPeer != 1 || st.FramesReceived != 3 || st.Timeouts != 0 || st.BufferedBytes != 0 {
		t.Fatalf("receiver stats %+v: want 1 frame abandoned by its sender, 3 received, no timeouts, an empty buffer", st)
	}
}

// TestTransportRingRecvCanceledThenAgain: a Recv whose context ends marks
// the frame given up, so a copy arriving later does not sit in the buffer;
// a Recv asking for it again lets the next copy in (a split-KV rank waits
// several receive timeouts for a slow child's partial).
func TestTransportRingRecvCanceledThenAgain(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) { c.RecvTimeout = 10 * time.Second })
	ctx := ctxT(t, 60*time.Second)
	f := ringattn.Frame{Key: ringattn.Key{Kind: ringattn.KindPartial, Step: 0, Block: 1},
		Tensors: [][]float32{randVals(41, 5000), randVals(42, 50)}}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := rings[0].Recv(cctx, 1, f.Key); !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv with a canceled context: %v, want context.Canceled", err)
	}
	must(t, rings[1].Send(ctx, 0, f))
	transporttest.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st := rings[0].Stats(); st.Late != 1 {
			return fmt.Errorf("the copy after a canceled Recv not dropped yet: %+v", st)
		}
		return nil
	})
	if st := rings[0].Stats(); st.BufferedBytes != 0 || st.FramesReceived != 0 {
		t.Fatalf("receiver stats %+v: want the late copy dropped, nothing buffered", st)
	}
	// Ask again; the sender sends copies until one arrives after the Recv
	// began (earlier ones are dropped as late).
	type result struct {
		f   ringattn.Frame
		err error
	}
	done := make(chan result, 1)
	go func() {
		got, err := rings[0].Recv(ctx, 1, f.Key)
		done <- result{got, err}
	}()
	var res result
	transporttest.Eventually(t, 10*time.Second, time.Millisecond, func() error {
		select {
		case res = <-done:
			return nil
		default:
		}
		must(t, rings[1].Send(ctx, 0, f))
		return errors.New("the Recv asking again has not got a copy yet")
	})
	must(t, res.err)
	equalF32(t, "partial o", res.f.Tensors[0], f.Tensors[0])
	equalF32(t, "partial lse", res.f.Tensors[1], f.Tensors[1])
}

// TestTransportRingSenderClosedRecvAtOnce: once rank 0's ring closed and
// everything it sent rank 1 has arrived, rank 1's Recv of a frame rank 0
// never sent returns ringattn.ErrTimeout at once instead of after
// RecvTimeout (a drained worker's successor). A frame still on its way when
// the close notice arrives is waited for and delivered.
func TestTransportRingSenderClosedRecvAtOnce(t *testing.T) {
	e := transporttest.RunServer(t)
	const recvTimeout = 30 * time.Second
	rings, conns := newRings(t, e, 2, func(c *transport.RingConfig) {
		c.PieceBytes = 64 << 10
		c.RecvTimeout = recvTimeout
	})
	ctx := ctxT(t, 60*time.Second)
	f := stepFrame // 4 pieces
	// Rank 0's pieces of frame 0 are held back: published only after rank 1
	// has handled rank 0's close notice.
	var mu sync.Mutex
	var held []*nats.Msg
	transport.SetMutate(rings[0], func(m *nats.Msg) []*nats.Msg {
		mu.Lock()
		held = append(held, m)
		mu.Unlock()
		return nil
	})
	must(t, rings[0].Send(ctx, 1, f(0))) // the window holds the frame: no ack needed
	must(t, rings[0].Close())
	transporttest.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if st := rings[1].Stats(); st.PeersClosed != 1 {
			return fmt.Errorf("close notice not handled yet: %+v", st)
		}
		return nil
	})
	type result struct {
		f   ringattn.Frame
		err error
	}
	done := make(chan result, 1)
	go func() {
		got, err := rings[1].Recv(ctx, 0, f(0).Key)
		done <- result{got, err}
	}()
	mu.Lock()
	for _, m := range held {
		must(t, conns[0].PublishMsg(m))
	}
	mu.Unlock()
	must(t, conns[0].Flush())
	res := <-done
	must(t, res.err)
	equalF32(t, "frame sent before the close", res.f.Tensors[0], f(0).Tensors[0])

	start := time.Now()
	_, err := rings[1].Recv(ctx, 0, f(1).Key)
	el := time.Since(start)
	if !errors.Is(err, ringattn.ErrTimeout) || errors.Is(err, ringattn.ErrPeerGone) {
		t.Fatalf("Recv of a frame a closed sender never sent: %v, want ringattn.ErrTimeout (not ErrPeerGone: the rank goes on from the store)", err)
	}
	t.Logf("Recv of a frame a closed sender never sent: %v after %v (RecvTimeout %v)", err, el, recvTimeout)
	if el >= recvTimeout/6 {
		t.Fatalf("Recv of a frame a closed sender never sent took %v: want it at once, well before RecvTimeout %v", el, recvTimeout)
	}
	if st := rings[1].Stats(); st.SenderClosed != 1 || st.FramesReceived != 1 || st.Timeouts != 0 {
		t.Fatalf("receiver stats %+v: want 1 frame received, 1 Recv ended by the sender's close, no timeouts", st)
	}
}
