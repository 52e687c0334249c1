package coordinator

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Issue 20 end to end (real Raft, NATS and the typed fake workers): job a
// runs on four workers, one of which finishes its rank long before the
// others. The queued job b used to start at once on that one worker and
// run there alone; now it waits for its gang.
func TestCoordinatorGangWaitsForStaggeredWorkers(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.MinRankTime = 100 * time.Millisecond })
	nc := connect(t, tc.url)
	tc.leader()
	ws := []*testWorker{newTestWorker(t, tc.url, "fast", 10, 20*time.Millisecond)}
	for _, id := range []string{"w2", "w3", "w4"} {
		ws = append(ws, newTestWorker(t, tc.url, id, 10, 400*time.Millisecond))
	}
	for _, w := range ws {
		w.mu.Lock()
		w.slots = 1 // one rank at a time, as real workers by default
		w.mu.Unlock()
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		r := &pb.ClusterReply{}
		if err := api(nc, EndpointCluster, &pb.ClusterRequest{}, r, time.Second); err != nil {
			return err
		}
		n := 0
		for _, w := range r.Workers {
			if w.Slots == 1 {
				n++
			}
		}
		if n != 4 {
			return fmt.Errorf("%d of %d workers heard with one slot", n, len(r.Workers))
		}
		return nil
	})
	// 8192 causal tokens: about 1.7 s on one 10 GFLOP/s worker, so a gang
	// of 4 (the cluster) by the size rule, and 0.43 s a rank on four (the
	// slow workers take 0.4 s and their output writes; the fast one 20 ms).
	a := submit(t, nc, attnSpec("stagger-a", 8192))
	b := submit(t, nc, attnSpec("stagger-b", 8192))
	fa := waitState(t, nc, a.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 20*time.Second)
	fb := waitState(t, nc, b.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 20*time.Second)
	distinct := func(js *pb.JobStatus) int {
		ws := slices.Clone(js.Workers)
		slices.Sort(ws)
		return len(slices.Compact(ws))
	}
	if fa.Epoch != 1 || distinct(fa) != 4 {
		t.Errorf("a ran epoch %d on %v, want one epoch on all 4 workers", fa.Epoch, fa.Workers)
	}
	// b waits while the slow workers are expected to free soon; it may
	// start on three if the last is late (under load), never on the one
	// that freed first alone (the old greedy start).
	if fb.Epoch != 1 || distinct(fb) < 2 {
		t.Errorf("b ran epoch %d on %v, want one epoch on its gang, not the first free worker alone", fb.Epoch, fb.Workers)
	}
	t.Logf("b ran on %v", fb.Workers)
}
