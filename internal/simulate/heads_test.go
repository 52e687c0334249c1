package simulate

import (
	"testing"

	"github.com/ringattn/ringattn/pkg/shard"
)

// TestSimulateHeadGroups: head-group plans simulate as their groups' rings
// side by side: pure head parallelism moves nothing, two groups of a
// 2-rank ring move a third of the 4-rank ring's causal bytes, and on a
// slow link fewer bytes mean less time.
func TestSimulateHeadGroups(t *testing.T) {
	cfg := Config{GFLOPS: 100, Cores: 4, LinkBytesPerSec: 1e7, Latency: 20e-6,
		SendSecPerByte: 0.2e-9, RecvSecPerByte: 0.2e-9, StepOverhead: 50e-6}
	ring := req(4, 32768, true, shard.Zigzag)
	groups := ring
	groups.HeadGroups = 2
	heads := req(4, 32768, true, shard.Heads)
	rr := mustSim(t, mustPlan(t, ring), cfg)
	rg := mustSim(t, mustPlan(t, groups), cfg)
	rh := mustSim(t, mustPlan(t, heads), cfg)
	if rh.Bytes != 0 || !(rg.Bytes > 0) || !(rg.Bytes < rr.Bytes) {
		t.Fatalf("bytes: ring %d, 2 groups %d, heads %d", rr.Bytes, rg.Bytes, rh.Bytes)
	}
	if want := mustPlan(t, groups).BytesMoved(); rg.Bytes != want {
		t.Fatalf("2 groups: simulated %d bytes, the plan moves %d", rg.Bytes, want)
	}
	if !(rh.Time <= rg.Time) || !(rg.Time < rr.Time) {
		t.Fatalf("slow link: heads %g s, 2 groups %g s, ring %g s; want fewer bytes faster", rh.Time, rg.Time, rr.Time)
	}
	if len(rh.Ranks) != 4 || !(rh.Efficiency > 0.8) {
		t.Fatalf("heads: %d ranks, efficiency %.3f", len(rh.Ranks), rh.Efficiency)
	}
}
