package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
)

func noEnv(string) (string, bool) { return "", false }

func TestCoordinatorCmdFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, &out, &errb, noEnv); code != 0 || !strings.HasPrefix(out.String(), "coordinator ") {
		t.Fatalf("--version: code %d, out %q, err %q", code, out.String(), errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"--help"}, &out, &errb, noEnv); code != 0 || !strings.Contains(errb.String(), "--peers") && !strings.Contains(errb.String(), "-peers") {
		t.Fatalf("--help: code %d, err %q", code, errb.String())
	}
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "NodeID"},
		{[]string{"--node-id", "a", "--peers", "a=nohost"}, nil, "peers"},
		{[]string{"--node-id", "a", "--log-format", "xml"}, nil, "log format"},
		{[]string{"--node-id", "a", "extra"}, nil, "unexpected argument"},
		{[]string{"--node-id", "a"}, map[string]string{"RINGATTN_JOB_TTL": "soon"}, "RINGATTN_JOB_TTL"},
		{nil, map[string]string{"RINGATTN_NODE_ID": "a", "RINGATTN_HEARTBEAT_TIMEOUT": "0s"}, "HeartbeatTimeout"},
		{[]string{"--heartbeat-timeout", "0s"}, map[string]string{"RINGATTN_NODE_ID": "a", "RINGATTN_HEARTBEAT_TIMEOUT": "5s"}, "HeartbeatTimeout"},
		{[]string{"--node-id", "a", "--plan-timeout", "0s"}, nil, "PlanTimeout"},
		{[]string{"--node-id", "a"}, map[string]string{"RINGATTN_SWEEP_GRACE": "0s"}, "SweepGrace"},
		{[]string{"--node-id", "a", "--max-concurrent-requests", "0"}, nil, "Limits.MaxConcurrentRequests"},
		{[]string{"--node-id", "a"}, map[string]string{"RINGATTN_MAX_CONCURRENT_REPORTS": "0"}, "Limits.MaxConcurrentReports"},
	} {
		errb.Reset()
		lookup := func(k string) (string, bool) { v, ok := c.env[k]; return v, ok }
		if code := run(context.Background(), c.args, &out, &errb, lookup); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v %v: code %d, stderr %q, want 2 and %q", c.args, c.env, code, errb.String(), c.want)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestCoordinatorCmdRuns starts a single-node coordinator from flags and
// env against an embedded NATS server, waits until /readyz says ready, and
// stops it like SIGTERM would.
func TestCoordinatorCmdRuns(t *testing.T) {
	ns, err := transport.StartEmbedded(transport.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	httpAddr := freePort(t)
	env := map[string]string{"RINGATTN_NATS_URL": ns.ClientURL(), "RINGATTN_DATA_DIR": t.TempDir()}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"--node-id", "solo", "--bootstrap", "--raft-addr", freePort(t), "--http-addr", httpAddr, "--log-format", "json"}, io.Discard, &logs, lookup)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(body), "leader solo") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit code %d\n%s", c, logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("coordinator did not stop")
	}
	if !strings.Contains(logs.String(), `"msg":"coordinator running"`) {
		t.Fatalf("no JSON log line:\n%s", logs.String())
	}
}
