package transport_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// jsAPIRecorder records the JetStream API requests published on nc's
// server while it runs (a plain subscriber on $JS.API.>).
type jsAPIRecorder struct {
	mu   sync.Mutex
	reqs []string // subject + " " + payload
	sub  *nats.Subscription
}

func recordJSAPI(t *testing.T, nc *nats.Conn) *jsAPIRecorder {
	t.Helper()
	r := &jsAPIRecorder{}
	var err error
	r.sub, err = nc.Subscribe("$JS.API.>", func(m *nats.Msg) {
		r.mu.Lock()
		r.reqs = append(r.reqs, m.Subject+" "+string(m.Data))
		r.mu.Unlock()
	})
	must(t, err)
	must(t, nc.Flush())
	t.Cleanup(func() { r.sub.Unsubscribe() })
	return r
}

func (r *jsAPIRecorder) take(t *testing.T, nc *nats.Conn) []string {
	t.Helper()
	must(t, nc.Flush())
	time.Sleep(50 * time.Millisecond) // the recorder's own delivery
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reqs
	r.reqs = nil
	return out
}

// TestTransportStoreDeleteNamespaceIndexed: DeleteNamespace deletes exactly
// the namespace's blocks (not those of a namespace it prefixes) and never
// walks the bucket's metadata: no consumer on the object store's metadata
// subjects is created, however many other objects the bucket holds (the
// old DeleteJob listed the whole bucket).
func TestTransportStoreDeleteNamespaceIndexed(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 60*time.Second)
	for _, ns := range []string{"job-a", "job-ab", "in-x1"} {
		for _, tensor := range []string{"q", "k"} {
			for b := range 3 {
				must(t, s.PutBlock(ctx, ns, tensor, b, []float32{float32(b)}, transport.F32))
			}
		}
	}
	for b := range 200 { // a bucket with many more objects than the namespace
		must(t, s.PutBlock(ctx, "job-big", "v", b, []float32{1}, transport.F32))
	}
	rec := recordJSAPI(t, nc)
	n, err := s.DeleteNamespace(ctx, "job-a")
	must(t, err)
	if n != 6 {
		t.Fatalf("DeleteNamespace(job-a) deleted %d objects, want 6", n)
	}
	reqs := rec.take(t, nc)
	for _, r := range reqs {
		if strings.Contains(r, "CONSUMER.CREATE") && strings.Contains(r, "$O.ringattn.M.") {
			t.Fatalf("DeleteNamespace walked the bucket's metadata: %s", r)
		}
	}
	t.Logf("DeleteNamespace of 6 objects among %d: %d JetStream API requests", 6*3+200, len(reqs))
	for _, tensor := range []string{"q", "k"} {
		if _, err := s.GetBlock(ctx, "job-a", tensor, 1); !errors.Is(err, transport.ErrBlockNotFound) {
			t.Fatalf("block of a deleted namespace: %v, want ErrBlockNotFound", err)
		}
	}
	for _, ns := range []string{"job-ab", "in-x1"} {
		if _, err := s.GetBlock(ctx, ns, "k", 2); err != nil {
			t.Fatalf("block of namespace %s after deleting job-a: %v", ns, err)
		}
	}
	// Again: nothing left, and the index keys are gone too.
	if n, err := s.DeleteNamespace(ctx, "job-a"); err != nil || n != 0 {
		t.Fatalf("second DeleteNamespace(job-a): %d, %v; want 0, nil", n, err)
	}
	idx, err := jetstream.New(nc)
	must(t, err)
	kv, err := idx.KeyValue(ctx, "ringattn-index")
	must(t, err)
	if _, err := kv.Get(ctx, "job-a.q.0"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("index key of a deleted block: %v, want ErrKeyNotFound", err)
	}
	// Rewritten after deletion: indexed again, deleted again.
	must(t, s.PutBlock(ctx, "job-a", "q", 0, []float32{5}, transport.F32))
	if n, err := s.DeleteJob(ctx, "job-a"); err != nil || n != 1 {
		t.Fatalf("DeleteJob after a rewrite: %d, %v; want 1, nil", n, err)
	}
	// A put racing the delete: its key is written, its block not yet. The
	// key survives the delete, so the block, once written, is deleted by
	// the next one.
	_, err = kv.Put(ctx, "job-r.q.0", []byte("4"))
	must(t, err)
	if n, err := s.DeleteNamespace(ctx, "job-r"); err != nil || n != 0 {
		t.Fatalf("DeleteNamespace with a block being written: %d, %v; want 0, nil", n, err)
	}
	if _, err := kv.Get(ctx, "job-r.q.0"); err != nil {
		t.Fatalf("index key of a block being written: %v, want kept", err)
	}
	_, err = s.ObjectStore().PutBytes(ctx, transport.BlockName("job-r", "q", 0), []byte{1, 2, 3, 4})
	must(t, err)
	if n, err := s.DeleteNamespace(ctx, "job-r"); err != nil || n != 1 {
		t.Fatalf("DeleteNamespace after the racing put: %d, %v; want 1, nil", n, err)
	}
	for _, bad := range []string{"", "a.b", "a/b", "a*", strings.Repeat("x", 129)} {
		if _, err := s.DeleteNamespace(ctx, bad); !errors.Is(err, transport.ErrInvalidName) {
			t.Fatalf("DeleteNamespace(%q): %v, want ErrInvalidName", bad, err)
		}
	}
}

// TestTransportStoreNamespaces lists every namespace with its object
// count, bytes and last write.
func TestTransportStoreNamespaces(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	if got, err := s.Namespaces(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Namespaces of an empty bucket: %v, %v; want none", got, err)
	}
	start := time.Now().Add(-time.Second)
	must(t, s.PutBlock(ctx, "job-1", "o", 0, make([]float32, 10), transport.F32))
	must(t, s.PutBlock(ctx, "job-1", "lse", 0, make([]float32, 3), transport.F32))
	must(t, s.PutBlock(ctx, "in-abc", "q", 0, make([]float32, 8), transport.BF16))
	// An object not written by PutBlock is not a namespace.
	_, err := s.ObjectStore().PutBytes(ctx, "loose-object", []byte("x"))
	must(t, err)
	got, err := s.Namespaces(ctx)
	must(t, err)
	if len(got) != 2 || got[0].Name != "in-abc" || got[1].Name != "job-1" {
		t.Fatalf("Namespaces = %+v: want in-abc and job-1", got)
	}
	if got[0].Objects != 1 || got[0].Bytes != 16 || got[1].Objects != 2 || got[1].Bytes != 52 {
		t.Fatalf("Namespaces = %+v: want in-abc 1 object 16 bytes, job-1 2 objects 52 bytes", got)
	}
	for _, ni := range got {
		if ni.Modified.Before(start) || ni.Modified.After(time.Now().Add(time.Second)) {
			t.Fatalf("namespace %s modified %v: want about now", ni.Name, ni.Modified)
		}
	}
	if _, err := s.DeleteNamespace(ctx, "job-1"); err != nil {
		t.Fatal(err)
	}
	got, err = s.Namespaces(ctx)
	must(t, err)
	if len(got) != 1 || got[0].Name != "in-abc" {
		t.Fatalf("Namespaces after deleting job-1 = %+v: want in-abc only", got)
	}
}

// TestTransportStoreIndexesExistingBucket: a bucket written before the
// namespace index existed is indexed by the first OpenStore, so
// DeleteNamespace finds its blocks.
func TestTransportStoreIndexesExistingBucket(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	ctx := ctxT(t, 30*time.Second)
	js, err := jetstream.New(nc)
	must(t, err)
	obs, err := js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: "legacy"})
	must(t, err)
	for b := range 3 {
		_, err := obs.Put(ctx, jetstream.ObjectMeta{Name: transport.BlockName("job-old", "q", b)}, bytes.NewReader([]byte{1, 2, 3, 4}))
		must(t, err)
	}
	_, err = obs.Put(ctx, jetstream.ObjectMeta{Name: transport.BlockName("job-older", "q", 0)}, bytes.NewReader([]byte{1, 2, 3, 4}))
	must(t, err)
	s := transporttest.Store(t, nc, transport.StoreConfig{Bucket: "legacy"})
	n, err := s.DeleteNamespace(ctx, "job-old")
	must(t, err)
	if n != 3 {
		t.Fatalf("DeleteNamespace of a namespace written before the index: %d, want 3", n)
	}
	if _, err := obs.GetInfo(ctx, transport.BlockName("job-older", "q", 0)); err != nil {
		t.Fatalf("object of another namespace: %v", err)
	}
	// A second OpenStore finds the index complete and keeps it.
	s2 := transporttest.Store(t, nc, transport.StoreConfig{Bucket: "legacy"})
	if n, err := s2.DeleteNamespace(ctx, "job-older"); err != nil || n != 1 {
		t.Fatalf("DeleteNamespace through a second store: %d, %v; want 1, nil", n, err)
	}
}

// crcLE is the CRC32C of x as little-endian float32 (what a worker reports
// for an output block).
func crcLE(x []float32) uint32 {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return transport.CRC32C(b)
}

// TestTransportStoreBlockInfo: the stored CRC32C of a block, from its
// metadata, equals the CRC32C of its little-endian float32 values (what a
// worker reports); a missing block is ErrBlockNotFound, unparsable
// metadata ErrCorrupt.
func TestTransportStoreBlockInfo(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	o := randVals(9, 1000)
	before := time.Now().Add(-time.Second)
	must(t, s.Sink("job-i").Put(ctx, 3, o, o[:10]))
	bi, err := s.BlockInfo(ctx, "job-i", transport.TensorO, 3)
	must(t, err)
	if bi.CRC32C != crcLE(o) || bi.Bytes != 4000 || bi.Modified.Before(before) {
		t.Fatalf("BlockInfo = %+v: want CRC32C %08x, 4000 bytes, modified now", bi, crcLE(o))
	}
	if bi, err := s.BlockInfo(ctx, "job-i", transport.TensorLSE, 3); err != nil || bi.CRC32C != crcLE(o[:10]) {
		t.Fatalf("BlockInfo of lse = %+v, %v: want CRC32C %08x", bi, err, crcLE(o[:10]))
	}
	_, err = s.BlockInfo(ctx, "job-i", transport.TensorO, 4)
	if !errors.Is(err, transport.ErrBlockNotFound) || !strings.Contains(err.Error(), "block 4") {
		t.Fatalf("BlockInfo of a missing block: %v, want ErrBlockNotFound naming block 4", err)
	}
	if _, err := s.BlockInfo(ctx, "job-i", "o/x", 0); !errors.Is(err, transport.ErrInvalidName) {
		t.Fatalf("BlockInfo of a bad tensor name: %v, want ErrInvalidName", err)
	}
	// Metadata rewritten with a bad checksum.
	name := transport.BlockName("job-i", transport.TensorO, 3)
	info, err := s.ObjectStore().GetInfo(ctx, name)
	must(t, err)
	meta := info.ObjectMeta
	meta.Metadata = map[string]string{"ringattn-crc32c": "zz", "ringattn-encoding": "f32", "ringattn-elems": "1000"}
	must(t, s.ObjectStore().UpdateMeta(ctx, name, meta))
	if _, err := s.BlockInfo(ctx, "job-i", transport.TensorO, 3); !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("BlockInfo with a bad CRC in metadata: %v, want ErrCorrupt", err)
	}
}

// TestTransportStoreBucketSettings: Replicas, MaxBytes and TTL apply when
// the bucket is created; opening it with other settings keeps the
// bucket's and logs one line naming them.
func TestTransportStoreBucketSettings(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	ctx := ctxT(t, 30*time.Second)
	s := transporttest.Store(t, nc, transport.StoreConfig{Bucket: "cfg", MaxBytes: 8 << 20, TTL: time.Hour, Replicas: 1})
	st, err := s.ObjectStore().Status(ctx)
	must(t, err)
	bs := st.(*jetstream.ObjectBucketStatus)
	if st.TTL() != time.Hour || st.Replicas() != 1 || bs.StreamInfo().Config.MaxBytes != 8<<20 {
		t.Fatalf("bucket TTL %v replicas %d max bytes %d: want 1h, 1, 8 MiB", st.TTL(), st.Replicas(), bs.StreamInfo().Config.MaxBytes)
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	// Settings left zero (a client's) bind the bucket silently.
	if _, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: "cfg"}, logger); err != nil {
		t.Fatal(err)
	}
	if _, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: "cfg", TTL: 2 * time.Hour, MaxBytes: 4 << 20, Replicas: 1}, logger); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	for _, want := range []string{"other settings", "ttl=1h0m0s", "configured_ttl=2h0m0s", "max_bytes=8388608", "configured_max_bytes=4194304"} {
		if !strings.Contains(out, want) {
			t.Fatalf("log %q does not say %s", out, want)
		}
	}
	if strings.Count(out, "\n") != 1 || strings.Contains(out, "replicas") {
		t.Fatalf("log %q: want one line, replicas not in it (they match)", out)
	}
	// Replicas 3 on a single server: creation fails naming the problem.
	_, err = transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: "r3", Replicas: 3}, nil)
	if err == nil || !strings.Contains(err.Error(), "r3") {
		t.Fatalf("OpenStore with 3 replicas on one server: %v, want an error naming the bucket", err)
	}
	t.Log(err)
	for _, c := range []transport.StoreConfig{{TTL: -time.Second}, {Replicas: 6}, {Replicas: -1}} {
		if _, err := transport.OpenStore(ctx, nc, c, nil); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Fatalf("OpenStore(%+v): %v, want ErrInvalidConfig", c, err)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
