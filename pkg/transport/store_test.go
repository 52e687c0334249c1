package transport_test

import (
	"bytes"
	"math"

	"errors"
	"github.com/nats-io/nats.go/jetstream"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func TestTransportStoreRoundTripSizes(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 120*time.Second)
	mp := int(nc.MaxPayload())
	sizes := []struct {
		name  string
		elems int
		enc   transport.Encoding
	}{
		{"0", 0, transport.F32},
		{"1", 1, transport.F32},
		{"maxpayload-4B", mp/4 - 1, transport.F32},
		{"maxpayload+4B", mp/4 + 1, transport.F32},
		{"bf16-maxpayload-2B", mp/2 - 1, transport.BF16},
		{"bf16-maxpayload+2B", mp/2 + 1, transport.BF16},
		{"100MiB", 100 << 20 / 4, transport.F32},
	}
	for i, sz := range sizes {
		t.Run(sz.name, func(t *testing.T) {
			data := randVals(uint64(i), sz.elems)
			start := time.Now()
			must(t, s.PutBlock(ctx, "job-1", "k", i, data, sz.enc))
			put := time.Since(start)
			start = time.Now()
			got, err := s.GetBlock(ctx, "job-1", "k", i)
			must(t, err)
			t.Logf("%d values (%d bytes %v): put %v get %v", sz.elems, sz.elems*sz.enc.ElemBytes(), sz.enc, put, time.Since(start))
			want := data
			if sz.enc == transport.BF16 {
				want = make([]float32, len(data))
				for j, v := range data {
					want[j] = transport.BF16ToF32(transport.F32ToBF16(v))
				}
			}
			equalF32(t, "block", got, want)
		})
	}
	st := s.Stats()
	if st.PutBlocks != int64(len(sizes)) || st.GetBlocks != int64(len(sizes)) || st.Corrupt != 0 {
		t.Fatalf("stats %+v: want %d puts and gets, no corruption", st, len(sizes))
	}
}

func TestTransportStoreMissingBlock(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	_, err := s.GetBlock(ctxT(t, 10*time.Second), "job-x", "v", 7)
	if !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("GetBlock of a missing block: %v, want ErrBlockNotFound", err)
	}
	for _, want := range []string{`"job-x"`, `"v"`, "block 7"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %s", err, want)
		}
	}
}

func TestTransportStoreCorruptBlock(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{ChunkBytes: 64 << 10})
	ctx := ctxT(t, 30*time.Second)
	data := randVals(4, 100000)
	obs := s.ObjectStore()

	// 1. Rewrite the object's bytes through the object store API with one
	// byte flipped, keeping its metadata (CRC32C of the original bytes).
	must(t, s.PutBlock(ctx, "job-c", "q", 0, data, transport.F32))
	info, err := obs.GetInfo(ctx, transport.BlockName("job-c", "q", 0))
	must(t, err)
	raw, err := obs.GetBytes(ctx, info.Name)
	must(t, err)
	raw[4321] ^= 0x01
	_, err = obs.Put(ctx, jetstream.ObjectMeta{Name: info.Name, Metadata: info.Metadata}, bytes.NewReader(raw))
	must(t, err)
	_, err = s.GetBlock(ctx, "job-c", "q", 0)
	var ce *transport.CorruptBlockError
	if !errors.As(err, &ce) || !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("GetBlock of a flipped byte: %v, want *CorruptBlockError wrapping ErrCorrupt", err)
	}
	if ce.Job != "job-c" || ce.Tensor != "q" || ce.Block != 0 || !strings.Contains(ce.Reason, "CRC32C") {
		t.Fatalf("corrupt block error %+v: want job-c/q/0 and a CRC32C reason", ce)
	}
	t.Log(err)

	// 2. Tamper with a stored chunk underneath the object store: the
	// object's SHA-256 digest no longer matches.
	must(t, s.PutBlock(ctx, "job-c", "q", 1, data, transport.F32))
	info, err = obs.GetInfo(ctx, transport.BlockName("job-c", "q", 1))
	must(t, err)
	js, err := jetstream.New(nc)
	must(t, err)
	stream, err := js.Stream(ctx, "OBJ_ringattn")
	must(t, err)
	chunkSubj := "$O.ringattn.C." + info.NUID
	first, err := stream.GetLastMsgForSubject(ctx, chunkSubj)
	must(t, err)
	// Re-publish every chunk in order with one flipped byte in the last.
	var chunks [][]byte
	for seq := uint64(1); seq <= first.Sequence; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil || m.Subject != chunkSubj {
			continue
		}
		chunks = append(chunks, m.Data)
	}
	if len(chunks) != int(info.Chunks) {
		t.Fatalf("found %d chunks, object has %d", len(chunks), info.Chunks)
	}
	must(t, stream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubj)))
	chunks[len(chunks)-1][7] ^= 0x80
	for _, c := range chunks {
		_, err := js.Publish(ctx, chunkSubj, c)
		must(t, err)
	}
	_, err = s.GetBlock(ctx, "job-c", "q", 1)
	if !errors.As(err, &ce) || ce.Block != 1 {
		t.Fatalf("GetBlock of a tampered chunk: %v, want *CorruptBlockError for block 1", err)
	}
	t.Log(err)
	if st := s.Stats(); st.Corrupt != 4 || st.Refetches != 2 {
		t.Fatalf("stats %+v: want 2 corrupt reads per block and one refetch each", st)
	}
	// The intact block next to them still reads.
	must(t, s.PutBlock(ctx, "job-c", "q", 2, data, transport.F32))
	got, err := s.GetBlock(ctx, "job-c", "q", 2)
	must(t, err)
	equalF32(t, "intact block", got, data)
}

func TestTransportStoreTensorLayout(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	sh := transport.Shape{2, 3, 10, 4} // B, H, N, D; blocks of 4 rows: 4, 4, 2
	x := make([]float32, 2*3*10*4)
	for i := range x {
		x[i] = float32(i)
	}
	n, err := s.PutTensor(ctx, "job-t", "k", x, sh, 4, transport.F32)
	must(t, err)
	if n != 3 {
		t.Fatalf("PutTensor wrote %d blocks, want 3", n)
	}
	// Block 2 holds rows 8..9 of every (b, h): [B, H, 2, D].
	blk, err := s.GetBlock(ctx, "job-t", "k", 2)
	must(t, err)
	var want []float32
	for bh := range 6 {
		for row := 8; row < 10; row++ {
			for d := range 4 {
				want = append(want, float32((bh*10+row)*4+d))
			}
		}
	}
	equalF32(t, "block 2", blk, want)
	back, err := s.GetTensor(ctx, "job-t", "k", sh, 4)
	must(t, err)
	equalF32(t, "tensor", back, x)

	// Source and Sink adapters.
	src := s.Source("job-t")
	got, err := src.Fetch(ctx, "k", 2)
	must(t, err)
	equalF32(t, "Source.Fetch", got, want)
	must(t, s.Sink("job-t").Put(ctx, 1, []float32{1, 2}, []float32{float32(math.Inf(-1))}))
	o, err := s.GetBlock(ctx, "job-t", transport.TensorO, 1)
	must(t, err)
	lse, err := s.GetBlock(ctx, "job-t", transport.TensorLSE, 1)
	must(t, err)
	equalF32(t, "o", o, []float32{1, 2})
	equalF32(t, "lse", lse, []float32{float32(math.Inf(-1))})

	// Shape errors.
	if _, err := s.PutTensor(ctx, "job-t", "k", x[:5], sh, 4, transport.F32); !errors.Is(err, transport.ErrInvalidShape) {
		t.Fatalf("PutTensor with too few values: %v, want ErrInvalidShape", err)
	}
	if _, err := s.PutTensor(ctx, "job-t", "k", x, sh, 0, transport.F32); !errors.Is(err, transport.ErrInvalidShape) {
		t.Fatalf("PutTensor with block length 0: %v, want ErrInvalidShape", err)
	}
}

func TestTransportStoreDeleteJobAndNames(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	for _, job := range []string{"job-a", "job-ab", "job_b"} {
		for b := range 3 {
			must(t, s.PutBlock(ctx, job, "v", b, []float32{float32(b)}, transport.F32))
		}
	}
	n, err := s.DeleteJob(ctx, "job-a")
	must(t, err)
	if n != 3 {
		t.Fatalf("DeleteJob deleted %d objects, want 3", n)
	}
	if _, err := s.GetBlock(ctx, "job-a", "v", 1); !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("block of a deleted job: %v, want ErrBlockNotFound", err)
	}
	for _, job := range []string{"job-ab", "job_b"} { // a prefix of another job is not that job
		if _, err := s.GetBlock(ctx, job, "v", 2); err != nil {
			t.Fatalf("block of job %s after deleting job-a: %v", job, err)
		}
	}
	if n, err := s.DeleteJob(ctx, "job-none"); err != nil || n != 0 {
		t.Fatalf("DeleteJob of an unknown job: %d, %v; want 0, nil", n, err)
	}
	for _, bad := range []struct{ job, tensor string }{
		{"a/b", "q"}, {"a.b", "q"}, {"", "q"}, {"a b", "q"}, {"ok", "q/1"}, {"ok", ""}, {"ok", "*"},
		{strings.Repeat("x", 129), "q"},
	} {
		err := s.PutBlock(ctx, bad.job, bad.tensor, 0, nil, transport.F32)
		if !errors.Is(err, transport.ErrInvalidName) {
			t.Fatalf("PutBlock(%q, %q): %v, want ErrInvalidName", bad.job, bad.tensor, err)
		}
	}
	if err := s.PutBlock(ctx, "ok", "q", -1, nil, transport.F32); !errors.Is(err, transport.ErrInvalidName) {
		t.Fatalf("PutBlock of block -1: %v, want ErrInvalidName", err)
	}
}

func TestTransportStoreLimits(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{Bucket: "small", MaxBytes: 1 << 20, MaxBlockBytes: 512 << 10})
	ctx := ctxT(t, 30*time.Second)
	err := s.PutBlock(ctx, "job-l", "q", 0, make([]float32, 200<<10), transport.F32) // 800 KiB
	if !errors.Is(err, transport.ErrTooLarge) || !strings.Contains(err.Error(), "MaxBlockBytes") {
		t.Fatalf("PutBlock above MaxBlockBytes: %v, want ErrTooLarge naming MaxBlockBytes", err)
	}
	must(t, s.PutBlock(ctx, "job-l", "q", 0, make([]float32, 100<<10), transport.F32)) // 400 KiB
	must(t, s.PutBlock(ctx, "job-l", "q", 1, make([]float32, 100<<10), transport.F32))
	err = s.PutBlock(ctx, "job-l", "q", 2, make([]float32, 100<<10), transport.F32) // bucket full
	if !errors.Is(err, transport.ErrStoreFull) {
		t.Fatalf("PutBlock beyond the bucket's MaxBytes: %v, want ErrStoreFull", err)
	}
	t.Logf("bucket full: %v", err)
	for _, c := range []transport.StoreConfig{
		{Bucket: "a.b"}, {MaxBytes: -1}, {ChunkBytes: 64 << 20}, {Replicas: 9},
	} {
		if _, err := transport.OpenStore(ctx, nc, c, nil); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Fatalf("OpenStore(%+v): %v, want ErrInvalidConfig", c, err)
		}
	}
}
