package main

import (
	"bytes"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/tensor"
)

// cli runs the CLI in-process and returns its exit code and output.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func fixture(name string) string { return filepath.Join("testdata", name) }

// maxDiff compares an output file with a reference file.
func maxDiff(t *testing.T, got, want string) float64 {
	t.Helper()
	g, err := tensor.ReadNPY(got)
	if err != nil {
		t.Fatal(err)
	}
	w, err := tensor.ReadNPY(want)
	if err != nil {
		t.Fatal(err)
	}
	if !equalInts(g.Shape, w.Shape) {
		t.Fatalf("%s has shape %v, want %v", got, g.Shape, w.Shape)
	}
	var m float64
	for i := range g.Data {
		d := math.Abs(float64(g.Data[i]) - float64(w.Data[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = math.Max(m, d)
	}
	return m
}

// TestCLIAttendNumpy checks attend on inputs and references written by numpy
// (GQA cross-attention with ragged lengths and a bottom-right causal mask),
// locally and on in-process rings.
func TestCLIAttendNumpy(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range [][]string{nil, {"--ranks", "1"}, {"--ranks", "3", "--block", "8"}, {"--ranks", "4", "--block", "5", "--strategy", "striped"}} {
		o, lse := filepath.Join(dir, "o.npy"), filepath.Join(dir, "lse.npy")
		args := append([]string{"attend", "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"), "-v", fixture("attn_v.npy"),
			"-o", o, "--lse", lse, "--causal"}, mode...)
		code, _, stderr := cli(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", mode, code, stderr)
		}
		if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
			t.Fatalf("%v: max |o - numpy| = %g", mode, d)
		}
		if d := maxDiff(t, lse, fixture("attn_lse_ref.npy")); d > 1e-4 {
			t.Fatalf("%v: max |lse - numpy| = %g", mode, d)
		}
	}
	// Rank-2 float64 inputs are converted; the output keeps the rank.
	o := filepath.Join(dir, "small.npy")
	if code, _, stderr := cli(t, "attend", "-q", fixture("small_q.npy"), "-k", fixture("small_k.npy"), "-v", fixture("small_v.npy"), "-o", o); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if d := maxDiff(t, o, fixture("small_o_ref.npy")); d > 1e-4 {
		t.Fatalf("max |o - numpy| = %g", d)
	}
}

// TestCLIMHANumpy checks mha against torch.nn.MultiheadAttention's formula
// evaluated by numpy in float64.
func TestCLIMHANumpy(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range [][]string{nil, {"--ranks", "3", "--block", "7"}} {
		y := filepath.Join(dir, "y.npy")
		args := []string{"mha", "-x", fixture("mha_x.npy"), "--heads", "3", "--causal", "-o", y}
		for _, w := range []string{"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"} {
			args = append(args, "--"+w, fixture("mha_"+w+".npy"))
		}
		code, _, stderr := cli(t, append(args, mode...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", mode, code, stderr)
		}
		if d := maxDiff(t, y, fixture("mha_y_ref.npy")); d > 1e-4 {
			t.Fatalf("%v: max |y - numpy| = %g", mode, d)
		}
	}
}

// TestCLIBadInput: each bad input gives exit 2 and one line naming the problem.
func TestCLIBadInput(t *testing.T) {
	dir := t.TempDir()
	o := filepath.Join(dir, "o.npy")
	q, k, v := fixture("attn_q.npy"), fixture("attn_k.npy"), fixture("attn_v.npy")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing file", []string{"attend", "-q", filepath.Join(dir, "nope.npy"), "-k", k, "-v", v, "-o", o}, "nope.npy"},
		{"missing flag", []string{"attend", "-q", q, "-k", k, "-o", o}, "-v is required"},
		{"no output", []string{"attend", "-q", q, "-k", k, "-v", v}, "-o is required"},
		{"v shape", []string{"attend", "-q", q, "-k", k, "-v", q, "-o", o}, "expected the shape of -k"},
		{"rank", []string{"attend", "-q", q, "-k", fixture("small_k.npy"), "-v", fixture("small_v.npy"), "-o", o}, "rank"},
		{"heads", []string{"attend", "-q", k, "-k", q, "-v", q, "-o", o}, "not divisible"},
		{"nan", []string{"attend", "-q", fixture("nan_q.npy"), "-k", k, "-v", v, "-o", o}, "q"},
		{"truncated", []string{"attend", "-q", fixture("truncated_q.npy"), "-k", k, "-v", v, "-o", o}, "truncated_q.npy"},
		{"seqlens", []string{"attend", "-q", q, "-k", k, "-v", v, "-o", o, "--seqlens", "10,10"}, "seqlens"},
		{"seqlens item", []string{"attend", "-q", q, "-k", k, "-v", v, "-o", o, "--seqlens", "10,x"}, "--seqlens item 1"},
		{"modes", []string{"attend", "-q", q, "-k", k, "-v", v, "-o", o, "--ranks", "2", "--cluster", "2"}, "exclusive"},
		{"strategy", []string{"attend", "-q", q, "-k", k, "-v", v, "-o", o, "--strategy", "diagonal"}, "--strategy"},
		{"unknown flag", []string{"attend", "--frobnicate"}, "frobnicate"},
		{"unknown command", []string{"attnd"}, "unknown command"},
		{"cluster gflops", []string{"cluster", "--gflops", "-1"}, "--gflops = -1"},
		{"mha heads", []string{"mha", "-x", fixture("mha_x.npy"), "--wq", fixture("mha_wq.npy"), "--wk", fixture("mha_wk.npy"),
			"--wv", fixture("mha_wv.npy"), "--wo", fixture("mha_wo.npy"), "--heads", "5", "-o", o}, "not divisible by --heads 5"},
		{"mha weight", []string{"mha", "-x", fixture("mha_x.npy"), "--wq", fixture("mha_wq.npy"), "--wk", fixture("mha_wk.npy"),
			"--wv", fixture("mha_x.npy"), "--wo", fixture("mha_wo.npy"), "--heads", "3", "-o", o}, "--wv has shape"},
	}
	for _, c := range cases {
		code, stdout, stderr := cli(t, c.args...)
		if code != exitUsage {
			t.Errorf("%s: exit %d, want %d (stderr %q)", c.name, code, exitUsage, stderr)
			continue
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if len(lines) != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: stderr %q, want one line containing %q", c.name, stderr, c.want)
		}
		if stdout != "" {
			t.Errorf("%s: unexpected stdout %q", c.name, stdout)
		}
	}
}

func TestCLIHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"--help"}, {"attend", "--help"}, {"mha", "-h"}, {"demo", "--help"}, {"version"}, {"--version"}} {
		code, stdout, stderr := cli(t, args...)
		if code != 0 || stdout == "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	if code, _, _ := cli(t); code != exitUsage {
		t.Errorf("no arguments: exit %d, want %d", code, exitUsage)
	}
}

func TestCLIDemoSmall(t *testing.T) {
	code, stdout, stderr := cli(t, "demo", "--seq", "300", "--heads", "4", "--kv-heads", "2", "--dim", "32", "--workers", "3", "--block", "64")
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "exact: yes") {
		t.Fatalf("demo output lacks the verdict:\n%s", stdout)
	}
}
