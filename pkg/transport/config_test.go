package transport_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func TestTransportConfigValidate(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	must(t, os.WriteFile(file, []byte("x"), 0o600))
	if err := transport.DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	if err := (transport.Config{}).Validate(); err != nil {
		t.Fatalf("zero Config (defaults apply) Validate() = %v", err)
	}
	for _, c := range []struct {
		mod  func(*transport.Config)
		want string
	}{
		{func(c *transport.Config) { c.URLs = []string{"http://x:1"} }, "URLs[0]"},
		{func(c *transport.Config) { c.URLs = []string{"nats://ok:1", "::"} }, "URLs[1]"},
		{func(c *transport.Config) { c.Password = "p" }, "Password"},
		{func(c *transport.Config) { c.User = "u" }, "User"},
		{func(c *transport.Config) { c.User, c.Password, c.Token = "u", "p", "t" }, "more than one"},
		{func(c *transport.Config) { c.CredsFile = filepath.Join(dir, "missing") }, "CredsFile"},
		{func(c *transport.Config) { c.TLSCA = dir }, "TLSCA"},
		{func(c *transport.Config) { c.TLSCert = file }, "TLSCert and TLSKey"},
		{func(c *transport.Config) { c.Prefix = "a..b" }, "Prefix"},
		{func(c *transport.Config) { c.Bucket = "a.b" }, "Bucket"},
		{func(c *transport.Config) { c.ReconnectWait, c.ReconnectMaxWait = time.Second, time.Millisecond }, "ReconnectMaxWait"},
	} {
		cfg := transport.DefaultConfig()
		c.mod(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, transport.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidConfig naming %q", cfg, err, c.want)
		}
	}
}

func TestTransportConnectWrongPassword(t *testing.T) {
	e := transporttest.RunServerWith(t, transport.EmbeddedConfig{User: "ringattn", Password: "s3cret"})
	cfg := transporttest.Config(e)
	cfg.Password = "wrong"
	start := time.Now()
	nc, err := transport.Connect(cfg, transporttest.Logger(t))
	if err == nil {
		nc.Close()
		t.Fatal("Connect with a wrong password succeeded")
	}
	t.Logf("error after %v: %v", time.Since(start), err)
	if !errors.Is(err, transport.ErrAuth) || !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("wrong password: %v, want ErrAuth wrapping nats.ErrAuthorization", err)
	}
	for _, want := range []string{"authorization violation", e.ClientURL(), `user "ringattn"`} {
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			t.Fatalf("error %q does not contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "wrong") || strings.Count(err.Error(), "\n") != 0 {
		t.Fatalf("error %q leaks the password or spans lines", err)
	}
	cfg.Password = "s3cret"
	nc, err = transport.Connect(cfg, transporttest.Logger(t))
	must(t, err)
	nc.Close()
	// Nobody listening: ErrConnect, not ErrAuth.
	e.Shutdown()
	cfg.ConnectTimeout = 500 * time.Millisecond
	if _, err := transport.Connect(cfg, nil); !errors.Is(err, transport.ErrConnect) || errors.Is(err, transport.ErrAuth) {
		t.Fatalf("no server: %v, want ErrConnect", err)
	}
}

// recorder is a slog.Handler keeping every message.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }
func (r *recorder) has(msg string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m == msg {
			return nil
		}
	}
	return fmt.Errorf("no %q among %q", msg, r.msgs)
}

func TestTransportConnectionEventsAndRestart(t *testing.T) {
	e := transporttest.RunServer(t)
	rec := &recorder{}
	nc, err := transport.Connect(transporttest.Config(e), slog.New(rec))
	must(t, err)
	defer nc.Close()
	must(t, rec.has("nats connected"))
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	data := randVals(8, 5000)
	must(t, s.PutBlock(ctx, "job-e", "q", 0, data, transport.F32))
	url := e.ClientURL()

	must(t, e.Restart()) // same port and store dir
	if e.ClientURL() != url {
		t.Fatalf("restarted server at %s, want %s", e.ClientURL(), url)
	}
	transporttest.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error { return rec.has("nats disconnected") })
	transporttest.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error { return rec.has("nats reconnected") })
	got, err := s.GetBlock(ctx, "job-e", "q", 0) // JetStream state survived
	must(t, err)
	equalF32(t, "block after restart", got, data)
	nc.Close()
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error { return rec.has("nats connection closed") })
}

func TestTransportEmbeddedConfig(t *testing.T) {
	for _, c := range []transport.EmbeddedConfig{
		{Port: 70000}, {MaxPayload: -1}, {User: "u"}, {MaxStore: -1},
	} {
		if _, err := transport.StartEmbedded(c); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Fatalf("StartEmbedded(%+v): %v, want ErrInvalidConfig", c, err)
		}
	}
	e := transporttest.RunServerWith(t, transport.EmbeddedConfig{MaxPayload: 2 << 20, Logger: transporttest.Logger(t)})
	if !strings.HasPrefix(e.ClientURL(), "nats://127.0.0.1:") {
		t.Fatalf("ClientURL %q: want loopback", e.ClientURL())
	}
	nc := transporttest.Connect(t, e)
	if nc.MaxPayload() != 2<<20 {
		t.Fatalf("max payload %d, want %d", nc.MaxPayload(), 2<<20)
	}
	// A temporary data dir is removed by Shutdown.
	e2, err := transport.StartEmbedded(transport.EmbeddedConfig{})
	must(t, err)
	dir := e2.Config().DataDir
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("data dir: %v", err)
	}
	e2.Shutdown()
	e2.Shutdown()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temporary data dir %s still there after Shutdown: %v", dir, err)
	}
}
