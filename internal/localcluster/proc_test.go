package localcluster

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLocalclusterProcSignals runs a plain process through the Proc life cycle:
// SIGSTOP/SIGCONT keep it alive, SIGTERM ends it, Restart runs it again
// (log appended), and an exit whose log says a bind failed is
// ErrPortInUse (what makes Start try again with new ports).
func TestLocalclusterProcSignals(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("no sh: %v", err)
	}
	dir := t.TempDir()
	p := &Proc{Name: "sleeper", LogPath: filepath.Join(dir, "sleeper.log"), bin: sh,
		args: []string{"-c", `trap 'echo term; exit 0' TERM; echo started; while :; do sleep 0.05; done`}}
	started := func(n int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := Poll(ctx, PollInterval, func() error {
			if log, _ := os.ReadFile(p.LogPath); strings.Count(string(log), "started\n") < n {
				return errors.New("not started")
			}
			return nil
		}, "sh started"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	started(1)
	defer func() {
		if p.Running() {
			p.Kill()
		}
	}()
	if err := p.Stop(); err != nil || !p.Stopped() {
		t.Fatalf("Stop: %v (stopped %v)", err, p.Stopped())
	}
	if err := p.Cont(); err != nil || p.Stopped() || !p.Running() {
		t.Fatalf("Cont: %v (stopped %v, running %v)", err, p.Stopped(), p.Running())
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	ps, err := p.Terminate(10 * time.Second) // continues the stopped process first
	if err != nil || ps.ExitCode() != 0 {
		t.Fatalf("Terminate: %v, exit %v; want a clean exit", err, ps)
	}
	first := p.Pid()
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	started(2)
	if p.Pid() == first || !p.Running() {
		t.Fatalf("after Restart pid %d (was %d), running %v", p.Pid(), first, p.Running())
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if st := p.ExitState(); st == nil || st.Success() {
		t.Fatalf("exit state after SIGKILL: %v", st)
	}
	log, err := os.ReadFile(p.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(log), "started\n"); got != 2 || !strings.Contains(string(log), "term\n") {
		t.Fatalf("log holds %d starts (want 2) and term=%v:\n%s", got, strings.Contains(string(log), "term\n"), log)
	}
	if err := p.ExitError(); errors.Is(err, ErrPortInUse) || !errors.Is(err, ErrExited) {
		t.Fatalf("exitError of a killed process: %v, want ErrExited only", err)
	}

	b := &Proc{Name: "binder", LogPath: filepath.Join(dir, "binder.log"), bin: sh,
		args: []string{"-c", "echo 'listen tcp 127.0.0.1:7000: bind: address already in use' >&2; exit 1"}}
	if err := b.start(); err != nil {
		t.Fatal(err)
	}
	<-b.Exited()
	if err := b.ExitError(); !errors.Is(err, ErrPortInUse) || !errors.Is(err, ErrExited) {
		t.Fatalf("exitError: %v, want ErrPortInUse and ErrExited", err)
	}
}
