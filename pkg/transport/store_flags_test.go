package transport_test

import (
	"errors"
	"flag"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportStoreFlags: the store bucket's replicas, size cap and TTL
// come from RINGATTN_STORE_* and --store-* (the flag wins), reach
// StoreConfig, and apply when OpenStore creates the bucket.
func TestTransportStoreFlags(t *testing.T) {
	t.Setenv("RINGATTN_STORE_REPLICAS", "3")
	t.Setenv("RINGATTN_STORE_MAX_BYTES", "10GiB")
	t.Setenv("RINGATTN_STORE_TTL", "72h")
	cfg := transport.DefaultConfig()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	must(t, transport.RegisterFlags(fs, &cfg))
	if sc := cfg.StoreConfig(); sc.Replicas != 3 || sc.MaxBytes != 10<<30 || sc.TTL != 72*time.Hour {
		t.Fatalf("StoreConfig from env = %+v: want 3 replicas, 10 GiB, 72h", sc)
	}
	must(t, fs.Parse([]string{"--store-replicas=1", "--store-max-bytes=512MiB", "--store-ttl=1h", "--store-bucket=flags"}))
	sc := cfg.StoreConfig()
	if sc.Replicas != 1 || sc.MaxBytes != 512<<20 || sc.TTL != time.Hour || sc.Bucket != "flags" {
		t.Fatalf("StoreConfig from flags = %+v: want bucket flags, 1 replica, 512 MiB, 1h", sc)
	}
	must(t, cfg.Validate())

	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, sc)
	st, err := s.ObjectStore().Status(ctxT(t, 10*time.Second))
	must(t, err)
	if st.TTL() != time.Hour || st.(*jetstream.ObjectBucketStatus).StreamInfo().Config.MaxBytes != 512<<20 {
		t.Fatalf("bucket TTL %v, max bytes %d: want 1h, 512 MiB", st.TTL(), st.(*jetstream.ObjectBucketStatus).StreamInfo().Config.MaxBytes)
	}

	for _, c := range []struct{ env, val, want string }{
		{"RINGATTN_STORE_REPLICAS", "three", "RINGATTN_STORE_REPLICAS"},
		{"RINGATTN_STORE_MAX_BYTES", "10GB", "RINGATTN_STORE_MAX_BYTES"},
		{"RINGATTN_STORE_MAX_BYTES", "-1", "RINGATTN_STORE_MAX_BYTES"},
		{"RINGATTN_STORE_TTL", "3 days", "RINGATTN_STORE_TTL"},
	} {
		t.Setenv(c.env, c.val)
		cfg := transport.DefaultConfig()
		err := transport.RegisterFlags(flag.NewFlagSet("y", flag.ContinueOnError), &cfg)
		if !errors.Is(err, transport.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s=%q: %v, want ErrInvalidConfig naming %s", c.env, c.val, err, c.want)
		}
		t.Setenv(c.env, "1")
	}
	for _, c := range []struct {
		mod  func(*transport.Config)
		want string
	}{
		{func(c *transport.Config) { c.StoreReplicas = 6 }, "StoreReplicas"},
		{func(c *transport.Config) { c.StoreReplicas = -1 }, "StoreReplicas"},
		{func(c *transport.Config) { c.StoreMaxBytes = -1 }, "StoreMaxBytes"},
		{func(c *transport.Config) { c.StoreTTL = -time.Second }, "StoreTTL"},
	} {
		cfg := transport.DefaultConfig()
		c.mod(&cfg)
		if err := cfg.Validate(); !errors.Is(err, transport.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("Validate: %v, want ErrInvalidConfig naming %s", err, c.want)
		}
	}
	cfg = transport.DefaultConfig()
	cfg.StoreReplicas = 5 // the limit
	must(t, cfg.Validate())
}

// TestTransportParseBytes: byte counts at and past the int64 limit.
func TestTransportParseBytes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"1", 1}, {"1KiB", 1 << 10}, {"3 MiB", 3 << 20}, {"10GiB", 10 << 30}, {"2TiB", 2 << 40},
		{"9223372036854775807", 1<<63 - 1}, {"8388607TiB", 8388607 << 40},
	} {
		got, err := transport.ParseBytes(c.in)
		if err != nil || got != c.want {
			t.Fatalf("ParseBytes(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "-1", "9223372036854775808", "8388608TiB", "1.5GiB", "1GB", "GiB", "0x10"} {
		if n, err := transport.ParseBytes(in); err == nil {
			t.Fatalf("ParseBytes(%q) = %d, want an error", in, n)
		}
	}
}

// TestTransportStoreShapeOverflow: a shape whose value count overflows, or
// a block length near the int limit, is refused or computed without
// wrapping (GetTensor used to size its result by the wrapped product and
// read no block for blockLen = MaxInt).
func TestTransportStoreShapeOverflow(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	big := 1 << 16
	for _, sh := range []transport.Shape{{big, big, big, big}, {1, 1, math.MaxInt, 2}, {2, 2, math.MaxInt / 8, 1}} {
		if _, err := s.GetTensor(ctx, "job-s", "q", sh, 4); !errors.Is(err, transport.ErrInvalidShape) {
			t.Fatalf("GetTensor of shape %v: %v, want ErrInvalidShape", sh, err)
		}
	}
	// At the limit the shape is valid (the block is then simply missing).
	if _, err := s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 1, transport.MaxTensorValues}, 1); !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("GetTensor of %d values: %v, want ErrBlockNotFound", transport.MaxTensorValues, err)
	}
	must(t, s.PutBlock(ctx, "job-s", "q", 0, []float32{1, 2, 3}, transport.F32))
	got, err := s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 3, 1}, math.MaxInt)
	must(t, err)
	equalF32(t, "tensor with block length MaxInt", got, []float32{1, 2, 3})
	// A shape claiming more rows than were stored (1 GiB of values): the
	// missing last block is found before anything is sized by the claim.
	var err2 error
	alloc := allocatedBy(func() { _, err2 = s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 1 << 28, 1}, 1<<20) })
	if !errors.Is(err2, transport.ErrBlockNotFound) || alloc > 4<<20 {
		t.Fatalf("GetTensor claiming 2^28 values: %v after allocating %d bytes; want ErrBlockNotFound, under 4 MiB", err2, alloc)
	}
	// A last block of another size than the shape implies.
	if _, err := s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 4, 1}, 4); !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("GetTensor of 4 rows stored as 3: %v, want ErrCorrupt", err)
	}
	if n := (transport.Shape{1, 1, 10, 1}).Blocks(math.MaxInt); n != 1 {
		t.Fatalf("Blocks(MaxInt) of 10 rows = %d, want 1", n)
	}
}
