package main

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLIDevCommand runs the real `ringattn dev` process, sends it a job
// with `attend --nats URL`, and stops it with Ctrl-C (SIGINT).
func TestCLIDevCommand(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ringattn")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "dev", "--workers", "2", "--port", "0", "--http", "127.0.0.1:0", "--data", filepath.Join(dir, "data"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	defer func() {
		cmd.Process.Kill()
	}()
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "NATS" {
				urls <- f[1]
			}
		}
		exited <- cmd.Wait()
	}()
	var url string
	select {
	case url = <-urls:
	case err := <-exited:
		t.Fatalf("dev exited before serving: %v\n%s", err, stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("dev printed no NATS URL within 60 s\n%s", stderr.String())
	}

	o, lse := filepath.Join(dir, "o.npy"), filepath.Join(dir, "lse.npy")
	code, _, errOut := cli(t, "attend", "--nats", url, "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"),
		"-v", fixture("attn_v.npy"), "-o", o, "--lse", lse, "--causal", "--block", "12")
	if code != 0 {
		t.Fatalf("attend --nats %s: exit %d: %s\ndev: %s", url, code, errOut, stderr.String())
	}
	if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
		t.Fatalf("max |o - numpy| = %g", d)
	}
	if d := maxDiff(t, lse, fixture("attn_lse_ref.npy")); d > 1e-4 {
		t.Fatalf("max |lse - numpy| = %g", d)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("dev after Ctrl-C: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("dev did not stop within 30 s of Ctrl-C\n%s", stderr.String())
	}
}
