package transport_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// rawPiece builds a one-piece frame of vals (f32) from rank `from` of
// job-r epoch 3 to rank `to`, with the headers Send writes; set then
// overrides headers ("" deletes one).
func rawPiece(to, from int, sess string, seq uint64, step int, vals []float32, set map[string]string) *nats.Msg {
	m := nats.NewMsg(transport.NewSubjects("").Ring("job-r", 3, to))
	m.Data = make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(m.Data[4*i:], math.Float32bits(v))
	}
	for k, v := range map[string]string{"Ra-Job": "job-r", "Ra-Epoch": "3", "Ra-From": strconv.Itoa(from),
		"Ra-Sess": sess, "Ra-Seq": strconv.FormatUint(seq, 10), "Ra-Kind": "1", "Ra-Step": strconv.Itoa(step),
		"Ra-Block": "0", "Ra-Piece": "0", "Ra-Count": "1", "Ra-Tensor": "0", "Ra-Off": "0",
		"Ra-Shape": strconv.Itoa(len(vals)), "Ra-Enc": "f32"} {
		m.Header.Set(k, v)
	}
	for k, v := range set {
		if k == "data" {
			m.Data = []byte(v)
			continue
		}
		if v == "" {
			m.Header.Del(k)
			continue
		}
		m.Header.Set(k, v)
	}
	if m.Header.Get("Ra-Crc") == "" {
		m.Header.Set("Ra-Crc", strconv.FormatUint(uint64(transport.CRC32C(m.Data)), 16))
	}
	return m
}

// hostilePieces are malformed pieces, each one message; the comment says
// what the old code did with it.
var hostilePieces = []struct {
	name string
	set  map[string]string
}{
	{"offset 2^63-1", map[string]string{"Ra-Off": "9223372036854775807"}}, // off+n wrapped: panic in verifyPiece
	{"offset -4", map[string]string{"Ra-Off": "-4"}},
	{"offset past tensor", map[string]string{"Ra-Off": "1", "Ra-Shape": "1"}},
	{"shape 2^62", map[string]string{"Ra-Shape": "4611686018427387904"}}, // n*4 wrapped to 0: make() panicked
	{"shape 2^61+1", map[string]string{"Ra-Shape": "2305843009213693953"}},
	{"shape 2^40", map[string]string{"Ra-Shape": "1099511627776"}},
	{"shape sum overflows", map[string]string{"Ra-Shape": "9223372036854775807,9223372036854775807"}},
	{"shape negative", map[string]string{"Ra-Shape": "-1"}},
	{"shape 65 tensors", map[string]string{"Ra-Shape": strings.Repeat("1,", 64) + "1"}},
	{"shape 1M commas", map[string]string{"Ra-Shape": strings.Repeat(",", 1<<20)}},
	{"count 2^63-1", map[string]string{"Ra-Count": "9223372036854775807"}},
	{"count 0", map[string]string{"Ra-Count": "0"}},
	{"count -1", map[string]string{"Ra-Count": "-1"}},
	{"piece -1", map[string]string{"Ra-Piece": "-1"}},
	{"piece past count", map[string]string{"Ra-Piece": "1"}},
	{"tensor -1", map[string]string{"Ra-Tensor": "-1"}},
	{"tensor 2^63-1", map[string]string{"Ra-Tensor": "9223372036854775807"}},
	{"tensor past shape", map[string]string{"Ra-Tensor": "1"}},
	{"kind 257 (wraps to KV)", map[string]string{"Ra-Kind": "257"}},
	{"kind 0", map[string]string{"Ra-Kind": "0"}},
	{"kind missing", map[string]string{"Ra-Kind": ""}},
	{"step -1", map[string]string{"Ra-Step": "-1"}},
	{"block 1e30", map[string]string{"Ra-Block": "1000000000000000000000000000000"}},
	{"encoding f64", map[string]string{"Ra-Enc": "f64"}},
	{"3 bytes of f32", map[string]string{"data": "abc"}},
	{"crc not hex", map[string]string{"Ra-Crc": "zz"}},
	{"crc 2^40", map[string]string{"Ra-Crc": "10000000000"}},
	{"session 1000 bytes", map[string]string{"Ra-Sess": strings.Repeat("s", 1000)}},
	{"session missing", map[string]string{"Ra-Sess": ""}},
	{"seq -1", map[string]string{"Ra-Seq": "-1"}},
	{"seq 2^64", map[string]string{"Ra-Seq": "18446744073709551616"}},
	{"from 2", map[string]string{"Ra-From": "2"}},
	{"count 2 for 1 value", map[string]string{"Ra-Count": "2"}},
	{"empty piece of a 1-value frame", map[string]string{"data": ""}},
}

// TestTransportRingHostilePieces publishes each malformed piece on rank
// 1's ring subject: none panics (the first killed the process), each is
// dropped and counted as malformed, and a frame sent after them arrives
// intact.
func TestTransportRingHostilePieces(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, conns := newRings(t, e, 2, nil)
	ctx := ctxT(t, 30*time.Second)
	for i, hp := range hostilePieces {
		must(t, conns[0].PublishMsg(rawPiece(1, 0, fmt.Sprintf("hostile-%d", i), 1, 7, []float32{1}, hp.set)))
	}
	// A frame whose two pieces overlap, and one whose pieces end before
	// its tensor is filled.
	two := []float32{1, 2}
	must(t, conns[0].PublishMsg(rawPiece(1, 0, "overlap", 1, 8, two, map[string]string{"Ra-Count": "2", "data": "abcd"})))
	must(t, conns[0].PublishMsg(rawPiece(1, 0, "overlap", 2, 8, two, map[string]string{"Ra-Count": "2", "Ra-Piece": "1", "data": "abcd"})))
	must(t, conns[0].PublishMsg(rawPiece(1, 0, "short", 1, 9, make([]float32, 3), map[string]string{"Ra-Count": "2", "data": "abcd"})))
	must(t, conns[0].PublishMsg(rawPiece(1, 0, "short", 2, 9, make([]float32, 3), map[string]string{"Ra-Count": "2", "Ra-Piece": "1", "Ra-Off": "1", "data": "abcd"})))
	must(t, conns[0].Flush())

	k := randVals(3, 5000)
	must(t, rings[0].Send(ctx, 1, kvFrame(1, 0, k, k[:7])))
	got, err := rings[1].Recv(ctx, 0, kvFrame(1, 0, nil, nil).Key)
	must(t, err)
	equalF32(t, "frame after hostile pieces", got.Tensors[0], k)
	equalF32(t, "frame after hostile pieces", got.Tensors[1], k[:7])
	st := rings[1].Stats()
	// Each hostile piece, the overlapping piece and the short frame's end.
	if want := int64(len(hostilePieces) + 2); st.Malformed != want || st.HandlerPanics != 0 {
		t.Fatalf("receiver stats %+v: want %d malformed, no handler panic", st, want)
	}
	for step := 7; step <= 9; step++ {
		if _, ok := tryRecv(rings[1], 0, ringattn.Key{Kind: ringattn.KindKV, Step: step}); ok {
			t.Fatalf("a hostile frame of step %d was delivered", step)
		}
	}
}

// tryRecv reports whether frame key from `from` is ready now.
func tryRecv(r *transport.NATSRing, from int, key ringattn.Key) (ringattn.Frame, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	f, err := r.Recv(ctx, from, key)
	return f, err == nil
}

// hostileNotices are malformed acknowledgements and control notices.
var hostileNotices = []struct {
	name, kind string // kind: "ack" or "ctl"
	set        map[string]string
}{
	{"ack from -1", "ack", map[string]string{"Ra-From": "-1"}},
	{"ack from 2^63-1", "ack", map[string]string{"Ra-From": "9223372036854775807"}},
	{"ack seq -1", "ack", map[string]string{"Ra-Seq": "-1"}},
	{"ack receiver session 1000 bytes", "ack", map[string]string{"Ra-Rsess": strings.Repeat("r", 1000)}},
	{"ctl from 5", "ctl", map[string]string{"Ra-From": "5"}},
	{"ctl from itself", "ctl", map[string]string{"Ra-From": "1"}},
	{"ctl session 1000 bytes", "ctl", map[string]string{"Ra-Sess": strings.Repeat("s", 1000)}},
	{"ctl unknown notice", "ctl", map[string]string{"Ra-Ctl": "explode"}},
	{"abandon kind 257", "ctl", map[string]string{"Ra-Ctl": "abandon", "Ra-Kind": "257", "Ra-Step": "1", "Ra-Block": "0"}},
	{"abandon step -1", "ctl", map[string]string{"Ra-Ctl": "abandon", "Ra-Kind": "1", "Ra-Step": "-1", "Ra-Block": "0"}},
	{"abandon block x", "ctl", map[string]string{"Ra-Ctl": "abandon", "Ra-Kind": "1", "Ra-Step": "1", "Ra-Block": "x"}},
}

func rawNotice(kind string, sess string, set map[string]string) *nats.Msg {
	subj := transport.NewSubjects("")
	var m *nats.Msg
	if kind == "ack" {
		m = nats.NewMsg(subj.RingAck("job-r", 3, 1))
		for k, v := range map[string]string{"Ra-From": "0", "Ra-Sess": sess, "Ra-Rsess": "peer", "Ra-Seq": "1"} {
			m.Header.Set(k, v)
		}
	} else {
		m = nats.NewMsg(subj.RingCtl("job-r", 3, 1))
		for k, v := range map[string]string{"Ra-Job": "job-r", "Ra-Epoch": "3", "Ra-From": "0", "Ra-Sess": "peer",
			"Ra-Ctl": "open"} {
			m.Header.Set(k, v)
		}
	}
	for k, v := range set {
		m.Header.Set(k, v)
	}
	return m
}

// TestTransportRingHostileNotices: malformed acknowledgements and control
// notices are dropped and counted; rank 1 still sends and receives.
func TestTransportRingHostileNotices(t *testing.T) {
	e := transporttest.RunServer(t)
	rings, conns := newRings(t, e, 2, nil)
	ctx := ctxT(t, 30*time.Second)
	// Acks must carry rank 1's session to get past the first check: that
	// of its ring, read from a piece it sends.
	sess := make(chan string, 1)
	transport.SetMutate(rings[1], func(m *nats.Msg) []*nats.Msg {
		select {
		case sess <- m.Header.Get("Ra-Sess"):
		default:
		}
		return []*nats.Msg{m}
	})
	must(t, rings[1].Send(ctx, 0, stepFrame(1)))
	_, err := rings[0].Recv(ctx, 1, stepFrame(1).Key)
	must(t, err)
	s1 := <-sess
	for _, hn := range hostileNotices {
		must(t, conns[0].PublishMsg(rawNotice(hn.kind, s1, hn.set)))
	}
	must(t, conns[0].Flush())
	must(t, rings[1].Send(ctx, 0, stepFrame(2)))
	got, err := rings[0].Recv(ctx, 1, stepFrame(2).Key)
	must(t, err)
	equalF32(t, "frame after hostile notices", got.Tensors[0], stepFrame(2).Tensors[0])
	must(t, rings[0].Send(ctx, 1, stepFrame(3)))
	_, err = rings[1].Recv(ctx, 0, stepFrame(3).Key)
	must(t, err)
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := rings[1].Stats(); st.Malformed != int64(len(hostileNotices)) || st.HandlerPanics != 0 {
			return fmt.Errorf("rank 1 stats %+v: want %d malformed, no handler panic", st, len(hostileNotices))
		}
		return nil
	})
}

// TestTransportRingHandlerPanicContained: a panic in each subscription
// handler (injected) is logged at ERROR with its stack, counted, and the
// ring goes on: frames and acknowledgements still flow.
func TestTransportRingHandlerPanicContained(t *testing.T) {
	e := transporttest.RunServer(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) { c.Logger = logger })
	ctx := ctxT(t, 30*time.Second)
	var hmu sync.Mutex
	panicked := map[string]bool{}
	hook := func(handler string, m *nats.Msg) {
		hmu.Lock()
		first := !panicked[handler]
		panicked[handler] = true
		hmu.Unlock()
		if first {
			panic("injected panic in the " + handler + " handler")
		}
	}
	transport.SetHandlerHook(rings[0], hook)
	transport.SetHandlerHook(rings[1], hook)
	// Rank 1's first piece handler call panics (that piece is lost, the
	// frame with it), rank 0's first ack and first ctl notice too.
	for step := 1; step <= 3; step++ {
		must(t, rings[0].Send(ctx, 1, stepFrame(step)))
	}
	got, err := rings[1].Recv(ctx, 0, stepFrame(3).Key)
	must(t, err)
	equalF32(t, "frame after panics", got.Tensors[0], stepFrame(3).Tensors[0])
	rings[1].Close() // a ctl notice to rank 0
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		p0, p1 := rings[0].Stats().HandlerPanics, rings[1].Stats().HandlerPanics
		if p0 != 2 || p1 != 1 {
			return fmt.Errorf("handler panics: rank 0 %d, rank 1 %d; want 2 (ack, ctl) and 1 (piece)", p0, p1)
		}
		return nil
	})
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	for _, h := range []string{"piece", "ack", "ctl"} {
		if !strings.Contains(out, "injected panic in the "+h+" handler") {
			t.Fatalf("no ERROR record of the %s handler's panic in:\n%s", h, out)
		}
	}
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "runtime/debug.Stack") {
		t.Fatalf("panic records are not ERROR with a stack:\n%s", out)
	}
}
