package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// limitInputs writes random q, k, v [1, 1, n, d] and returns their paths.
func limitInputs(t *testing.T, dir string, n, d int, seed uint64) (q, k, v string) {
	t.Helper()
	r := testrand.New(seed)
	paths := make([]string, 3)
	for i, name := range []string{"q", "k", "v"} {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%s%d_%d.npy", name, n, d))
		if err := tensor.WriteNPY(paths[i], tensor.New(r.Slice(n*d, testrand.Normal), 1, 1, n, d)); err != nil {
			t.Fatal(err)
		}
	}
	return paths[0], paths[1], paths[2]
}

// wantUsage asserts exit 2 and one stderr line naming want, with no
// library prefix, and that out was not written.
func wantUsage(t *testing.T, what, out string, args ...string) {
	t.Helper()
	code, stdout, stderr := cli(t, args...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != exitUsage || len(lines) != 1 || stdout != "" {
		t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 and one line", what, code, stdout, stderr)
		return
	}
	for _, bad := range []string{"invalid argument", "invalid request", "kernels:", "shard:", "GFLOP/s"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("%s: stderr %q shows %q", what, stderr, bad)
		}
	}
	if out != "" {
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: %s was written", what, out)
		}
	}
}

// checkNormal runs a small packed, causal cross-attention job in mode and
// checks it against the float64 reference.
func checkNormal(t *testing.T, dir string, mode ...string) {
	t.Helper()
	const n, nk, d = 40, 56, 8
	q, k, v := limitInputs(t, dir, n, d, 5)
	_, k, v = limitInputs(t, dir, nk, d, 6)
	o := filepath.Join(dir, "normal_o.npy")
	args := append([]string{"attend", "-q", q, "-k", k, "-v", v, "-o", o, "--causal", "--seqlens", "10,30", "--seqlens-k", "20,36", "--block", "8"}, mode...)
	if code, _, stderr := cli(t, args...); code != 0 {
		t.Fatalf("normal job %v: exit %d: %s", mode, code, stderr)
	}
	load := func(p string) []float32 {
		x, err := tensor.ReadNPY(p)
		if err != nil {
			t.Fatal(err)
		}
		return x.Data
	}
	p := attnref.Problem{B: 1, Hq: 1, Hkv: 1, N: n, Nk: nk, D: d, Mask: attnref.Mask{Causal: true, SeqLens: []int{10, 30}, SeqLensK: []int{20, 36}}}
	ref, _ := p.Attention(load(q), load(k), load(v))
	if diff := attnref.MaxAbsDiff(load(o), ref); diff > 1e-4 {
		t.Fatalf("normal job %v: max |o - ref| = %g", mode, diff)
	}
	os.Remove(o)
}

// crafted is the command: lengths 1, 2^63-1, 2^63-1, 5 wrap around
// 2^64 to Nk = 4. attend printed 4.4e15 GFLOP/s locally; on a cluster the
// coordinator accepted it and the leader's planner panicked.
func crafted(q, k, v, o string, mode ...string) []string {
	return append([]string{"attend", "-q", q, "-k", k, "-v", v, "-o", o, "--block", "2",
		"--seqlens", "1,1,1,1", "--seqlens-k", "1,9223372036854775807,9223372036854775807,5"}, mode...)
}

// TestCLILimitsCrafted: the crafted command is refused (exit 2, one line
// naming --seqlens-k) locally, on an in-process ring and with --cluster,
// before anything is computed; a normal job right after is exact.
func TestCLILimitsCrafted(t *testing.T) {
	dir := t.TempDir()
	q, k, v := limitInputs(t, dir, 4, 8, 1)
	o := filepath.Join(dir, "o.npy")
	for _, mode := range [][]string{nil, {"--ranks", "2"}, {"--cluster", "1"}, {"--nats", "nats://127.0.0.1:1"}} {
		args := crafted(q, k, v, o, mode...)
		wantUsage(t, fmt.Sprint(mode), o, args...)
		_, _, stderr := cli(t, args...)
		if !strings.Contains(stderr, "--seqlens-k item 1 = 9223372036854775807") {
			t.Errorf("%v: stderr %q does not name --seqlens-k item 1", mode, stderr)
		}
		t.Logf("%v: %s", mode, strings.TrimSpace(stderr))
	}
	// Lengths that fit the limits but sum past Nk are refused once the
	// shapes are read, naming the flag.
	code, _, stderr := cli(t, "attend", "-q", q, "-k", k, "-v", v, "-o", o, "--seqlens", "2,2", "--seqlens-k", "2,3")
	if code != exitUsage || !strings.Contains(stderr, "--seqlens-k: item 1 = 3 brings the sum past nk = 4") {
		t.Errorf("seqlens-k past Nk: exit %d: %q", code, stderr)
	}
	code, _, stderr = cli(t, "attend", "-q", q, "-k", k, "-v", v, "-o", o, "--seqlens", "2,2", "--seqlens-k", "2,1")
	if code != exitUsage || !strings.Contains(stderr, "--seqlens-k: lengths sum to 3, expected the sequence length 4") {
		t.Errorf("seqlens-k short of Nk: exit %d: %q", code, stderr)
	}
	checkNormal(t, dir)
	checkNormal(t, dir, "--ranks", "3")
}

// TestCLILimitsFlags: each limit and flag at its bound works (or passes
// the check) and one past it is refused naming the flag.
func TestCLILimitsFlags(t *testing.T) {
	dir := t.TempDir()
	q, k, v := limitInputs(t, dir, 16, 8, 2)
	o := filepath.Join(dir, "o.npy")
	base := []string{"attend", "-q", q, "-k", k, "-v", v, "-o", o}
	ones := func(n int) string { return strings.TrimSuffix(strings.Repeat("1,", n), ",") }
	for _, c := range []struct {
		name  string
		extra []string
		want  string
	}{
		{"ranks 0", []string{"--ranks", "0"}, "--ranks = 0, expected >= 1"},
		{"ranks -1", []string{"--ranks", "-1"}, "--ranks = -1, expected >= 1"},
		{"cluster 0", []string{"--cluster", "0"}, "--cluster = 0, expected >= 1"},
		{"ranks 0 and cluster", []string{"--ranks", "0", "--cluster", "2"}, "exclusive"},
		{"block 0", []string{"--block", "0"}, "--block = 0, expected 1..16777216"},
		{"block past MaxTokens", []string{"--block", "16777217"}, "--block = 16777217, expected 1..16777216"},
		{"window past MaxTokens", []string{"--window-left", "16777217"}, "--window-left = 16777217, expected -1 (unbounded) or 0..16777216"},
		{"window int64", []string{"--window-right", "9223372036854775807"}, "--window-right = 9223372036854775807"},
		{"seqlens item past MaxTokens", []string{"--seqlens", "16777217"}, "--seqlens item 0 = 16777217, expected 1..16777216"},
		{"seqlens past MaxDocs", []string{"--seqlens", ones(65537)}, "--seqlens has 65537 documents, expected at most 65536"},
		{"seqlens N+1", []string{"--seqlens", "8,9"}, "--seqlens: item 1 = 9 brings the sum past n = 16"},
		{"negative scale", []string{"--scale", "-1"}, "--scale = -1"},
	} {
		wantUsage(t, c.name, o, append(base, c.extra...)...)
		if _, _, stderr := cli(t, append(base, c.extra...)...); !strings.Contains(stderr, c.want) {
			t.Errorf("%s: stderr %q, want %q", c.name, stderr, c.want)
		}
	}
	// At the bounds: --seqlens summing to N, a window of MaxTokens, a block
	// of MaxTokens.
	for _, extra := range [][]string{{"--seqlens", "8,8"}, {"--window-left", "16777216", "--causal"}, {"--block", "16777216", "--ranks", "1"}} {
		if code, _, stderr := cli(t, append(base, extra...)...); code != 0 {
			t.Errorf("%v: exit %d: %s", extra, code, stderr)
		}
	}

	// MaxD: 256 is accepted, 257 refused naming -q's head dim.
	q, k, v = limitInputs(t, dir, 2, 256, 3)
	if code, _, stderr := cli(t, "attend", "-q", q, "-k", k, "-v", v, "-o", o); code != 0 {
		t.Errorf("D = 256: exit %d: %s", code, stderr)
	}
	q, k, v = limitInputs(t, dir, 2, 257, 3)
	wantUsage(t, "D = 257", "", "attend", "-q", q, "-k", k, "-v", v, "-o", o+"x")
	if _, _, stderr := cli(t, "attend", "-q", q, "-k", k, "-v", v, "-o", o); !strings.Contains(stderr, "-q head dim D: 257: want 1..256") {
		t.Errorf("D = 257: %q", stderr)
	}

	// MaxBlocks: 65,536 one-token blocks pass (computed by the local kernel:
	// a ring of 65,536 blocks costs pkg/ringattn O(blocks²) memory), 65,537
	// are refused naming --block.
	q, k, v = limitInputs(t, dir, 65537, 1, 4)
	wantUsage(t, "65537 blocks", "", "attend", "-q", q, "-k", k, "-v", v, "-o", o+"y", "--block", "1", "--ranks", "2")
	if _, _, stderr := cli(t, "attend", "-q", q, "-k", k, "-v", v, "-o", o, "--block", "1", "--ranks", "2"); !strings.Contains(stderr,
		"--block: 1 tokens cut n = 65537 into 65537 blocks: want at most 65536 blocks per sequence (Limits.MaxBlocks), a block of at least 2") {
		t.Errorf("65537 blocks: %q", stderr)
	}
	q, k, v = limitInputs(t, dir, 65536, 1, 4)
	if code, _, stderr := cli(t, "attend", "-q", q, "-k", k, "-v", v, "-o", o, "--block", "1",
		"--causal", "--window-left", "0"); code != 0 {
		t.Errorf("65536 blocks: exit %d: %s", code, stderr)
	}

	// mha: --heads past MaxHeads.
	wantUsage(t, "mha heads", "", "mha", "-x", fixture("mha_x.npy"), "--wq", fixture("mha_wq.npy"), "--wk", fixture("mha_wk.npy"),
		"--wv", fixture("mha_wv.npy"), "--wo", fixture("mha_wo.npy"), "--heads", "1025", "-o", o)
}

// TestCLILimitsNATS: against a running cluster the crafted command is
// refused by the CLI; the same spec sent around the SDK's check is refused
// by the coordinator naming spec.mask.seqlens_k (it used to crash the
// leader's planner); a normal job right after runs and is exact.
func TestCLILimitsNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 1, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dir := t.TempDir()
	q, k, v := limitInputs(t, dir, 4, 8, 1)
	o := filepath.Join(dir, "o.npy")
	wantUsage(t, "--nats", o, crafted(q, k, v, o, "--nats", dev.URL())...)
	wantUsage(t, "--ranks 0 --nats", o, "attend", "-q", q, "-k", k, "-v", v, "-o", o, "--nats", dev.URL(), "--ranks", "0")

	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 1, Hkv: 1, D: 8, N: 4, Nk: 4, Block: 2,
		Mask:     &pb.Mask{Seqlens: []int64{1, 1, 1, 1}, SeqlensK: []int64{1, math.MaxInt64, math.MaxInt64, 5}},
		InputRef: "in-crafted", IdempotencyKey: "crafted"}
	_, err = cl.Submit(ctx, spec)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Code != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || ae.Field != "spec.mask.seqlens_k" ||
		!strings.Contains(ae.Message, "item 1 = 9223372036854775807 brings the sum past nk = 4") {
		t.Fatalf("coordinator on the crafted spec: %v", err)
	}
	checkNormal(t, dir, "--nats", dev.URL())
}
