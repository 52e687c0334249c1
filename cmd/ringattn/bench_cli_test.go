package main

import (
	"strconv"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/bench"
)

// The benches' own tests are in internal/bench; these check that
// `ringattn bench ...` reaches them with the CLI's flag handling and exit
// codes, and hold the helpers of the bench runs in grad_cli_test.go.

// benchGradTolerance is what bench ring --backward accepts.
const benchGradTolerance = bench.GradTolerance

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

// TestCLIBenchDispatch: `ringattn bench` lists its targets on --help,
// bad usage exits 2 with one line naming the problem, a target's --help
// is the CLI's (synopsis, flags with defaults, exit 0), an unknown flag
// gets the nearest known one suggested, and a tiny bench kernel runs (its
// shapes in child processes: this test binary, see TestMain).
func TestCLIBenchDispatch(t *testing.T) {
	code, out, _ := cli(t, "bench", "--help")
	if code != 0 || !strings.HasPrefix(out, "Usage: ringattn bench kernel|ring|cluster|rss|recovery|load|simulate [flags]") {
		t.Errorf("bench --help: exit %d:\n%s", code, out)
	}
	for _, target := range bench.Targets {
		if !strings.Contains(out, "\n  "+target+" ") {
			t.Errorf("bench --help does not list %q:\n%s", target, out)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench"}, "ringattn bench: bench needs a target: kernel, ring, cluster, rss, recovery, load or simulate\n"},
		{[]string{"bench", "nope"}, "ringattn bench: unknown bench target \"nope\", expected kernel, ring, cluster, rss, recovery, load or simulate\n"},
		{[]string{"bench", "kernel", "--runs", "0"}, "ringattn bench: --runs and --heads must be >= 1\n"},
		{[]string{"bench", "kernel", "--seq", "64,x"}, "ringattn bench: --seq item \"x\", expected a positive integer\n"},
		{[]string{"bench", "ring", "--mask", "diagonal"}, "ringattn bench: "},
		{[]string{"bench", "kernel", "--heds", "2"}, "--heads"},
		{[]string{"bench", "kernel", "extra"}, "ringattn bench: unexpected argument \"extra\"\n"},
	} {
		code, out, stderr := cli(t, c.args...)
		if code != 2 || out != "" || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", c.args, code, out, stderr, c.want)
		}
	}

	code, out, stderr := cli(t, "bench", "kernel", "--help")
	if code != 0 || stderr != "" || !strings.HasPrefix(out, "Usage: ringattn bench kernel [--seq 2048,8192,32768] [--dim 64,128]") ||
		!strings.Contains(out, "--backward") || !strings.Contains(out, "(default 2048,8192,32768)") {
		t.Errorf("bench kernel --help: exit %d, stderr %q:\n%s", code, stderr, out)
	}

	t.Setenv(childEnv, "1")
	code, out, stderr = cli(t, "bench", "kernel", "--seq", "64", "--dim", "16", "--heads", "1", "--runs", "1", "--mask", "causal")
	rows := tableRows(out, "| B | H | N | D | mask | time (s) |")
	if code != 0 || len(rows) != 1 || len(rows[0]) != 9 || rows[0][2] != "64" || rows[0][4] != "causal" {
		t.Fatalf("bench kernel: exit %d, stderr %q, rows %v:\n%s", code, stderr, rows, out)
	}
	positive(t, "GFLOP/s", rows[0][6])
	positive(t, "peak RSS", rows[0][8])
}
