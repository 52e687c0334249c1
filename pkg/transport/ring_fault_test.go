package transport_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// pieceOf reports whether m is piece `piece` of the frame at `step`.
func pieceOf(m *nats.Msg, step, piece string) bool {
	return m.Header.Get("Ra-Step") == step && m.Header.Get("Ra-Piece") == piece
}

func smallPieces(c *transport.RingConfig) {
	c.PieceBytes = 64 << 10
	c.WindowBytes = 256 << 10
}

func TestTransportRingCorruptPiece(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, smallPieces)
	transport.SetMutate(rings[0], func(m *nats.Msg) []*nats.Msg {
		if pieceOf(m, "1", "2") {
			c := nats.NewMsg(m.Subject)
			c.Header = m.Header
			c.Data = append([]byte(nil), m.Data...)
			c.Data[1234] ^= 0x10 // one flipped bit
			return []*nats.Msg{c}
		}
		return []*nats.Msg{m}
	})
	ctx := ctxT(t, 30*time.Second)
	k1, k2 := randVals(1, 256<<10), randVals(2, 256<<10)
	must(t, rings[0].Send(ctx, 1, kvFrame(1, 0, k1, k1)))
	must(t, rings[0].Send(ctx, 1, kvFrame(2, 0, k2, k2)))

	_, err := rings[1].Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key)
	if !errors.Is(err, ringattn.ErrTimeout) || !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("Recv of a frame with a corrupt piece: %v, want ringattn.ErrTimeout and ErrCorrupt", err)
	}
	if !strings.Contains(err.Error(), "CRC32C") {
		t.Fatalf("error %q does not say the CRC failed", err)
	}
	got, err := rings[1].Recv(ctx, 0, kvFrame(2, 0, nil, nil).Key)
	must(t, err)
	equalF32(t, "next frame", got.Tensors[0], k2)
	if st := rings[1].Stats(); st.Corrupt != 1 || st.Incomplete != 1 {
		t.Fatalf("receiver stats %+v: want 1 corrupt piece, 1 incomplete frame", st)
	}
}

func TestTransportRingDroppedPieces(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) {
		smallPieces(c)
		c.ProbeInterval = 20 * time.Millisecond
		c.RecvTimeout = 300 * time.Millisecond
	})
	var dropped atomic.Int64
	transport.SetMutate(rings[0], func(m *nats.Msg) []*nats.Msg {
		// Frame 1 loses its second piece; frame 3 loses all of its pieces,
		// more than a window, so the sender must probe to go on.
		if pieceOf(m, "1", "1") || m.Header.Get("Ra-Step") == "3" {
			dropped.Add(1)
			return nil
		}
		return []*nats.Msg{m}
	})
	ctx := ctxT(t, 30*time.Second)
	frames := map[int][]float32{}
	for step := 1; step <= 4; step++ {
		frames[step] = randVals(uint64(step), 200<<10) // 800 KiB: 13 pieces
		must(t, rings[0].Send(ctx, 1, kvFrame(step, 7, frames[step], nil)))
	}
	for step := 1; step <= 4; step++ {
		got, err := rings[1].Recv(ctx, 0, kvFrame(step, 7, nil, nil).Key)
		if step == 1 || step == 3 {
			if !errors.Is(err, ringattn.ErrTimeout) {
				t.Fatalf("step %d with lost pieces: %v, want ringattn.ErrTimeout", step, err)
			}
			continue
		}
		must(t, err)
		equalF32(t, "frame", got.Tensors[0], frames[step])
	}
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := rings[0].Stats(); st.PiecesLost != dropped.Load() || st.Probes == 0 {
			return errors.New("sender has not accounted every lost piece")
		}
		return nil
	})
	st := rings[0].Stats()
	t.Logf("sender stats %+v", st)
	if st.FramesSent != 4 || st.FramesAbandoned != 0 {
		t.Fatalf("sender stats %+v: want 4 frames sent, none abandoned", st)
	}
}

func TestTransportRingDuplicates(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, conns := newRings(t, e, 2, func(c *transport.RingConfig) {
		smallPieces(c)
		c.RecvTimeout = 200 * time.Millisecond
	})
	var mu sync.Mutex
	var sent []*nats.Msg
	transport.SetMutate(rings[0], func(m *nats.Msg) []*nats.Msg {
		mu.Lock()
		sent = append(sent, m)
		mu.Unlock()
		return []*nats.Msg{m, m} // every piece twice
	})
	ctx := ctxT(t, 30*time.Second)
	k := randVals(9, 100<<10)
	must(t, rings[0].Send(ctx, 1, kvFrame(1, 0, k, nil)))
	got, err := rings[1].Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key)
	must(t, err)
	equalF32(t, "frame", got.Tensors[0], k)
	// Replay the whole frame later: still delivered only once.
	mu.Lock()
	for _, m := range sent {
		must(t, conns[0].PublishMsg(m))
	}
	mu.Unlock()
	must(t, conns[0].Flush())
	if _, err := rings[1].Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("second Recv of a delivered frame: %v, want ringattn.ErrTimeout", err)
	}
	st := rings[1].Stats()
	if st.FramesReceived != 1 || st.Duplicates != int64(2*len(sent)) {
		t.Fatalf("receiver stats %+v: want 1 frame, %d duplicates", st, 2*len(sent))
	}
}

func TestTransportRingForeignFrames(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, conns := newRings(t, e, 2, func(c *transport.RingConfig) { c.RecvTimeout = 300 * time.Millisecond })
	ctx := ctxT(t, 30*time.Second)
	// Rank 0 of an older epoch sends to rank 1 of that epoch: another subject.
	old, err := transport.NewNATSRing(conns[0], transport.RingConfig{Job: "job-r", Epoch: 2, Rank: 0, Size: 2,
		SendTimeout: 200 * time.Millisecond})
	must(t, err)
	defer old.Close()
	must(t, old.Send(ctx, 1, kvFrame(1, 0, []float32{1, 2, 3}, nil)))
	// Forged pieces on the current subject with a wrong epoch or job.
	subj := transport.NewSubjects("").Ring("job-r", 3, 1)
	for _, h := range []map[string]string{
		{"Ra-Job": "job-r", "Ra-Epoch": "2"},
		{"Ra-Job": "job-other", "Ra-Epoch": "3"},
	} {
		m := nats.NewMsg(subj)
		for k, v := range h {
			m.Header.Set(k, v)
		}
		for k, v := range map[string]string{"Ra-From": "0", "Ra-Sess": "x", "Ra-Seq": "1", "Ra-Kind": "1",
			"Ra-Step": "1", "Ra-Block": "0", "Ra-Piece": "0", "Ra-Count": "1", "Ra-Tensor": "0", "Ra-Off": "0",
			"Ra-Shape": "1", "Ra-Enc": "f32", "Ra-Crc": "0"} {
			m.Header.Set(k, v)
		}
		m.Data = []byte{0, 0, 128, 63}
		must(t, conns[0].PublishMsg(m))
	}
	must(t, conns[0].Flush())
	if _, err := rings[1].Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("Recv with only foreign frames sent: %v, want ringattn.ErrTimeout", err)
	}
	if st := rings[1].Stats(); st.Foreign != 2 || st.FramesReceived != 0 {
		t.Fatalf("receiver stats %+v: want 2 foreign pieces dropped, nothing received", st)
	}
}

func TestTransportRingBoundedBuffer(t *testing.T) {
	e := transporttest.RunServer(t)
	const frameBytes = 1 << 20
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) {
		c.PieceBytes = 128 << 10
		c.WindowBytes = 512 << 10
		c.BufferBytes = 4 << 20
	})
	ctx := ctxT(t, 60*time.Second)
	const frames = 24 // 24 MiB, six times the buffer
	var sent atomic.Int64
	errc := make(chan error, 1)
	go func() {
		for i := range frames {
			if err := rings[0].Send(ctx, 1, kvFrame(i, 0, randVals(uint64(i), frameBytes/4), nil)); err != nil {
				errc <- err
				return
			}
			sent.Add(1)
		}
		errc <- nil
	}()
	// The receiver does not read: the sender must be held back.
	transporttest.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		if st := rings[1].Stats(); st.BufferedBytes <= 4<<20 {
			return errors.New("buffer not full yet")
		}
		return nil
	})
	blockedAt := sent.Load()
	if blockedAt == frames {
		t.Fatalf("sender finished all %d frames while the receiver read none", frames)
	}
	for i := range frames {
		got, err := rings[1].Recv(ctx, 0, kvFrame(i, 0, nil, nil).Key)
		must(t, err)
		equalF32(t, "frame", got.Tensors[0], randVals(uint64(i), frameBytes/4))
	}
	must(t, <-errc)
	st := rings[1].Stats()
	t.Logf("sender blocked after %d frames; receiver peak buffer %d bytes", blockedAt, st.PeakBufferedBytes)
	// Bound: the buffer limit, plus what a window lets complete past it.
	if limit := int64(4<<20 + 512<<10 + frameBytes); st.PeakBufferedBytes > limit {
		t.Fatalf("receiver buffered %d bytes at peak, want <= %d", st.PeakBufferedBytes, limit)
	}
	if st.Incomplete+st.Timeouts != 0 || rings[0].Stats().FramesAbandoned != 0 {
		t.Fatalf("frames lost under backpressure: receiver %+v sender %+v", st, rings[0].Stats())
	}
}

func TestTransportRingSendStallAbandons(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) {
		c.PieceBytes = 64 << 10
		c.WindowBytes = 128 << 10
		c.BufferBytes = 1
		c.SendTimeout = 300 * time.Millisecond
		c.ProbeInterval = 50 * time.Millisecond
	})
	ctx := ctxT(t, 30*time.Second)
	f := stepFrame // 4 pieces
	// Frame 0 fills the receiver's buffer; frame 1's acks are withheld, so
	// it is abandoned after SendTimeout.
	must(t, rings[0].Send(ctx, 1, f(0)))
	must(t, rings[0].Send(ctx, 1, f(1)))
	if st := rings[0].Stats(); st.FramesAbandoned != 1 {
		t.Fatalf("sender stats %+v: want the second frame abandoned", st)
	}
	got, err := rings[1].Recv(ctx, 0, f(0).Key) // frees the buffer, releases acks
	must(t, err)
	equalF32(t, "frame 0", got.Tensors[0], f(0).Tensors[0])
	must(t, rings[0].Send(ctx, 1, f(2)))
	if _, err := rings[1].Recv(ctx, 0, f(1).Key); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("Recv of the abandoned frame: %v, want ringattn.ErrTimeout", err)
	}
	got, err = rings[1].Recv(ctx, 0, f(2).Key)
	must(t, err)
	equalF32(t, "frame 2", got.Tensors[0], f(2).Tensors[0])
}

func TestTransportRingErrors(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	for _, c := range []transport.RingConfig{
		{Job: "a.b", Size: 2},
		{Job: "j", Size: 0},
		{Job: "j", Size: 2, Rank: 2},
		{Job: "j", Size: 2, PieceBytes: 64 << 20},
		{Job: "j", Size: 2, PieceBytes: 1 << 20, WindowBytes: 1 << 10},
		{Job: "j", Size: 2, Encoding: 7},
	} {
		if _, err := transport.NewNATSRing(nc, c); !errors.Is(err, transport.ErrInvalidConfig) && !errors.Is(err, transport.ErrInvalidName) {
			t.Errorf("NewNATSRing(%+v): %v, want a config error", c, err)
		} else {
			t.Logf("NewNATSRing(%+v): %v", c, err)
		}
	}
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) { c.RecvTimeout = 100 * time.Millisecond })
	ctx := ctxT(t, 30*time.Second)
	key := kvFrame(0, 0, nil, nil).Key
	if _, err := rings[0].Recv(ctx, 1, key); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("Recv of nothing: %v, want ringattn.ErrTimeout", err)
	}
	if err := rings[0].Send(ctx, 5, kvFrame(0, 0, nil, nil)); !errors.Is(err, transport.ErrInvalidName) {
		t.Fatalf("Send to rank 5 of 2: %v, want ErrInvalidName", err)
	}
	if err := rings[0].Send(ctx, 1, ringattn.Frame{}); !errors.Is(err, transport.ErrInvalidName) {
		t.Fatalf("Send of kind 0: %v, want ErrInvalidName", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := rings[0].Recv(cctx, 1, key); !errors.Is(err, context.Canceled) {
		t.Fatalf("Recv with a canceled context: %v, want context.Canceled", err)
	}
	slow, err := transport.NewNATSRing(transporttest.Connect(t, e), transport.RingConfig{Job: "j", Size: 2})
	must(t, err)
	errc := make(chan error, 1)
	go func() { _, err := slow.Recv(ctx, 1, key); errc <- err }()
	must(t, slow.Close())
	if err := <-errc; !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Recv blocked across Close: %v, want ErrClosed", err)
	}
	if err := slow.Send(ctx, 1, kvFrame(0, 0, nil, nil)); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
	must(t, slow.Close())
}

func TestTransportRingNoGoroutineLeak(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	func() {
		e, err := transport.StartEmbedded(transport.EmbeddedConfig{DataDir: t.TempDir()})
		must(t, err)
		defer e.Shutdown()
		cfg := transporttest.Config(e)
		var conns []*nats.Conn
		var rings []*transport.NATSRing
		for r := range 2 {
			nc, err := transport.Connect(cfg, nil)
			must(t, err)
			conns = append(conns, nc)
			ring, err := transport.NewNATSRing(nc, transport.RingConfig{Job: "leak", Rank: r, Size: 2})
			must(t, err)
			rings = append(rings, ring)
		}
		ctx := ctxT(t, 20*time.Second)
		k := randVals(3, 1<<20)
		must(t, rings[0].Send(ctx, 1, kvFrame(0, 0, k, nil)))
		_, err = rings[1].Recv(ctx, 0, kvFrame(0, 0, nil, nil).Key)
		must(t, err)
		// A Recv blocked when the ring closes must not stay behind.
		errc := make(chan error, 1)
		go func() { _, err := rings[0].Recv(ctx, 1, kvFrame(9, 9, nil, nil).Key); errc <- err }()
		for _, r := range rings {
			must(t, r.Close())
		}
		<-errc
		for _, nc := range conns {
			nc.Close()
		}
	}()
	goleak.VerifyNone(t, ignore)
}

// TestTransportRingPeerStartsLate: a rank sending before its peer's ring
// exists waits for the peer (probing) instead of losing the frame.
func TestTransportRingPeerStartsLate(t *testing.T) {
	e := transporttest.RunServer(t)
	nc0, nc1 := transporttest.Connect(t, e), transporttest.Connect(t, e)
	cfg := transport.RingConfig{Job: "late", Size: 2, ProbeInterval: 20 * time.Millisecond, RecvTimeout: 10 * time.Second}
	r0, err := transport.NewNATSRing(nc0, cfg)
	must(t, err)
	defer r0.Close()
	ctx := ctxT(t, 30*time.Second)
	k := randVals(21, 50000)
	wait := sendAsync(ctx, r0, 1, kvFrame(1, 0, k, nil))
	transporttest.Eventually(t, 10*time.Second, 5*time.Millisecond, func() error {
		if r0.Stats().Probes < 2 {
			return errors.New("sender is not probing for its peer yet")
		}
		return nil
	})
	cfg.Rank = 1
	r1, err := transport.NewNATSRing(nc1, cfg)
	must(t, err)
	defer r1.Close()
	got, err := r1.Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key)
	must(t, err)
	must(t, wait())
	equalF32(t, "frame", got.Tensors[0], k)
	if st := r0.Stats(); st.FramesAbandoned != 0 || st.PiecesLost != 0 {
		t.Fatalf("sender stats %+v: want nothing abandoned or lost", st)
	}
}
