package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

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

func TestCLIBenchRing(t *testing.T) {
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
		if d, err := strconv.ParseFloat(r[14], 64); err != nil || d > benchTolerance {
			t.Errorf("row %v: max abs diff %q, want <= %g", r, r[14], benchTolerance)
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

func TestCLIBenchCluster(t *testing.T) {
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
		if d, err := strconv.ParseFloat(r[15], 64); err != nil || d > benchTolerance {
			t.Errorf("row %v: max abs diff %q, want <= %g", r, r[15], benchTolerance)
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
