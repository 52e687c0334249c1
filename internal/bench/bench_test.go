package bench

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// childEnv, set to 1, makes the test binary stand in for the ringattn
// binary when bench kernel execs os.Executable() for each shape.
const childEnv = "RINGATTN_BENCH_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "bench" {
		os.Exit(run(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// run runs `ringattn bench args...` with the default flag handling of a
// nil Env.NewFlags and Env.Parse, and returns the exit code the CLI
// would: 0, 2 for a UsageError, 1 for another error.
func run(args []string, stdout, stderr *os.File) int {
	return exitCode(Run(Env{Stdout: stdout, Stderr: stderr}, args), stderr)
}

func exitCode(err error, stderr interface{ WriteString(string) (int, error) }) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(UsageError)):
		stderr.WriteString("ringattn bench: " + err.Error() + "\n")
		return 2
	default:
		stderr.WriteString("ringattn bench: " + err.Error() + "\n")
		return 1
	}
}

// cli runs `ringattn bench args...` in-process (args start with the
// target) and returns its exit code and output.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if len(args) == 0 || args[0] != "bench" {
		t.Fatalf("cli(%q): args start with \"bench\"", args)
	}
	var o, e bytes.Buffer
	code = exitCode(Run(Env{Stdout: &o, Stderr: &e}, args[1:]), &e)
	return code, o.String(), e.String()
}

// checkPNG fails unless path is a non-trivial PNG file.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) || len(data) < 1000 {
		t.Fatalf("%s: %d bytes, not a PNG plot", path, len(data))
	}
}

// tableRows returns the data rows of the Markdown tables in out whose
// header starts with header, split into trimmed cells.
func tableRows(out, header string) [][]string {
	var rows [][]string
	in := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, header):
			in = true
		case in && strings.HasPrefix(line, "|--"):
		case in && strings.HasPrefix(line, "|"):
			var cells []string
			for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
				cells = append(cells, strings.TrimSpace(c))
			}
			rows = append(rows, cells)
		default:
			in = false
		}
	}
	return rows
}

func positive(t *testing.T, what, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(s, "+"), "%"), 64)
	if err != nil || !(v > 0) {
		t.Errorf("%s = %q, want a positive number", what, s)
	}
	return v
}

func TestBenchRing(t *testing.T) {
	png := filepath.Join(t.TempDir(), "ring.png")
	code, out, stderr := cli(t, "bench", "ring", "--seq", "300,512", "--dim", "32", "--heads", "2", "--ranks", "2,3",
		"--block", "64", "--runs", "1", "--png", png)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	checkPNG(t, png)
	rows := tableRows(out, "| B | H | N | D | mask | R |")
	if len(rows) != 2*2*2 {
		t.Fatalf("%d rows, want 8:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if len(r) != 15 {
			t.Fatalf("row %v has %d cells, want 15", r, len(r))
		}
		// A tiny shape can finish in under half a millisecond, which the
		// table prints as 0.000 s; its GFLOP/s (from the exact duration)
		// must still be positive.
		if s, err := strconv.ParseFloat(r[8], 64); err != nil || s < 0 {
			t.Errorf("row %v: ring time %q, want a number >= 0", r, r[8])
		}
		if c, err := strconv.ParseFloat(r[11], 64); err != nil || c < 0 {
			t.Errorf("row %v: ring CPU %q, want a number >= 0", r, r[11])
		}
		positive(t, "ring GFLOP/s", r[13])
		if d, err := strconv.ParseFloat(r[14], 64); err != nil || d > Tolerance {
			t.Errorf("row %v: max abs diff %q, want <= %g", r, r[14], Tolerance)
		}
	}
	for _, args := range [][]string{
		{"bench", "ring", "--ranks", "0"},
		{"bench", "ring", "--mask", "diagonal"},
		{"bench", "ring", "--runs", "0"},
		{"bench", "nope"},
	} {
		if code, _, stderr := cli(t, args...); code != 2 || stderr == "" {
			t.Errorf("%v: exit %d (%q), want 2 with a message", args, code, stderr)
		}
	}
}

func TestBenchCluster(t *testing.T) {
	png := filepath.Join(t.TempDir(), "cluster.png")
	code, out, stderr := cli(t, "bench", "cluster", "--workers", "2", "--seq", "256", "--dim", "32", "--heads", "2",
		"--block", "64", "--runs", "1", "--tiny", "6", "--concurrency", "3", "--png", png)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	checkPNG(t, png)
	rows := tableRows(out, "| W | B | H | N | D | mask |")
	if len(rows) != 2 {
		t.Fatalf("%d attention rows, want 2:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if len(r) != 16 || r[0] != "2" {
			t.Fatalf("row %v: want 16 cells for W=2", r)
		}
		positive(t, "cluster compute", r[7])
		positive(t, "end-to-end", r[9])
		positive(t, "end-to-end CPU", r[12])
		if d, err := strconv.ParseFloat(r[15], 64); err != nil || d > Tolerance {
			t.Errorf("row %v: max abs diff %q, want <= %g", r, r[15], Tolerance)
		}
	}
	tiny := tableRows(out, "| W | jobs |")
	if len(tiny) != 1 || len(tiny[0]) != 8 || tiny[0][1] != "6" || tiny[0][5] != "6" || tiny[0][6] != "3" {
		t.Fatalf("tiny-job table %v, want one row of 6 jobs, 3 in flight:\n%s", tiny, out)
	}
	p50, p99 := positive(t, "p50", tiny[0][2]), positive(t, "p99", tiny[0][3])
	if p99 < p50 {
		t.Errorf("p99 %v < p50 %v", p99, p50)
	}
	positive(t, "jobs/s", tiny[0][7])
}

// TestBenchKernel runs bench kernel on a tiny shape, forward and
// backward, each shape in a child process (this test binary, see
// TestMain); and checks the flag handling of an Env without NewFlags and
// Parse: --help prints the synopsis and flags, a bad flag or argument is a
// UsageError.
func TestBenchKernel(t *testing.T) {
	t.Setenv(childEnv, "1")
	code, out, stderr := cli(t, "bench", "kernel", "--seq", "80", "--dim", "16", "--heads", "2", "--runs", "1", "--mask", "none", "--backward")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rows := tableRows(out, "| B | H | N | D | mask | time (s) |")
	if len(rows) != 1 || len(rows[0]) != 13 || rows[0][1] != "2" || rows[0][2] != "80" || rows[0][3] != "16" || rows[0][4] != "none" {
		t.Fatalf("rows %v, want one row of 13 cells for H=2 N=80 D=16:\n%s", rows, out)
	}
	positive(t, "GFLOP/s", rows[0][6])
	positive(t, "peak RSS", rows[0][8])
	positive(t, "backward GFLOP/s", rows[0][10])
	if !strings.Contains(out, "counts 2.5× that") {
		t.Errorf("no note on the backward's FLOP count:\n%s", out)
	}

	code, out, _ = cli(t, "bench", "kernel", "--help")
	if code != 0 || !strings.HasPrefix(out, "Usage: ringattn bench kernel [--seq") || !strings.Contains(out, "-backward") {
		t.Errorf("--help: exit %d:\n%s", code, out)
	}
	for _, args := range [][]string{{"bench", "kernel", "--nope"}, {"bench", "kernel", "stray"}, {"bench", "kernel", "--one", "1,2"}} {
		if code, _, stderr := cli(t, args...); code != 2 || !strings.HasPrefix(stderr, "ringattn bench: ") {
			t.Errorf("%v: exit %d (%q), want 2", args, code, stderr)
		}
	}
}
