package ringattn_test

import (
	"context"
	"runtime"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// TestRingOneTokenBlocksMemory: a job of one-token blocks (allowed up to
// shard's MaxBlocks) keeps the rank's bookkeeping linear in the blocks. The
// engine once kept a row of every key block's pair count for each owned
// query block, plus a visibility flag row per run: at N = 4096, block 1 and
// two striped ranks that was 144 MiB, at N = 65536 about 16 GiB a rank.
// The result is still exact.
func TestRingOneTokenBlocksMemory(t *testing.T) {
	const n = 4096
	pr := newProblem("one-token-blocks", 1, 1, 1, n, n, 2, kernels.Mask{Causal: true}, 41)
	for _, s := range []shard.Strategy{shard.Striped, shard.Contiguous} {
		plan := pr.plan(t, pr.request(2, 1, s))
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		o, lse, err := ringattn.RunLocal(context.Background(), &pr.p, plan, pr.q, pr.k, pr.v)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		pr.check(t, string(s), o, lse)
		// What is linear in the blocks: states, frames, pair counters,
		// a few hundred bytes per block. 64 MiB is far below the old
		// quadratic 144 MiB and far above the linear figure.
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%s: %d blocks, %.1f MiB allocated", s, n, float64(alloc)/(1<<20))
		if raceEnabled {
			// ~250 MiB striped: the kernels' pooled scratch, dropped at
			// random by sync.Pool under the race detector. The bound
			// is checked by the ordinary test run.
			continue
		}
		if alloc > 64<<20 {
			t.Errorf("%s: the ranks allocated %.1f MiB for %d one-token blocks: want it linear in the blocks (< 64 MiB)", s, float64(alloc)/(1<<20), n)
		}
	}
}
