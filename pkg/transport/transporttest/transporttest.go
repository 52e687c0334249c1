// Package transporttest runs a real embedded NATS server (JetStream on,
// random port on 127.0.0.1, temporary store) for the tests of any package,
// and provides small helpers around it.
package transporttest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/transport"
)

// RunServer starts an embedded server with default settings (8 MiB max
// payload, JetStream file store in a temporary dir) and shuts it down when
// the test ends.
func RunServer(t testing.TB) *transport.Embedded {
	t.Helper()
	return RunServerWith(t, transport.EmbeddedConfig{})
}

// RunServerWith starts an embedded server with cfg (Port 0 = random) and
// shuts it down when the test ends.
func RunServerWith(t testing.TB, cfg transport.EmbeddedConfig) *transport.Embedded {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	e, err := transport.StartEmbedded(cfg)
	if err != nil {
		t.Fatalf("transporttest: starting embedded NATS: %v", err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// Config returns a transport.Config for e, authenticating as e's user.
func Config(e *transport.Embedded) transport.Config {
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{e.ClientURL()}
	ec := e.Config()
	cfg.User, cfg.Password, cfg.Token = ec.User, ec.Password, ec.Token
	cfg.ReconnectWait = 20 * time.Millisecond
	cfg.ReconnectMaxWait = 200 * time.Millisecond
	cfg.ReconnectJitter = 10 * time.Millisecond
	return cfg
}

// Connect connects to e (logging to t) and closes the connection when the
// test ends.
func Connect(t testing.TB, e *transport.Embedded) *nats.Conn {
	t.Helper()
	nc, err := transport.Connect(Config(e), Logger(t))
	if err != nil {
		t.Fatalf("transporttest: connecting to %s: %v", e.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Logger returns a logger writing to t.Log at debug level; records after the
// test ended are dropped.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

var _ io.Writer = (*testWriter)(nil)

// Eventually polls f every `every` until it returns nil, failing the test
// with f's last error after `total`.
func Eventually(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("transporttest: condition not met within %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

// Store opens the tensor store on nc (bucket cfg.Bucket, default
// "ringattn").
func Store(t testing.TB, nc *nats.Conn, cfg transport.StoreConfig) *transport.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := transport.OpenStore(ctx, nc, cfg, Logger(t))
	if err != nil {
		t.Fatalf("transporttest: opening store: %v", err)
	}
	return s
}

// WaitConnected polls until nc is connected.
func WaitConnected(t testing.TB, nc *nats.Conn, total time.Duration) {
	t.Helper()
	Eventually(t, total, 10*time.Millisecond, func() error {
		if nc.IsConnected() {
			return nil
		}
		return fmt.Errorf("connection status %v", nc.Status())
	})
}
