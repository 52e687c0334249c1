package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func TestWorkerCmdFlagsAndEnv(t *testing.T) {
	t.Setenv("RINGATTN_WORKER_ID", "from-env")
	t.Setenv("RINGATTN_SLOTS", "3")
	t.Setenv("RINGATTN_DRAIN_TIMEOUT", "7s")
	t.Setenv("RINGATTN_NATS_URL", "nats://10.0.0.1:4222")
	var stderr bytes.Buffer
	t.Setenv("RINGATTN_MAX_TOKENS", "33554432")
	cfg, ver, format, level, err := config([]string{"--slots", "2", "--log-format", "json", "--heartbeat-interval", "250ms", "--max-blocks", "131072"}, &stderr)
	if err != nil {
		t.Fatalf("config: %v (%s)", err, stderr.String())
	}
	switch {
	case ver:
		t.Error("version set")
	case cfg.ID != "from-env":
		t.Errorf("ID = %q, want from the environment", cfg.ID)
	case cfg.Slots != 2:
		t.Errorf("Slots = %d, want the flag's 2 over the environment's 3", cfg.Slots)
	case cfg.DrainTimeout != 7*time.Second:
		t.Errorf("DrainTimeout = %v, want 7s from the environment", cfg.DrainTimeout)
	case cfg.HeartbeatInterval != 250*time.Millisecond:
		t.Errorf("HeartbeatInterval = %v", cfg.HeartbeatInterval)
	case len(cfg.NATS.URLs) != 1 || cfg.NATS.URLs[0] != "nats://10.0.0.1:4222":
		t.Errorf("NATS URLs = %v", cfg.NATS.URLs)
	case cfg.Limits.MaxTokens != 1<<25 || cfg.Limits.MaxBlocks != 1<<17 || cfg.Limits.MaxD != 256:
		t.Errorf("Limits = %+v, want MaxTokens 2^25 from the environment, MaxBlocks 2^17 from the flag, the rest default", cfg.Limits)
	case format != "json" || level != "info":
		t.Errorf("log format %q level %q", format, level)
	}
}

func TestWorkerCmdUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "ringattn worker") {
		t.Fatalf("--version: exit %d, %q", code, out.String())
	}
	errb.Reset()
	if code := run([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "-drain-timeout") ||
		!strings.Contains(errb.String(), "RINGATTN_DRAIN_TIMEOUT") {
		t.Fatalf("--help: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"--slots", "0"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "slots") {
		t.Fatalf("--slots 0: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"--log-format", "xml"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "xml") {
		t.Fatalf("--log-format xml: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	t.Setenv("RINGATTN_SLOTS", "many")
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "RINGATTN_SLOTS") {
		t.Fatalf("bad env: exit %d, %q", code, errb.String())
	}
}

// TestMain lets the test binary run as the worker command itself when
// RINGATTN_WORKER_TEST_MAIN is set (the signal test starts it that way).
func TestMain(m *testing.M) {
	if os.Getenv("RINGATTN_WORKER_TEST_MAIN") == "1" {
		main() // exits
	}
	os.Exit(m.Run())
}

// TestWorkerCmdSIGTERMDrains starts the command as a process, waits for its
// heartbeats, sends SIGTERM, and expects a leaving heartbeat and exit 0.
func TestWorkerCmdSIGTERMDrains(t *testing.T) {
	srv := transporttest.RunServer(t)
	nc := transporttest.Connect(t, srv)
	subj := transport.NewSubjects("")
	hbs := make(chan *pb.Heartbeat, 100)
	sub, err := nc.Subscribe(subj.Heartbeats(), func(m *nats.Msg) {
		var hb pb.Heartbeat
		if proto.Unmarshal(m.Data, &hb) == nil {
			select {
			case hbs <- &hb:
			default:
			}
		}
		data, _ := proto.Marshal(&pb.HeartbeatAck{LeaderId: "test"})
		m.Respond(data) //nolint:errcheck
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	cmd := exec.Command(os.Args[0], "--id", "sig-worker", "--gflops", "1", "--heartbeat-interval", "50ms",
		"--metrics-addr", "off", "--log-format", "json")
	cmd.Env = append(os.Environ(), "RINGATTN_WORKER_TEST_MAIN=1", "RINGATTN_NATS_URL="+srv.ClientURL())
	logs := &syncBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck
	waitHB := func(leaving bool) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case hb := <-hbs:
				if hb.WorkerId == "sig-worker" && hb.Leaving == leaving {
					return
				}
			case <-timeout:
				t.Fatalf("no heartbeat with leaving=%v; logs:\n%s", leaving, logs.String())
			}
		}
	}
	waitHB(false)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitHB(true)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker exited with %v after SIGTERM, want 0; logs:\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("worker still running 10 s after SIGTERM; logs:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"msg":"draining"`) {
		t.Fatalf("no drain in the logs:\n%s", logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe to read while the process writes it.
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

// TestWorkerCmdRefusesBadGFLOPS: a speed that is not 0 or a finite number
// in (0, MaxGFLOPS] — by flag or environment — exits 2 with one line
// naming --gflops (the old worker took --gflops inf and reported +Inf).
func TestWorkerCmdRefusesBadGFLOPS(t *testing.T) {
	for _, v := range []string{"inf", "+Inf", "-inf", "NaN", "-1", "1e300", "1000000.5"} {
		var out, errb bytes.Buffer
		code := run([]string{"--gflops", v, "--nats-url", "nats://127.0.0.1:1"}, &out, &errb)
		if code != 2 || !strings.Contains(errb.String(), "--gflops = ") || strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("--gflops %s: exit %d, stderr %q; want exit 2 and one line naming --gflops", v, code, errb.String())
		}
	}
	t.Setenv("RINGATTN_GFLOPS", "inf")
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--gflops = +Inf") {
		t.Errorf("RINGATTN_GFLOPS=inf: exit %d, stderr %q; want exit 2 naming --gflops", code, errb.String())
	}
	// At the limit and the measure-at-start 0 are fine.
	for _, v := range []string{"1e6", "0", "0.001"} {
		if _, _, _, _, err := config([]string{"--gflops", v}, &errb); err != nil {
			t.Errorf("--gflops %s: %v, want accepted", v, err)
		}
	}
}

// TestWorkerCmdFaultEnv: the test-only fault variables are parsed into the
// Config, and a bad spec exits 2 naming the variable.
func TestWorkerCmdFaultEnv(t *testing.T) {
	t.Setenv(envFaultStall, "epoch=1,step=2")
	t.Setenv(envFaultPanic, "rank=0")
	var errb bytes.Buffer
	cfg, _, _, _, err := config(nil, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.StallFault.String(); got != "job=*,epoch=1,rank=*,step=2" {
		t.Errorf("StallFault = %q", got)
	}
	if got := cfg.PanicFault.String(); got != "job=*,epoch=*,rank=0,step=0" {
		t.Errorf("PanicFault = %q", got)
	}
	t.Setenv(envFaultStall, "epoch=zero")
	var out bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), envFaultStall) {
		t.Errorf("bad %s: exit %d, stderr %q; want exit 2 naming it", envFaultStall, code, errb.String())
	}
}
