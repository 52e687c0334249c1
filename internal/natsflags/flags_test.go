package natsflags_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/internal/natsflags"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestNATSFlagsConfig(t *testing.T) {
	t.Setenv("RINGATTN_NATS_URL", "nats://a:1, nats://b:2")
	t.Setenv("RINGATTN_NATS_USER", "env-user")
	t.Setenv("RINGATTN_NATS_PASSWORD", "env-pass")
	t.Setenv("RINGATTN_NATS_CONNECT_TIMEOUT", "7s")
	t.Setenv("RINGATTN_STORE_BUCKET", "tensors")
	cfg := transport.DefaultConfig()
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	must(t, natsflags.RegisterFlags(fs, &cfg))
	must(t, fs.Parse([]string{"--nats-user", "flag-user", "--nats-tls-ca", "/ca.pem", "--nats-prefix", "p1"}))
	want := transport.DefaultConfig()
	want.URLs = []string{"nats://a:1", "nats://b:2"}
	want.User, want.Password = "flag-user", "env-pass"
	want.ConnectTimeout = 7 * time.Second
	want.Bucket, want.TLSCA, want.Prefix = "tensors", "/ca.pem", "p1"
	if fmt.Sprintf("%+v", cfg) != fmt.Sprintf("%+v", want) {
		t.Fatalf("config after env and flags:\n got %+v\nwant %+v", cfg, want)
	}
	for _, name := range []string{"nats-url", "nats-user", "nats-password", "nats-token", "nats-creds", "nats-nkey",
		"nats-tls-ca", "nats-tls-cert", "nats-tls-key"} {
		f := fs.Lookup(name)
		if f == nil {
			t.Fatalf("flag --%s not registered", name)
		}
		if env := "RINGATTN_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")); !strings.Contains(f.Usage, env) {
			t.Fatalf("--%s usage %q does not name %s", name, f.Usage, env)
		}
	}
	fs2 := flag.NewFlagSet("x", flag.ContinueOnError)
	must(t, fs2.Parse(nil))
	t.Setenv("RINGATTN_NATS_CONNECT_TIMEOUT", "soon")
	cfg2 := transport.DefaultConfig()
	err := natsflags.RegisterFlags(flag.NewFlagSet("y", flag.ContinueOnError), &cfg2)
	if !errors.Is(err, transport.ErrInvalidConfig) || !strings.Contains(err.Error(), "RINGATTN_NATS_CONNECT_TIMEOUT") {
		t.Fatalf("bad env duration: %v, want ErrInvalidConfig naming the variable", err)
	}
}

// TestNATSFlagsStore: the store bucket's replicas, size cap and TTL
// come from RINGATTN_STORE_* and --store-* (the flag wins), reach
// StoreConfig, and apply when OpenStore creates the bucket.
func TestNATSFlagsStore(t *testing.T) {
	t.Setenv("RINGATTN_STORE_REPLICAS", "3")
	t.Setenv("RINGATTN_STORE_MAX_BYTES", "10GiB")
	t.Setenv("RINGATTN_STORE_TTL", "72h")
	cfg := transport.DefaultConfig()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	must(t, natsflags.RegisterFlags(fs, &cfg))
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
		err := natsflags.RegisterFlags(flag.NewFlagSet("y", flag.ContinueOnError), &cfg)
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

// TestNATSFlagsParseBytes: byte counts at and past the int64 limit.
func TestNATSFlagsParseBytes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"1", 1}, {"1KiB", 1 << 10}, {"3 MiB", 3 << 20}, {"10GiB", 10 << 30}, {"2TiB", 2 << 40},
		{"9223372036854775807", 1<<63 - 1}, {"8388607TiB", 8388607 << 40},
	} {
		got, err := natsflags.ParseBytes(c.in)
		if err != nil || got != c.want {
			t.Fatalf("ParseBytes(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "-1", "9223372036854775808", "8388608TiB", "1.5GiB", "1GB", "GiB", "0x10"} {
		if n, err := natsflags.ParseBytes(in); err == nil {
			t.Fatalf("ParseBytes(%q) = %d, want an error", in, n)
		}
	}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestNATSFlagsOneSpelling: --nats is the URL flag of every binary, and
// --nats-url stays as its alias.
func TestNATSFlagsOneSpelling(t *testing.T) {
	for _, name := range []string{"nats", "nats-url"} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		cfg := transport.DefaultConfig()
		must(t, natsflags.RegisterFlags(fs, &cfg))
		must(t, fs.Parse([]string{"--" + name, "nats://h1:1,nats://h2:2"}))
		if fmt.Sprint(cfg.URLs) != "[nats://h1:1 nats://h2:2]" {
			t.Fatalf("--%s: URLs %v", name, cfg.URLs)
		}
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	cfg := transport.DefaultConfig()
	must(t, natsflags.RegisterFlags(fs, &cfg))
	if f := fs.Lookup("nats"); f == nil || !strings.Contains(f.Usage, "RINGATTN_NATS_URL") {
		t.Fatalf("--nats: %+v, want its usage to name RINGATTN_NATS_URL", f)
	}
}
