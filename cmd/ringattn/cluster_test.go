package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
)

// TestCLIClusterModes runs attend and mha on an embedded ephemeral cluster
// (--cluster 3) and against a running dev cluster (--nats URL): NATS,
// a Raft coordinator and workers passing KV blocks over NATS.
func TestCLIClusterModes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 3, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dir := t.TempDir()
	modes := [][]string{{"--cluster", "3", "--block", "8"}, {"--nats", dev.URL(), "--block", "16"}}
	for _, mode := range modes {
		o, lse := filepath.Join(dir, "o.npy"), filepath.Join(dir, "lse.npy")
		// Ragged, causal, GQA cross-attention (N=37, Nk=53, Hq=4, Hkv=2).
		args := append([]string{"attend", "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"), "-v", fixture("attn_v.npy"),
			"-o", o, "--lse", lse, "--causal"}, mode...)
		if code, _, stderr := cli(t, args...); code != 0 {
			t.Fatalf("%v: exit %d: %s", mode, code, stderr)
		}
		if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
			t.Fatalf("%v: max |o - numpy| = %g", mode, d)
		}
		if d := maxDiff(t, lse, fixture("attn_lse_ref.npy")); d > 1e-4 {
			t.Fatalf("%v: max |lse - numpy| = %g", mode, d)
		}
		y := filepath.Join(dir, "y.npy")
		margs := []string{"mha", "-x", fixture("mha_x.npy"), "--heads", "3", "--causal", "-o", y}
		for _, w := range []string{"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"} {
			margs = append(margs, "--"+w, fixture("mha_"+w+".npy"))
		}
		if code, _, stderr := cli(t, append(margs, mode...)...); code != 0 {
			t.Fatalf("mha %v: exit %d: %s", mode, code, stderr)
		}
		if d := maxDiff(t, y, fixture("mha_y_ref.npy")); d > 1e-4 {
			t.Fatalf("mha %v: max |y - numpy| = %g", mode, d)
		}
	}

	// submit --wait, status, list, get against the running cluster.
	code, stdout, stderr := cli(t, "submit", "--nats", dev.URL(), "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"),
		"-v", fixture("attn_v.npy"), "--causal", "--lse", "--block", "10", "--wait")
	if code != 0 {
		t.Fatalf("submit: exit %d: %s", code, stderr)
	}
	id := strings.TrimSpace(stdout)
	if code, stdout, stderr = cli(t, "status", id, "--nats", dev.URL()); code != 0 || !strings.Contains(stdout, "SUCCEEDED") {
		t.Fatalf("status: exit %d: %q %q", code, stdout, stderr)
	}
	if code, stdout, stderr = cli(t, "list", "--nats", dev.URL(), "--state", "succeeded"); code != 0 || !strings.Contains(stdout, id) {
		t.Fatalf("list: exit %d: %q %q", code, stdout, stderr)
	}
	o, lse := filepath.Join(dir, "got.npy"), filepath.Join(dir, "gotlse.npy")
	if code, _, stderr = cli(t, "get", id, "--nats", dev.URL(), "-o", o, "--lse", lse); code != 0 {
		t.Fatalf("get: exit %d: %s", code, stderr)
	}
	if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
		t.Fatalf("get: max |o - numpy| = %g", d)
	}

	// Errors: an unknown job id, an unreachable URL; one line, non-zero exit.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "j-doesnotexist", "--nats", dev.URL()}, "j-doesnotexist"},
		{[]string{"get", "j-doesnotexist", "--nats", dev.URL(), "-o", o}, "j-doesnotexist"},
		{[]string{"status", "j-x", "--nats", "nats://127.0.0.1:1"}, "127.0.0.1:1"},
		{[]string{"attend", "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"), "-v", fixture("attn_v.npy"),
			"-o", o, "--nats", "nats://127.0.0.1:1"}, "127.0.0.1:1"},
	} {
		code, _, stderr := cli(t, c.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want a non-zero exit and one line naming %q", c.args, code, stderr, c.want)
		}
	}
}
