package simulate

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestSimulateCLIHelp(t *testing.T) {
	if err := Run(context.Background(), []string{"-h"}, io.Discard, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("Run(-h) = %v, want flag.ErrHelp", err)
	}
	code, out, errs := runMain(t, "--help")
	if code != 0 || errs != "" {
		t.Fatalf("--help: exit %d, stderr %q", code, errs)
	}
	for _, want := range []string{"Usage: ringattn bench simulate", "Examples:",
		"--workers 8,64,256 --link 10Gbit,100Gbit", "--validate", "-transport-ns-per-byte"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
}

func TestSimulateCLIUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--link", "10Gbat"}, `--link item "10Gbat"`},
		{[]string{"--link", "-1Gbit"}, `--link item "-1Gbit"`},
		{[]string{"--workers", "0"}, `--workers item "0", expected a positive integer`},
		{[]string{"--mask", "diagonal"}, `--mask item "diagonal"`},
		{[]string{"--causal", "--mask", "full"}, "--causal and --mask both given"},
		{[]string{"--strategy", "spiral"}, `--strategy item "spiral"`},
		{[]string{"--gflops", "-3"}, "--gflops -3"},
		{[]string{"--transport-ns-per-byte", "-2"}, "--transport-ns-per-byte -2"},
		{[]string{"--kv-heads", "3"}, "--kv-heads 3 must divide --heads 8"},
		{[]string{"--nope"}, "flag provided but not defined: -nope"},
		{[]string{"--nats-servers", "-1"}, "--nats-servers -1, expected >= 0"},
		{[]string{"--diagonal-tile-cost", "-1"}, "--diagonal-tile-cost -1, expected >= 0"},
		{[]string{"--merge-ns-per-byte", "-2"}, "--merge-ns-per-byte -2, expected >= 0"},
		{[]string{"--gflops", "1", "--transport-ns-per-byte", "0", "--server-link", "fast"}, `--server-link "fast", expected a speed`},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		code, out, errs := runMain(t, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errs, tc.want)
		}
		if strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Errorf("%v: error is not one line: %q", tc.args, errs)
		}
		var out2 bytes.Buffer
		if err := Run(context.Background(), tc.args, &out2, &out2); !errors.As(err, new(UsageError)) || out2.Len() != 0 {
			t.Errorf("Run(%v) = %v, printing %q; want a UsageError and nothing printed", tc.args, err, out2.String())
		}
	}
}

// TestSimulateCLITable prints the table without measuring anything.
func TestSimulateCLITable(t *testing.T) {
	// One key/value head (MQA): nothing to split, auto picks among the
	// sequence strategies.
	code, out, errs := runMain(t, "--workers", "4,8", "--link", "10Gbit,inf", "--n", "16384", "--mask", "full,causal", "--kv-heads", "1",
		"--gflops", "200", "--transport-ns-per-byte", "0.5", "--cores", "8", "--diagonal-tile-cost", "1.8", "--merge-ns-per-byte", "0.3")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	var rows []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "| 4 |") || strings.HasPrefix(l, "| 8 |") {
			rows = append(rows, l)
		}
	}
	// 2 W x 2 links x 2 masks.
	if len(rows) != 8 {
		t.Fatalf("%d rows, want 8:\n%s", len(rows), out)
	}
	for _, want := range []string{"kernel: 200.0 GFLOP/s per worker (--gflops)", "costs 1.80 dense tiles (--diagonal-tile-cost)", "transport: 0.500 ns of CPU per byte",
		"| 8 | 10Gbit | 16384 | causal | zigzag |", "| 4 | inf | 16384 | full | contiguous |"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestSimulateCLIHeads: with 8 key/value heads auto splits them, one group
// per worker, and the table says so; --strategy heads is accepted.
func TestSimulateCLIHeads(t *testing.T) {
	for _, strategy := range []string{"auto", "heads"} {
		code, out, errs := runMain(t, "--workers", "4", "--link", "10Gbit", "--n", "16384", "--mask", "causal", "--strategy", strategy,
			"--gflops", "200", "--transport-ns-per-byte", "0.5", "--cores", "8", "--diagonal-tile-cost", "1.8", "--merge-ns-per-byte", "0.3")
		if code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", strategy, code, errs)
		}
		if want := "| 4 | 10Gbit | 16384 | causal | heads/4x1 |"; !strings.Contains(out, want) || !strings.Contains(out, "| 0 B |") {
			t.Errorf("%s: output lacks %q moving 0 B:\n%s", strategy, want, out)
		}
	}
}

func TestSimulateParseLink(t *testing.T) {
	for in, want := range map[string]float64{
		"10Gbit": 1.25e9, "100Gbit": 12.5e9, "400Mbit": 50e6, "2.5GB/s": 2.5e9, "1gbps": 125e6,
		"8bit": 1, "inf": math.Inf(1), "1Tbit/s": 125e9, "3KB/s": 3e3,
	} {
		got, err := ParseLink(in)
		if err != nil || got != want {
			t.Errorf("ParseLink(%q) = %g, %v; want %g", in, got, err, want)
		}
	}
	for _, in := range []string{"", "Gbit", "10", "10Xbit", "0Gbit", "1e3Gbit", "10gb/s", "NaNGbit", ".Gbit"} {
		if got, err := ParseLink(in); err == nil {
			t.Errorf("ParseLink(%q) = %g, want an error", in, got)
		}
	}
}

// TestSimulateCalibration runs the real measurements briefly; it checks
// they produce usable numbers, not how fast this machine is.
func TestSimulateCalibration(t *testing.T) {
	ctx := context.Background()
	ks, err := MeasureKernel(ctx, 20*time.Millisecond, 2, 64)
	if err != nil || !(ks.GFLOPS > 0) || math.IsInf(ks.GFLOPS, 0) || ks.Runs < 2 {
		t.Errorf("MeasureKernel = %+v, %v", ks, err)
	}
	kc, err := MeasureKernelCausal(ctx, 20*time.Millisecond, 2, 64)
	if err != nil || !(kc.GFLOPS > 0) || kc.DiagonalTileCost < 0.5 || kc.DiagonalTileCost > 4 {
		t.Errorf("MeasureKernelCausal = %+v, %v", kc, err)
	}
	tc, err := MeasureTransport(ctx, 20*time.Millisecond, 1<<20)
	if err != nil || !(tc.SecPerByte > 0) || !(tc.BytesPerSec > 0) || tc.Bytes < 1<<20 {
		t.Errorf("MeasureTransport = %+v, %v", tc, err)
	}
	if _, err := MeasureTransport(ctx, time.Millisecond, 7); err == nil {
		t.Errorf("MeasureTransport of a 7-byte frame: no error")
	}
	if tc, err := MeasureTransport(ctx, time.Millisecond, 8); err != nil || tc.Bytes < 8 {
		t.Errorf("MeasureTransport of an 8-byte frame (the smallest) = %+v, %v", tc, err)
	}
	if cp := MeasureCopy(); !(cp > 0) {
		t.Errorf("MeasureCopy = %g", cp)
	}
	mc, err := MeasureMerge(64)
	if err != nil || !(mc > 0) {
		t.Errorf("MeasureMerge = %g, %v", mc, err)
	}
}

// TestSimulateValidateRuns runs the validation end to end at a tiny size
// on both rings: real rings, real timings, predictions beside them. No
// bound on the error is asserted (the machine is shared).
func TestSimulateValidateRuns(t *testing.T) {
	for _, ring := range []string{RingMem, RingNATS} {
		var logs []string
		rows, cal, err := Validate(context.Background(), ValidateOptions{Workers: []int{2, 4}, N: 1024, Heads: 2, Dim: 32,
			Causal: []bool{true}, Block: 128, Runs: 1, Ring: ring, Calibration: 20 * time.Millisecond, Probe: 20 * time.Millisecond,
			Log: func(f string, a ...any) { logs = append(logs, f) }})
		if err != nil {
			t.Fatalf("%s: %v", ring, err)
		}
		if len(rows) != 2 || !(cal.Model.GFLOPS > 0) {
			t.Fatalf("%s: %d rows, model %+v", ring, len(rows), cal.Model)
		}
		if ring == RingNATS && !(cal.Model.SendSecPerByte > 0) {
			t.Errorf("NATS ring: transport cost %g not measured", cal.Model.SendSecPerByte)
		}
		for _, r := range rows {
			if !(r.Predicted > 0) || !(r.Measured > 0) || r.Bytes <= 0 || len(r.Runs) != 1 {
				t.Errorf("%s: row %+v", ring, r)
			}
		}
		if len(logs) < 3 {
			t.Errorf("%s: %d log lines, want the calibration and a line per row", ring, len(logs))
		}
	}
	if _, _, err := Validate(context.Background(), ValidateOptions{Ring: "carrier-pigeon"}); err == nil {
		t.Errorf("unknown ring: no error")
	}
}
