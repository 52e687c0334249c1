package main

import (
	"context"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// maxAbsNPY is max |x| over a .npy file.
func maxAbsNPY(t *testing.T, path string) float64 {
	t.Helper()
	x, err := tensor.ReadNPY(path)
	if err != nil {
		t.Fatal(err)
	}
	var m float64
	for _, v := range x.Data {
		m = math.Max(m, math.Abs(float64(v)))
	}
	return m
}

// TestCLIPrecisionBF16 runs attend --precision bf16 in every mode (the
// in-process kernel, --ranks, --cluster, --nats) on numpy's float64
// reference problem (GQA, ragged, causal): o is within 2⁻⁷·max|v| and
// lse within 2⁻⁶·max(1, |lse|) of float64 (the bounds pkg/kernels
// documents and asserts), and differs from the fp32 result of the same
// mode, so the flag reached the kernels. mha --precision bf16 (local and
// --cluster) differs from fp32 and stays within 2⁻⁶·max(1, |y|) of float64.
func TestCLIPrecisionBF16(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 2, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dir := t.TempDir()
	oBound := 0x1p-7 * maxAbsNPY(t, fixture("attn_v.npy"))
	lseBound := 0x1p-6 * math.Max(1, maxAbsNPY(t, fixture("attn_lse_ref.npy")))
	modes := [][]string{nil, {"--ranks", "3", "--block", "8"}, {"--cluster", "2", "--block", "8"}, {"--nats", dev.URL(), "--block", "16"}}
	for _, mode := range modes {
		out := map[string][2]string{}
		for _, prec := range []string{"fp32", "bf16"} {
			o, lse := filepath.Join(dir, prec+"_o.npy"), filepath.Join(dir, prec+"_lse.npy")
			args := append([]string{"attend", "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"), "-v", fixture("attn_v.npy"),
				"-o", o, "--lse", lse, "--causal", "--precision", prec}, mode...)
			if code, _, stderr := cli(t, args...); code != 0 {
				t.Fatalf("%v --precision %s: exit %d: %s", mode, prec, code, stderr)
			}
			out[prec] = [2]string{o, lse}
		}
		dO, dL := maxDiff(t, out["bf16"][0], fixture("attn_o_ref.npy")), maxDiff(t, out["bf16"][1], fixture("attn_lse_ref.npy"))
		t.Logf("%v: bf16 max |o - float64| = %.3g (bound %.3g), |lse - float64| = %.3g (bound %.3g)", mode, dO, oBound, dL, lseBound)
		if dO > oBound || dL > lseBound {
			t.Errorf("%v: bf16 error o %g (bound %g), lse %g (bound %g)", mode, dO, oBound, dL, lseBound)
		}
		if d := maxDiff(t, out["fp32"][0], fixture("attn_o_ref.npy")); d > 1e-4 {
			t.Errorf("%v: fp32 max |o - float64| = %g", mode, d)
		}
		if d := maxDiff(t, out["bf16"][0], out["fp32"][0]); d == 0 {
			t.Errorf("%v: --precision bf16 gave the fp32 output bit for bit: the flag did not reach the kernels", mode)
		}
	}

	yBound := 0x1p-6 * math.Max(1, maxAbsNPY(t, fixture("mha_y_ref.npy")))
	for _, mode := range [][]string{nil, {"--cluster", "2", "--block", "8"}} {
		ys := map[string]string{}
		for _, prec := range []string{"fp32", "bf16"} {
			y := filepath.Join(dir, prec+"_y.npy")
			margs := []string{"mha", "-x", fixture("mha_x.npy"), "--heads", "3", "--causal", "-o", y, "--precision", prec}
			for _, w := range []string{"wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"} {
				margs = append(margs, "--"+w, fixture("mha_"+w+".npy"))
			}
			if code, _, stderr := cli(t, append(margs, mode...)...); code != 0 {
				t.Fatalf("mha %v --precision %s: exit %d: %s", mode, prec, code, stderr)
			}
			ys[prec] = y
		}
		d := maxDiff(t, ys["bf16"], fixture("mha_y_ref.npy"))
		t.Logf("mha %v: bf16 max |y - float64| = %.3g (bound %.3g)", mode, d, yBound)
		if d > yBound {
			t.Errorf("mha %v bf16: max |y - float64| = %g, bound %g", mode, d, yBound)
		}
		if maxDiff(t, ys["bf16"], ys["fp32"]) == 0 {
			t.Errorf("mha %v --precision bf16 gave the fp32 output bit for bit", mode)
		}
	}
}

// TestCLIPrecisionRefused: an unknown --precision is one line naming the
// flag and the expected values, exit 2, before any input is read.
func TestCLIPrecisionRefused(t *testing.T) {
	o := filepath.Join(t.TempDir(), "o.npy")
	for cmd, args := range map[string][]string{
		"attend": {"-q", "missing.npy", "-k", "missing.npy", "-v", "missing.npy"},
		"mha":    {"-x", "missing.npy", "--heads", "2"},
	} {
		code, _, stderr := cli(t, append([]string{cmd, "-o", o, "--precision", "fp16"}, args...)...)
		line := strings.TrimSpace(stderr)
		if code != 2 || strings.Count(line, "\n") != 0 || !strings.Contains(line, `--precision = "fp16", expected fp32 or bf16`) {
			t.Errorf("%s --precision fp16: exit %d, stderr %q; want exit 2 and one line naming --precision and fp32 or bf16", cmd, code, stderr)
		}
	}
}

// TestCLIBenchKernelPrecision: bench kernel --precision times each
// precision per shape (a precision column), and refuses an unknown one.
func TestCLIBenchKernelPrecision(t *testing.T) {
	t.Setenv(childEnv, "1") // bench kernel execs the test binary per shape
	code, out, stderr := cli(t, "bench", "kernel", "--seq", "64", "--dim", "16", "--heads", "1", "--runs", "1", "--mask", "none", "--precision", "fp32,bf16")
	if code != 0 || !strings.Contains(out, "| mask | precision |") || !strings.Contains(out, "| none | fp32 |") || !strings.Contains(out, "| none | bf16 |") {
		t.Fatalf("exit %d, stdout:\n%s\nstderr: %s", code, out, stderr)
	}
	code, _, stderr = cli(t, "bench", "kernel", "--precision", "fp16")
	if code != 2 || !strings.Contains(stderr, `--precision item "fp16", expected fp32 or bf16`) {
		t.Errorf("bench kernel --precision fp16: exit %d, stderr %q", code, stderr)
	}
}
