package bench

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBenchRSS runs `bench rss` end to end on two small shapes with the
// shard fixed: real worker processes (binaries built from this checkout),
// sampled outputs checked against the float64 reference, each worker's
// peak RSS read from /proc.
func TestBenchRSS(t *testing.T) {
	png := filepath.Join(t.TempDir(), "rss.png")
	code, out, stderr := cli(t, "bench", "rss", "--workers", "2", "--seq", "4096,8192", "--heads", "4,2",
		"--block", "256", "--window", "0", "--png", png)
	t.Logf("stderr:\n%s", stderr)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	checkPNG(t, png)
	rows := tableRows(out, "| N | H |")
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2:\n%s", len(rows), out)
	}
	for i, want := range [][2]string{{"4096", "4"}, {"8192", "2"}} {
		r := rows[i]
		if len(r) != 9 || r[0] != want[0] || r[1] != want[1] {
			t.Fatalf("row %d = %v, want 9 cells for N=%s H=%s", i, r, want[0], want[1])
		}
		if r[2] != "2" { // 4096/2 rows × 4 heads × 64 × 4 B = 2 MiB
			t.Errorf("row %d: q shard %q MiB, want 2", i, r[2])
		}
		positive(t, "job seconds", r[3])
		peaks := strings.Split(r[5], ", ")
		if len(peaks) != 2 {
			t.Errorf("row %d: %d worker peaks %q, want 2", i, len(peaks), r[5])
		}
		for _, p := range append(peaks, r[6]) {
			// A worker process holds at least its runtime and its shard.
			if mib, err := strconv.Atoi(p); err != nil || mib < 2 || mib > 2048 {
				t.Errorf("row %d: peak RSS %q MiB, want an integer in [2, 2048]", i, p)
			}
		}
		if d, err := strconv.ParseFloat(r[8], 64); err != nil || d > Tolerance {
			t.Errorf("row %d: sampled rows max abs diff %q, want <= %g", i, r[8], Tolerance)
		}
	}
	if !strings.Contains(out, "mask causal\n") {
		t.Errorf("output does not say the mask is fully causal:\n%s", out)
	}
}

// TestBenchRSSFlags: bad flags are one line naming the flag, exit 2.
func TestBenchRSSFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers", "0"}, "--workers"},
		{[]string{"--seq", "0"}, "--seq"},
		{[]string{"--heads", "1,2"}, "--heads"},
		{[]string{"--dim", "0"}, "--dim"},
		{[]string{"--block", "0"}, "--block"},
		{[]string{"--window", "-1"}, "--window"},
		{[]string{"--bogus"}, "bogus"},
	} {
		code, out, stderr := cli(t, append([]string{"bench", "rss"}, c.args...)...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || out != "" || len(lines) != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line naming %s", c.args, code, out, stderr, c.want)
		}
	}
	if code, out, _ := cli(t, "bench", "--help"); code != 0 || !strings.Contains(out, "rss") {
		t.Errorf("bench --help: exit %d, lacks rss:\n%s", code, out)
	}
}
