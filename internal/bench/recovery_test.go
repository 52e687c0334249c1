package bench

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestBenchRecovery runs `bench recovery` end to end on a small job: a
// real multi-process cluster (binaries built from this checkout), a
// worker and then the leader SIGKILLed mid-ring, every output checked
// against the local kernel.
func TestBenchRecovery(t *testing.T) {
	png := filepath.Join(t.TempDir(), "recovery.png")
	code, out, stderr := cli(t, "bench", "recovery", "--faults", "worker-kill,leader-kill", "--repeat", "1",
		"--seq", "4096", "--heads", "4", "--dim", "64", "--block", "256", "--png", png)
	t.Logf("stderr:\n%s", stderr)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	checkPNG(t, png)
	rows := tableRows(out, "| fault | runs |")
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2:\n%s", len(rows), out)
	}
	for i, want := range []string{"worker SIGKILL", "leader SIGKILL"} {
		r := rows[i]
		if len(r) != 10 || r[0] != want || r[1] != "1" {
			t.Fatalf("row %d = %v, want 10 cells for %q over 1 run", i, r, want)
		}
		positive(t, want+" done p50", r[4])
		positive(t, want+" done max", r[5])
		positive(t, want+" job p50", r[6])
		positive(t, want+" undisturbed job", r[7])
		if d, err := strconv.ParseFloat(r[9], 64); err != nil || d > Tolerance {
			t.Errorf("%s: max abs diff %q, want <= %g", want, r[9], Tolerance)
		}
	}
	// A killed worker is found dead after the heartbeat timeout and the
	// job is re-planned without it.
	kill := rows[0]
	if replan, done := positive(t, "worker SIGKILL re-plan", kill[2]), positive(t, "done", kill[4]); replan > done {
		t.Errorf("worker SIGKILL: re-plan %v s after the fault, later than done %v s", replan, done)
	}
	if e, err := strconv.Atoi(kill[8]); err != nil || e < 2 {
		t.Errorf("worker SIGKILL: the job finished in epoch %q, want >= 2 (re-planned)", kill[8])
	}
	for _, s := range []string{"Timings: workers heartbeat every 200ms and are dead after 1.5s", "leader SIGKILL: fault -> a new leader elected (its /v1/cluster names itself) p50"} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
}

// TestBenchRecoveryFlags: bad flags are one line naming the flag, exit
// 2, before any process starts; --help explains the faults.
func TestBenchRecoveryFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers", "1"}, "--workers"},
		{[]string{"--repeat", "0"}, "--repeat"},
		{[]string{"--seq", "0"}, "--seq"},
		{[]string{"--heads", "-1"}, "--heads"},
		{[]string{"--block", "0"}, "--block"},
		{[]string{"--threads", "-2"}, "--threads"},
		{[]string{"--faults", "worker-kill,disk-full"}, `--faults item "disk-full"`},
		{[]string{"--mask", "diagonal"}, "--mask"},
		{[]string{"--mask", "none,causal"}, "--mask"},
		{[]string{"--heartbeat-timeout", "0s"}, "--heartbeat-timeout"},
		{[]string{"--heartbeat-interval", "2s"}, "--heartbeat-interval"},
		{[]string{"--raft-timeout", "-1s"}, "--raft-timeout"},
		{[]string{"--bogus"}, "bogus"},
		{[]string{"extra"}, `"extra"`},
	} {
		code, out, stderr := cli(t, append([]string{"bench", "recovery"}, c.args...)...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || out != "" || len(lines) != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line naming %s", c.args, code, out, stderr, c.want)
		}
	}
	code, out, _ := cli(t, "bench", "recovery", "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	for _, s := range []string{"worker-kill", "worker-stop", "leader-kill", "nats-kill", "worker-term", "-heartbeat-timeout", "-repeat", "-png"} {
		if !strings.Contains(out, s) {
			t.Errorf("--help lacks %q:\n%s", s, out)
		}
	}
	if code, out, _ := cli(t, "bench", "--help"); code != 0 || !strings.Contains(out, "recovery") {
		t.Errorf("bench --help: exit %d, lacks recovery:\n%s", code, out)
	}
}
