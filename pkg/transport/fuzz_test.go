package transport_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// fuzzMaxFrame is the fuzzed rings' MaxFrameBytes: what a piece may make
// the ring allocate, whatever it claims.
const fuzzMaxFrame = 1 << 20

// fuzzRing is rank 1 of 3 of job-r epoch 3 on nc, for one fuzz input.
func fuzzRing(t *testing.T, nc *nats.Conn) *transport.NATSRing {
	t.Helper()
	r, err := transport.NewNATSRing(nc, transport.RingConfig{Job: "job-r", Epoch: 3, Rank: 1, Size: 3,
		MaxFrameBytes: fuzzMaxFrame, RecvTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fuzzConnect connects to e without logging (a fuzz target may not log
// through f).
func fuzzConnect(f *testing.F, e *transport.Embedded) *nats.Conn {
	nc, err := transport.Connect(transporttest.Config(e), nil)
	must(f, err)
	f.Cleanup(nc.Close)
	return nc
}

var fuzzStep atomic.Int64

// checkValidFrameArrives delivers a one-piece frame from rank 2 (a fresh
// session) straight to r's piece handler and checks Recv returns it
// intact: what came before did not break the ring.
func checkValidFrameArrives(t *testing.T, r *transport.NATSRing) {
	t.Helper()
	step := int(fuzzStep.Add(1))
	vals := []float32{1.5, -2, float32(step)}
	transport.DeliverPiece(r, rawPiece(1, 2, "valid-"+strconv.Itoa(step), 1, step, vals, nil))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	f, err := r.Recv(ctx, 2, ringattn.Key{Kind: ringattn.KindKV, Step: step})
	if err != nil {
		t.Fatalf("valid frame after fuzzed input: %v", err)
	}
	if len(f.Tensors) != 1 {
		t.Fatalf("valid frame after fuzzed input: %d tensors, want 1", len(f.Tensors))
	}
	equalF32(t, "valid frame after fuzzed input", f.Tensors[0], vals)
}

// allocatedBy returns the bytes f allocated (the whole process's, so a
// bound on it includes some noise).
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// FuzzRingPiece drives a real NATSRing's piece handler with fuzzed headers
// and payloads: a piece, then `more` following pieces (the next piece
// numbers and sequence numbers, offsets advanced by the payload). It must
// not panic, allocate more than the ring's MaxFrameBytes (plus the
// payloads and some slack) whatever the headers claim, and a valid frame
// delivered after it must arrive intact.
func FuzzRingPiece(f *testing.F) {
	e := transporttest.RunServer(f)
	nc := fuzzConnect(f, e)
	one := []byte{0, 0, 0x80, 0x3f} // 1.0f
	type seed struct {
		from, seq, kind, step, piece, count, tensor, off, shape, enc, crc string
		data                                                              []byte
		fixCRC                                                            bool
		more                                                              int
	}
	valid := seed{"0", "1", "1", "7", "0", "1", "0", "0", "1", "f32", "", one, true, 0}
	seeds := []seed{valid}
	for _, change := range []func(*seed){
		func(s *seed) { s.off = "9223372036854775807" }, // the crasher: off+n wrapped
		func(s *seed) { s.shape = "4611686018427387904" },
		func(s *seed) { s.shape = "1099511627776" },
		func(s *seed) { s.shape = "9223372036854775807,9223372036854775807" },
		func(s *seed) { s.count = "9223372036854775807" },
		func(s *seed) { s.count, s.shape, s.more = "4", "4", 3 },
		func(s *seed) { s.count, s.shape, s.enc, s.data, s.more = "2", "4", "bf16", one, 1 },
		func(s *seed) { s.tensor = "-1" },
		func(s *seed) { s.kind = "257" },
		func(s *seed) { s.enc = "bf16" },
		func(s *seed) { s.data = []byte("abc") },
		func(s *seed) { s.fixCRC, s.crc = false, "zz" },
		func(s *seed) { s.shape, s.data = "", nil },
		func(s *seed) { s.shape, s.data = "0,0", nil },
		func(s *seed) { s.seq = "18446744073709551615" },
	} {
		s := valid
		change(&s)
		seeds = append(seeds, s)
	}
	for _, s := range seeds {
		f.Add(s.from, s.seq, s.kind, s.step, s.piece, s.count, s.tensor, s.off, s.shape, s.enc, s.crc, s.data, s.fixCRC, s.more)
	}
	f.Fuzz(func(t *testing.T, from, seq, kind, step, piece, count, tensor, off, shape, enc, crc string,
		data []byte, fixCRC bool, more int) {
		if from == "2" {
			from = "0" // rank 2's link carries the valid frame
		}
		r := fuzzRing(t, nc)
		defer r.Close()
		msg := func(i int) *nats.Msg {
			m := nats.NewMsg(transport.NewSubjects("").Ring("job-r", 3, 1))
			m.Data = data
			h := map[string]string{"Ra-Job": "job-r", "Ra-Epoch": "3", "Ra-Sess": "fuzz", "Ra-From": from,
				"Ra-Seq": seq, "Ra-Kind": kind, "Ra-Step": step, "Ra-Block": "0", "Ra-Piece": piece,
				"Ra-Count": count, "Ra-Tensor": tensor, "Ra-Off": off, "Ra-Shape": shape, "Ra-Enc": enc, "Ra-Crc": crc}
			if i > 0 {
				if s, err := strconv.ParseUint(seq, 10, 64); err == nil {
					h["Ra-Seq"] = strconv.FormatUint(s+uint64(i), 10)
				}
				if p, err := strconv.Atoi(piece); err == nil {
					h["Ra-Piece"] = strconv.Itoa(p + i)
				}
				if o, err := strconv.Atoi(off); err == nil {
					h["Ra-Off"] = strconv.Itoa(o + i*len(data)/4)
				}
			}
			if fixCRC {
				h["Ra-Crc"] = strconv.FormatUint(uint64(transport.CRC32C(data)), 16)
			}
			for k, v := range h {
				m.Header.Set(k, v)
			}
			return m
		}
		more = min(max(more, 0), 8)
		alloc := allocatedBy(func() {
			for i := range 1 + more {
				transport.DeliverPiece(r, msg(i))
			}
		})
		if limit := uint64(fuzzMaxFrame + (1+more)*2*len(data) + 1<<20); alloc > limit {
			t.Fatalf("fuzzed pieces allocated %d bytes: want <= %d (MaxFrameBytes %d)", alloc, limit, fuzzMaxFrame)
		}
		checkValidFrameArrives(t, r)
	})
}

// FuzzRingControl drives a real NATSRing's acknowledgement and control
// handlers with fuzzed headers: no panic, and a valid frame still arrives.
func FuzzRingControl(f *testing.F) {
	e := transporttest.RunServer(f)
	nc := fuzzConnect(f, e)
	f.Add(false, "job-r", "3", "0", "peer", "1", "", "open", "", "", "")
	f.Add(false, "job-r", "3", "0", "peer", "5", "", "closed", "", "", "")
	f.Add(false, "job-r", "3", "0", "peer", "", "", "abandon", "1", "1", "0")
	f.Add(false, "job-r", "3", "0", "peer", "", "", "abandon", "257", "-1", "x")
	f.Add(false, "job-r", "3", "9223372036854775807", "peer", "", "", "closed", "", "", "")
	f.Add(true, "", "", "0", "ring", "18446744073709551615", "peer", "", "", "", "")
	f.Add(true, "", "", "-1", "ring", "1", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, ack bool, job, epoch, from, sess, seq, rsess, ctl, kind, step, block string) {
		if from == "2" {
			from = "0" // rank 2's link carries the valid frame
		}
		r := fuzzRing(t, nc)
		defer r.Close()
		m := nats.NewMsg("fuzz")
		for k, v := range map[string]string{"Ra-Job": job, "Ra-Epoch": epoch, "Ra-From": from, "Ra-Sess": sess,
			"Ra-Seq": seq, "Ra-Rsess": rsess, "Ra-Ctl": ctl, "Ra-Kind": kind, "Ra-Step": step, "Ra-Block": block} {
			m.Header.Set(k, v)
		}
		if ack {
			transport.DeliverAck(r, m)
		} else {
			transport.DeliverCtl(r, m)
		}
		checkValidFrameArrives(t, r)
	})
}

// FuzzStoreObject stores an object with fuzzed bytes and metadata (what
// the store decodes from the network: encoding, element count, CRC32C,
// against the object's size) and reads it as a block: either it decodes
// consistently (the CRC matches the bytes, values × encoding = bytes) or
// the read fails with ErrCorrupt (ErrTooLarge above MaxBlockBytes); never
// a panic, nor an allocation sized by the claimed count.
func FuzzStoreObject(f *testing.F) {
	e := transporttest.RunServer(f)
	nc := fuzzConnect(f, e)
	ctx := context.Background()
	const maxBlock = 64 << 10
	// No logging: a fuzz target may not log through f.
	s, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: "fuzz", Memory: true, MaxBlockBytes: maxBlock,
		RetryFor: -1}, nil)
	must(f, err)
	obs := s.ObjectStore()
	one := []byte{0, 0, 0x80, 0x3f}
	crcOne := strconv.FormatUint(uint64(transport.CRC32C(one)), 16)
	f.Add(one, "f32", "1", crcOne, false)
	f.Add(one, "f32", "1", "", true)
	f.Add(one, "bf16", "2", "", true)
	f.Add(one, "f32", "4611686018427387904", "", true) // elems×4 wrapped to 0 in the old check
	f.Add([]byte{}, "f32", "4611686018427387904", "", true)
	f.Add(one, "f32", "-1", "", true)
	f.Add(one, "f64", "1", "", true)
	f.Add(one, "f32", "1", "zz", false)
	f.Add(one, "f32", "1", "+1", false)
	f.Add(one, "", "1", "", true)
	f.Add([]byte("abc"), "bf16", "1", "", true)
	f.Add(make([]byte, maxBlock+4), "f32", strconv.Itoa(maxBlock/4+1), "", true)
	f.Fuzz(func(t *testing.T, data []byte, enc, elems, crc string, fixCRC bool) {
		if fixCRC {
			crc = strconv.FormatUint(uint64(transport.CRC32C(data)), 16)
			for len(crc) < 8 {
				crc = "0" + crc
			}
		}
		md := map[string]string{"ringattn-crc32c": crc, "ringattn-encoding": enc, "ringattn-elems": elems}
		name := transport.BlockName("fz", "q", 0)
		if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name, Metadata: md}, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		var out []float32
		var err error
		alloc := allocatedBy(func() { out, err = s.GetBlock(ctx, "fz", "q", 0) })
		if limit := uint64(2*len(data) + 4<<20); alloc > limit {
			t.Fatalf("GetBlock of %d bytes claiming %q values allocated %d bytes: want <= %d", len(data), elems, alloc, limit)
		}
		bi, ierr := s.BlockInfo(ctx, "fz", "q", 0)
		switch {
		case err == nil:
			eb := 4
			if enc == "bf16" || enc == "bfloat16" {
				eb = 2
			}
			if n, perr := strconv.ParseUint(elems, 10, 63); perr != nil || len(out)*eb != len(data) || uint64(len(out)) != n {
				t.Fatalf("decoded %d values from %d bytes of %q (metadata says %q)", len(out), len(data), enc, elems)
			}
			if transport.CRC32C(data) != mustParseCRC(t, crc) {
				t.Fatalf("read succeeded with CRC32C %s in metadata for bytes with %08x", crc, transport.CRC32C(data))
			}
			if ierr != nil || bi.CRC32C != transport.CRC32C(data) || bi.Bytes != int64(len(data)) {
				t.Fatalf("BlockInfo = %+v, %v: want CRC32C %08x, %d bytes", bi, ierr, transport.CRC32C(data), len(data))
			}
		case len(data) > maxBlock:
			if !errors.Is(err, transport.ErrTooLarge) {
				t.Fatalf("GetBlock of %d bytes: %v, want ErrTooLarge", len(data), err)
			}
		default:
			if !errors.Is(err, transport.ErrCorrupt) {
				t.Fatalf("GetBlock with metadata %v of %d bytes: %v, want ErrCorrupt", md, len(data), err)
			}
			if ierr == nil && mustParseCRC(t, crc) != bi.CRC32C {
				t.Fatalf("BlockInfo = %+v with metadata %v", bi, md)
			}
		}
	})
}

func mustParseCRC(t *testing.T, s string) uint32 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		t.Fatalf("CRC %q accepted: %v", s, err)
	}
	return uint32(v)
}
