package transport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// newRings builds `size` ranks of one job epoch, each on its own
// connection, like separate worker processes.
func newRings(t *testing.T, e *transport.Embedded, size int, tweak func(*transport.RingConfig)) ([]*transport.NATSRing, []*nats.Conn) {
	t.Helper()
	rings := make([]*transport.NATSRing, size)
	conns := make([]*nats.Conn, size)
	for r := range size {
		conns[r] = transporttest.Connect(t, e)
		cfg := transport.RingConfig{Job: "job-r", Epoch: 3, Rank: r, Size: size,
			RecvTimeout: 20 * time.Second, Logger: transporttest.Logger(t)}
		if tweak != nil {
			tweak(&cfg)
		}
		ring, err := transport.NewNATSRing(conns[r], cfg)
		must(t, err)
		t.Cleanup(func() { ring.Close() })
		rings[r] = ring
	}
	return rings, conns
}

// sendAsync sends f from ring to rank `to` on a goroutine; wait returns
// Send's error.
func sendAsync(ctx context.Context, ring *transport.NATSRing, to int, f ringattn.Frame) (wait func() error) {
	done := make(chan error, 1)
	go func() { done <- ring.Send(ctx, to, f) }()
	return func() error { return <-done }
}

func kvFrame(step, block int, k, v []float32) ringattn.Frame {
	return ringattn.Frame{Key: ringattn.Key{Kind: ringattn.KindKV, Step: step, Block: block}, Tensors: [][]float32{k, v}}
}

// stepFrame is step's frame of 64 Ki random keys: 4 pieces of 64 KiB.
func stepFrame(step int) ringattn.Frame {
	return kvFrame(step, 0, randVals(uint64(step), 64<<10), nil)
}

func TestTransportRingRoundTripSizes(t *testing.T) {
	e := transporttest.RunServer(t)
	for _, piece := range []string{"default", "max"} {
		t.Run("piece="+piece, func(t *testing.T) {
			rings, conns := newRings(t, e, 2, func(c *transport.RingConfig) {
				c.Job = "job-" + piece
				if piece == "max" {
					c.PieceBytes = int(8<<20) - transport.HeaderRoom
				}
			})
			mp := int(conns[0].MaxPayload())
			ctx := ctxT(t, 120*time.Second)
			sizes := []int{0, 1, mp/4 - 1, mp/4 + 1}
			if piece == "default" {
				sizes = append(sizes, 100<<20/4)
			}
			for i, n := range sizes {
				k, v := randVals(uint64(2*i), n), randVals(uint64(2*i+1), n/3)
				f := kvFrame(1, i, k, v)
				start := time.Now()
				wait := sendAsync(ctx, rings[0], 1, f)
				got, err := rings[1].Recv(ctx, 0, f.Key)
				must(t, err)
				must(t, wait())
				t.Logf("%d+%d values: %v", n, n/3, time.Since(start))
				if got.Key != f.Key || len(got.Tensors) != 2 {
					t.Fatalf("frame %+v with %d tensors, want %+v with 2", got.Key, len(got.Tensors), f.Key)
				}
				equalF32(t, "k", got.Tensors[0], k)
				equalF32(t, "v", got.Tensors[1], v)
			}
			// A frame without tensors.
			f := ringattn.Frame{Key: ringattn.Key{Kind: ringattn.KindPartial, Step: 0, Block: 1}}
			wait := sendAsync(ctx, rings[1], 0, f)
			got, err := rings[0].Recv(ctx, 1, f.Key)
			must(t, err)
			must(t, wait())
			if got.Key != f.Key || len(got.Tensors) != 0 {
				t.Fatalf("empty frame came back as %+v with %d tensors", got.Key, len(got.Tensors))
			}
			st := rings[1].Stats()
			if st.Corrupt+st.Incomplete+st.Duplicates+st.Foreign+st.Timeouts != 0 || st.BufferedBytes != 0 {
				t.Fatalf("receiver stats %+v: want no faults and an empty buffer", st)
			}
		})
	}
}

func TestTransportRingBF16(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) { c.Encoding = transport.BF16 })
	ctx := ctxT(t, 30*time.Second)
	k := randVals(5, 300001)
	f := kvFrame(2, 0, k, nil)
	wait := sendAsync(ctx, rings[0], 1, f)
	got, err := rings[1].Recv(ctx, 0, f.Key)
	must(t, err)
	must(t, wait())
	for i, v := range k {
		if w := transport.BF16ToF32(transport.F32ToBF16(v)); got.Tensors[0][i] != w {
			t.Fatalf("value %d = %v, want bf16(%v) = %v", i, got.Tensors[0][i], v, w)
		}
	}
	if st := rings[0].Stats(); st.BytesSent != int64(2*len(k)) {
		t.Fatalf("sent %d bytes, want %d (2 per value)", st.BytesSent, 2*len(k))
	}
}

// TestTransportRingSendRefusesBadFrames: frames the ring cannot carry are
// refused with an error naming what is wrong, and nothing is sent.
func TestTransportRingSendRefusesBadFrames(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, nil)
	ctx := ctxT(t, 30*time.Second)
	good := kvFrame(1, 0, randVals(1, 64), randVals(2, 64))
	strided := good
	strided.Stride = 16 // views into larger tensors: only in-process rings take them
	badKind := good
	badKind.Kind = 9
	tooMany := good
	tooMany.Tensors = make([][]float32, 65)
	for _, c := range []struct {
		name string
		f    ringattn.Frame
		is   error
		want string
	}{
		{"strided", strided, transport.ErrInvalidShape, "Stride 16"},
		{"kind", badKind, transport.ErrInvalidName, "frame kind 9"},
		{"tensors", tooMany, transport.ErrTooLarge, "65 tensors"},
	} {
		err := rings[0].Send(ctx, 1, c.f)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s frame: Send = %v, want %v naming %q", c.name, err, c.is, c.want)
		}
	}
	if st := rings[0].Stats(); st.BytesSent != 0 {
		t.Fatalf("refused frames sent %d bytes", st.BytesSent)
	}
}

// TestTransportRingSlowFrameNotTimedOut: a frame whose pieces keep coming
// is waited for past RecvTimeout; only a stall times out.
func TestTransportRingSlowFrameNotTimedOut(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) {
		c.PieceBytes = 16 << 10
		c.RecvTimeout = time.Second
	})
	transport.SetMutate(rings[0], func(m *nats.Msg) []*nats.Msg {
		time.Sleep(50 * time.Millisecond) // a slow link: 30 pieces take 1.5 s
		return []*nats.Msg{m}
	})
	ctx := ctxT(t, 30*time.Second)
	k := randVals(31, 30*4<<10)
	start := time.Now()
	wait := sendAsync(ctx, rings[0], 1, kvFrame(1, 0, k, nil))
	got, err := rings[1].Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key)
	must(t, err)
	must(t, wait())
	t.Logf("frame of 30 pieces received after %v with a 1 s RecvTimeout", time.Since(start))
	equalF32(t, "frame", got.Tensors[0], k)
}

// TestTransportRingPayloadAligned: a padded header puts the payload of a
// large message on a cache line of the buffer nats.go receives it in, so
// the ring adopts F32 pieces in place; headers of every length are padded
// right.
func TestTransportRingPayloadAligned(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	sub, err := nc.SubscribeSync("align")
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 1<<20)
	for n := range 70 {
		m := nats.NewMsg("align")
		m.Header.Set("Ra-Job", strings.Repeat("j", 1+n))
		m.Header.Set("Ra-Crc", "1234abcd")
		transport.PadHeader(m.Header)
		m.Data = payload
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
		got, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Data) != len(payload) || got.Header.Get("Ra-Job") != m.Header.Get("Ra-Job") {
			t.Fatalf("job %d bytes: received %d bytes, job header %q", 1+n, len(got.Data), got.Header.Get("Ra-Job"))
		}
		if off := uintptr(unsafe.Pointer(&got.Data[0])) % transport.PayloadAlign; off != 0 {
			t.Fatalf("job header of %d bytes: payload at %d bytes past a %d-byte boundary, expected aligned",
				1+n, off, transport.PayloadAlign)
		}
	}
}
