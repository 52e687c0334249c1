package bench

import (
	"strconv"
	"strings"
	"testing"
)

// TestBenchClusterBackward runs bench cluster --backward on a tiny shape,
// both masks, no tiny jobs: one backward row per mask, with a positive
// cluster time, GFLOP/s and share of the peak, and the gradients within
// GradTolerance of kernels.AttentionBackward's.
func TestBenchClusterBackward(t *testing.T) {
	code, out, stderr := cli(t, "bench", "cluster", "--backward", "--workers", "2", "--seq", "256", "--dim", "32", "--heads", "2",
		"--block", "64", "--runs", "1", "--tiny", "0")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "measured FMA peak") || !strings.Contains(out, "2.5×") {
		t.Errorf("peak line or the FLOP count note missing:\n%s", out)
	}
	if rows := tableRows(out, "| W | B | H | N | D | mask | kernel (s) |"); len(rows) != 0 {
		t.Errorf("%d forward rows with --backward, want none:\n%s", len(rows), out)
	}
	rows := tableRows(out, "| W | B | H | N | D | mask | kernel bwd (s) |")
	if len(rows) != 2 {
		t.Fatalf("%d backward rows, want 2:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if len(r) != 15 || r[0] != "2" {
			t.Fatalf("row %v: want 15 cells for W=2", r)
		}
		positive(t, "cluster compute", r[7])
		positive(t, "end-to-end", r[9])
		positive(t, "cluster GFLOP/s", r[11])
		positive(t, "% of peak", r[12])
		if d, err := strconv.ParseFloat(r[14], 64); err != nil || d > GradTolerance {
			t.Errorf("row %v: max rel diff %q, want <= %g", r, r[14], GradTolerance)
		}
	}
}
