package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/pkg/client"
)

// TestCLIGatewayBind: ringattn gateway refuses a non-loopback address
// without a token (exit 2, naming the way out) and a bad NATS URL.
func TestCLIGatewayBind(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"gateway", "--nats", "127.0.0.1:1", "--http", "0.0.0.0:0"}, "--insecure"},
		{[]string{"gateway", "--nats", "no url", "--http", "127.0.0.1:0"}, "--nats"},
		{[]string{"gateway", "--nats", "127.0.0.1:1", "--max-in-flight", "0"}, "--max-in-flight = 0"},
		{[]string{"gateway", "--nats", "127.0.0.1:1", "--max-request-bytes", "-5"}, "--max-request-bytes = -5"},
	} {
		code, _, stderr := cli(t, c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q: expected exit 2 naming %s", c.args, code, stderr, c.want)
		}
	}
}

// syncBuffer is a goroutine-safe stdout.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCLIGatewayServes: the gateway process's server answers its probes
// without the token, the job API only with it, and stops with its context.
func TestCLIGatewayServes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 1, WorkerThreads: 1, WorkerGFLOPS: 10, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out syncBuffer
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- serveGateway(sctx, &cliEnv{stdout: &out, stderr: io.Discard}, cl, "127.0.0.1:0", gateway.Config{Token: "tk"})
	}()
	var base string
	for base == "" {
		if _, after, ok := strings.Cut(out.String(), "on http://"); ok {
			base = "http://" + strings.TrimSpace(after)
		} else if ctx.Err() != nil {
			t.Fatal("no address printed")
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	get := func(path, token string) int {
		req, _ := http.NewRequest("GET", base+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{{"/healthz", "", 200}, {"/readyz", "", 200}, {"/v1/info", "", 401}, {"/v1/info", "tk", 200}, {"/v1/jobs", "tk", 200}} {
		if got := get(c.path, c.token); got != c.want {
			t.Errorf("GET %s (token %q): %d, expected %d", c.path, c.token, got, c.want)
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serveGateway: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serveGateway did not stop with its context")
	}
}
