package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
)

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// ringattnCLI builds cmd/ringattn once per test binary.
func ringattnCLI(t *testing.T) string {
	t.Helper()
	binaries(t) // the cluster's binaries live in binDir too
	cliOnce.Do(func() {
		root, err := localcluster.ModuleRoot(".")
		if err != nil {
			cliErr = err
			return
		}
		cliPath = filepath.Join(binDir, "ringattn")
		out, err := exec.Command("go", "build", "-C", root, "-o", cliPath, "./cmd/ringattn").CombinedOutput()
		if err != nil {
			cliErr = errors.New(string(out))
		}
	})
	if cliErr != nil {
		t.Fatalf("building ringattn: %v", cliErr)
	}
	return cliPath
}

// cliCluster is a `ringattn cluster` process and what it printed.
type cliCluster struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	url    string
	pids   map[string]int
	exited chan error
}

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

var (
	urlRE  = regexp.MustCompile(`NATS\s+(nats://127\.0\.0\.1:\d+)`)
	procRE = regexp.MustCompile(`(?m)^\s+(nats|coordinator-\d+|worker-\d+)\s+(\d+)\s`)
)

// startCLICluster runs `ringattn cluster args...` and waits for its
// "Ctrl-C stops everything." line.
func startCLICluster(t *testing.T, args ...string) *cliCluster {
	t.Helper()
	cmd := exec.Command(ringattnCLI(t), append([]string{"cluster"}, args...)...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cc := &cliCluster{cmd: cmd, out: out, pids: map[string]int{}, exited: make(chan error, 1)}
	go func() { cc.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill() //nolint:errcheck
		}
		if t.Failed() {
			t.Logf("ringattn cluster output:\n%s", out.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := localcluster.Poll(ctx, localcluster.PollInterval, func() error {
		select {
		case err := <-cc.exited:
			cc.exited <- err
			return localcluster.Permanent(errors.New("ringattn cluster exited: " + out.String()))
		default:
		}
		if !strings.Contains(out.String(), "Ctrl-C stops everything.") {
			return errors.New("not up yet")
		}
		return nil
	}, "ringattn cluster up")
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	m := urlRE.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no NATS URL in the output:\n%s", s)
	}
	cc.url = m[1]
	for _, m := range procRE.FindAllStringSubmatch(s, -1) {
		cc.pids[m[1]], _ = strconv.Atoi(m[2])
	}
	return cc
}

// interrupt sends SIGINT and waits for a clean exit.
func (cc *cliCluster) interrupt(t *testing.T) {
	t.Helper()
	if err := cc.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-cc.exited:
		if err != nil {
			t.Fatalf("ringattn cluster after Ctrl-C: %v\n%s", err, cc.out.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("ringattn cluster still running a minute after Ctrl-C")
	}
	if !strings.Contains(cc.out.String(), "ringattn cluster: stopped") {
		t.Fatalf("no 'stopped' line:\n%s", cc.out.String())
	}
	for name, pid := range cc.pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (pid %d) still exists after Ctrl-C: %v", name, pid, err)
		}
	}
}

// TestHarnessCLICluster runs `ringattn cluster` as a user would: it prints
// the NATS URL and each process's pid, address and log; a job submitted
// to it is exact; Ctrl-C stops every process; a second run on the same
// --dir finds the first run's job (same ports, same Raft and JetStream
// data).
func TestHarnessCLICluster(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--workers", "2", "--dir", dir, "--nats-port", "0", "--bin", binDir, "--threads", "1",
		"--heartbeat-timeout", "1500ms"}
	cc := startCLICluster(t, args...)
	t.Logf("ringattn cluster output:\n%s", cc.out.String())
	if len(cc.pids) != 6 {
		t.Fatalf("found %d processes in the output, want 6 (nats, 3 coordinators, 2 workers): %v", len(cc.pids), cc.pids)
	}
	for name := range cc.pids {
		if _, err := os.Stat(filepath.Join(dir, "logs", name+".log")); err != nil {
			t.Errorf("log of %s: %v", name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{cc.url}
	cl, err := client.Connect(ctx, cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	j := newJob(40, 1, 4, 2, 700, 900, 32, 128, true)
	l := &ledger{t: t, cl: cl, byID: map[string]*job{}}
	id := l.submit(ctx, j)
	st := l.wait(ctx, id)
	if err := l.fetchCheck(ctx, j, st); err != nil {
		t.Fatal(err)
	}
	t.Logf("job %s %v on %v, exact", id, st.GetState(), st.GetWorkers())
	cc.interrupt(t)

	// Same --dir again: the coordinators find their Raft state (the
	// layout kept their ports) and still know the job.
	cc2 := startCLICluster(t, args...)
	if cc2.url != cc.url {
		t.Errorf("NATS URL %s on the second run, want the first run's %s (kept in %s)", cc2.url, cc.url, localcluster.LayoutFile)
	}
	cfg.URLs = []string{cc2.url}
	cl2, err := client.Connect(ctx, cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	l2 := &ledger{t: t, cl: cl2, byID: map[string]*job{}}
	st2 := l2.wait(ctx, id)
	if st2.GetState() != st.GetState() || st2.GetFinishedUnixMs() != st.GetFinishedUnixMs() {
		t.Fatalf("second run: job %s is %v finished at %d, want %v at %d", id, st2.GetState(), st2.GetFinishedUnixMs(), st.GetState(), st.GetFinishedUnixMs())
	}
	if err := l2.fetchCheck(ctx, j, st2); err != nil {
		t.Fatal(err)
	}
	t.Logf("second run on the same --dir: job %s still %v, outputs still exact", id, st2.GetState())
	cc2.interrupt(t)
}

// TestHarnessCLIClusterUsage: bad flags exit 2 with one line naming the
// flag and the expected value.
func TestHarnessCLIClusterUsage(t *testing.T) {
	cli := ringattnCLI(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers", "0"}, "--workers = 0, expected 1..64"},
		{[]string{"--coordinators", "10"}, "--coordinators = 10, expected 1..9"},
		{[]string{"--nats-port", "70000"}, "--nats-port = 70000, expected 0..65535"},
		{[]string{"--log-level", "loud"}, `--log-level = "loud", expected debug, info, warn or error`},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		cmd := exec.Command(cli, append([]string{"cluster"}, tc.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		cmd.Stdout = io.Discard
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("ringattn cluster %v: %v, want exit code 2", tc.args, err)
		}
		lines := 0
		sc := bufio.NewScanner(&stderr)
		for sc.Scan() {
			lines++
			if !strings.Contains(sc.Text(), tc.want) {
				t.Errorf("ringattn cluster %v: stderr %q, want it to name %q", tc.args, sc.Text(), tc.want)
			}
		}
		if lines != 1 {
			t.Errorf("ringattn cluster %v: %d lines on stderr, want 1", tc.args, lines)
		}
	}
}
