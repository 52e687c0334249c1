package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLIClusterAuthFlags: --tenants and --tenant-quota need --auth, and
// are checked, for cluster as for dev.
func TestCLIClusterAuthFlags(t *testing.T) {
	for _, args := range [][]string{
		{"cluster", "--tenants", "a"}, {"cluster", "--tenant-quota", "1MiB"},
		{"cluster", "--auth", "--tenants", "_admin"}, {"cluster", "--auth", "--tenant-quota", "-1"},
		{"dev", "--tenants", "a"},
	} {
		code, _, stderr := cli(t, args...)
		if code != 2 || !strings.Contains(stderr, "--tenant") {
			t.Errorf("%v: exit %d, %q; want a usage error naming the flag", args, code, stderr)
		}
	}
}

// TestCLIClusterAuth runs the real `ringattn cluster --auth` (NATS, a
// coordinator and a worker as processes, each as its own identity), reads
// the client flags it prints for tenant team-a, runs a job with them, and
// sees a client without credentials refused.
func TestCLIClusterAuth(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ringattn")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "cluster", "--auth", "--tenants", "team-a", "--coordinators", "1", "--workers", "1",
		"--nats-port", "0", "--http", "off", "--gflops", "1", "--threads", "1", "--dir", filepath.Join(dir, "c"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	exited := make(chan error, 1)
	clients := make(chan []string, 1)
	var out strings.Builder
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if f := strings.Fields(sc.Text()); len(f) > 2 && f[0] == "client" && f[1] == "team-a" {
				clients <- f[2:]
			}
		}
		exited <- cmd.Wait()
	}()
	var flags []string
	select {
	case flags = <-clients:
	case err := <-exited:
		t.Fatalf("cluster exited before serving: %v\n%s%s", err, stderr.String(), logTails(filepath.Join(dir, "c", "logs")))
	case <-time.After(4 * time.Minute):
		t.Fatalf("cluster printed no client flags within 4 min\n%s%s", stderr.String(), logTails(filepath.Join(dir, "c", "logs")))
	}
	t.Logf("team-a's flags: %v", flags)
	if len(flags) != 6 || flags[0] != "--nats" || flags[2] != "--nats-nkey" || flags[4] != "--nats-tenant" || flags[5] != "team-a" {
		t.Fatalf("client line flags %v: want --nats URL --nats-nkey FILE --nats-tenant team-a", flags)
	}

	o, lse := filepath.Join(dir, "o.npy"), filepath.Join(dir, "lse.npy")
	args := append([]string{"attend", "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"),
		"-v", fixture("attn_v.npy"), "-o", o, "--lse", lse, "--causal", "--block", "12"}, flags...)
	if code, _, errOut := cli(t, args...); code != 0 {
		t.Fatalf("attend as team-a: exit %d: %s\ncluster: %s", code, errOut, stderr.String())
	}
	if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
		t.Fatalf("max |o - numpy| = %g", d)
	}
	if d := maxDiff(t, lse, fixture("attn_lse_ref.npy")); d > 1e-4 {
		t.Fatalf("max |lse - numpy| = %g", d)
	}
	if code, _, errOut := cli(t, "list", "--nats", flags[1]); code == 0 {
		t.Errorf("list without credentials succeeded on a cluster with --auth")
	} else {
		t.Logf("without credentials: exit %d: %s", code, strings.TrimSpace(errOut))
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("cluster after Ctrl-C: %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("cluster did not stop within 60 s of Ctrl-C\n%s", stderr.String())
	}
	if !strings.Contains(out.String(), "mutual TLS") {
		t.Errorf("cluster --auth did not say Raft runs on mutual TLS:\n%s", out.String())
	}
}

// logTails returns the last lines of each process log in dir, for a
// failure message that says what the processes did.
func logTails(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Sprintf("\n(no logs: %v)", err)
	}
	var b strings.Builder
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		lines = lines[max(0, len(lines)-25):]
		fmt.Fprintf(&b, "\n--- %s (last %d lines)\n%s", e.Name(), len(lines), strings.Join(lines, "\n"))
	}
	return b.String()
}
