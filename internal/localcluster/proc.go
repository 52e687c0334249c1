package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Kind is what a process runs.
type Kind string

// Process kinds.
const (
	KindNATS        Kind = "nats"
	KindCoordinator Kind = "coordinator"
	KindWorker      Kind = "worker"
)

// Proc is one OS process of the cluster. Its stdout and stderr go to
// LogPath (appended across restarts, each start marked by a header line).
// Restart runs the same command again: same data directory, same ports.
// Methods are safe for concurrent use.
type Proc struct {
	// Name is unique in the cluster: "nats", "coordinator-0", "worker-2".
	// It is also the coordinator's node id and the worker's id.
	Name string
	Kind Kind
	// Addr is the NATS client address (nats), the ops HTTP address
	// (coordinator) or the metrics HTTP address (worker).
	Addr string
	// RaftAddr is a coordinator's Raft address.
	RaftAddr string
	// NATSURL is the URL the process connects to (the proxy's for a worker
	// behind one); for the NATS server, its own client URL.
	NATSURL string
	// DataDir is the process's data directory ("" for a worker).
	DataDir string
	// LogPath is the process's log file.
	LogPath string

	bin  string
	args []string
	env  []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the current run ends
	state   *os.ProcessState
	stopped bool
	starts  int
	started time.Time
}

// Args returns the command line (without the binary).
func (p *Proc) Args() []string { return append([]string(nil), p.args...) }

// Binary returns the executable's path.
func (p *Proc) Binary() string { return p.bin }

// ChildEnv is the environment of every child: this process's, without
// RINGATTN_* variables (the harness sets everything by flags, and a
// user's RINGATTN_NATS_URL must not redirect a child).
func ChildEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RINGATTN_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// start starts the process (it must not be running).
func (p *Proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.state == nil {
		return fmt.Errorf("%w: %s (pid %d)", ErrRunning, p.Name, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	p.starts++
	fmt.Fprintf(logf, "=== localcluster %s: start #%d at %s: %s %s\n", p.Name, p.starts,
		time.Now().UTC().Format(time.RFC3339Nano), p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = ChildEnv(p.env)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("localcluster: starting %s: %w", p.Name, err)
	}
	p.cmd, p.state, p.stopped, p.started = cmd, nil, false, time.Now()
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		_ = cmd.Wait() // the exit status is in ProcessState
		logf.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Pid is the current (or last) run's process id; 0 before the first start.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// PeakRSS is the current run's peak resident set in bytes (VmHWM; Linux).
func (p *Proc) PeakRSS() (int64, error) {
	pid := p.Pid()
	if pid == 0 {
		return 0, fmt.Errorf("localcluster: %s was never started", p.Name)
	}
	return PeakRSS(pid)
}

// PeakRSS returns the peak resident set in bytes of the running process
// pid: VmHWM in /proc/<pid>/status, the high-water mark of its own address
// space. (rusage maxrss is no substitute for a child: Linux carries the
// parent's resident set into a child's maxrss across fork and exec.)
func PeakRSS(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("localcluster: peak RSS of process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("localcluster: /proc/%d/status: VmHWM %q: %w", pid, rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("localcluster: /proc/%d/status has no VmHWM", pid)
}

// Started is when the current (or last) run started.
func (p *Proc) Started() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// Running reports whether the process runs (a stopped process runs).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && p.state == nil
}

// Exited returns a channel closed when the current run ends.
func (p *Proc) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.exited
}

// ExitState returns the last run's exit state (nil while running).
func (p *Proc) ExitState() *os.ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// Signal sends sig to the running process.
func (p *Proc) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.state != nil {
		return fmt.Errorf("%w: %s", ErrExited, p.Name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("localcluster: %s: %v: %w", p.Name, sig, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	return nil
}

// Wait waits until the current run ends or ctx ends and returns its exit
// state.
func (p *Proc) Wait(ctx context.Context) (*os.ProcessState, error) {
	select {
	case <-p.Exited():
		return p.ExitState(), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %s (pid %d) still running: %w", ErrNotReady, p.Name, p.Pid(), ctx.Err())
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.Exited()
	return nil
}

// Stop sends SIGSTOP: the process hangs (no heartbeats, no frames, open
// connections) until Cont.
func (p *Proc) Stop() error { return p.Signal(syscall.SIGSTOP) }

// Cont sends SIGCONT to a stopped process.
func (p *Proc) Cont() error { return p.Signal(syscall.SIGCONT) }

// Stopped reports whether the process was stopped with Stop and not yet
// continued.
func (p *Proc) Stopped() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopped && p.state == nil
}

// Terminate sends SIGTERM (continuing a stopped process first) and waits
// up to grace for the process to exit, then kills it. It returns the exit
// state, and an error when the process had to be killed.
func (p *Proc) Terminate(grace time.Duration) (*os.ProcessState, error) {
	if p.Stopped() {
		_ = p.Cont()
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, ErrExited) {
			return p.ExitState(), nil
		}
		return nil, err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.Exited():
		return p.ExitState(), nil
	case <-t.C:
	}
	_ = p.Kill()
	return p.ExitState(), fmt.Errorf("localcluster: %s (pid %d) did not exit within %v of SIGTERM: killed", p.Name, p.Pid(), grace)
}

// ExitError describes a run that ended: its exit status and log file,
// wrapping ErrExited, and ErrPortInUse when the log says a bind failed.
func (p *Proc) ExitError() error {
	err := fmt.Errorf("%w: %s: %v (see %s)", ErrExited, p.Name, p.ExitState(), p.LogPath)
	if tail, _ := ReadTail(p.LogPath, 16<<10); strings.Contains(tail, "address already in use") {
		err = fmt.Errorf("%w: %w", ErrPortInUse, err)
	}
	return err
}

// ReadTail returns the last n bytes of a file.
func ReadTail(path string, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	_, err = f.ReadAt(b, off)
	return string(b), err
}

// Restart starts the process again with the same command line: same
// ports, same data directory. The process must have exited (Kill or
// Terminate it first). Readiness is the caller's to wait for.
func (p *Proc) Restart() error { return p.start() }

// String describes the process on one line.
func (p *Proc) String() string {
	s := fmt.Sprintf("%-14s pid %-7d %s", p.Name, p.Pid(), p.Addr)
	if p.RaftAddr != "" {
		s += " raft " + p.RaftAddr
	}
	return s + "  log " + p.LogPath
}
