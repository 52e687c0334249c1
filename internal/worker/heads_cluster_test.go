package worker

import (
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestWorkerClusterHeadPlans runs head-group plans on four workers: pure
// head parallelism and auto (whatever its cost model picks); each worker
// reads its blocks, computes its heads, and each output block's writer
// gathers the other groups' heads and writes the block whole. Exact
// against float64.
func TestWorkerClusterHeadPlans(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2", "w3"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	heads := newAttnJob(5, 1, 8, 4, 700, 700, 32, 128, true)
	heads.spec.Strategy = "heads"
	auto := newAttnJob(6, 2, 8, 4, 650, 650, 16, 100, true)
	for name, j := range map[string]*attnJob{"heads": heads, "auto": auto} {
		id := c.submit(j, "in-"+name)
		st := c.wait(id, 60*time.Second)
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("%s: job %v: %s", name, st.GetState(), st.GetReason())
		}
		if (name == "heads" && st.GetStrategy() != "heads") || len(st.GetWorkers()) != 4 {
			t.Fatalf("%s: %s plan over %v, want 4 workers (heads when asked)", name, st.GetStrategy(), st.GetWorkers())
		}
		t.Logf("%s: %s plan over %v", name, st.GetStrategy(), st.GetWorkers())
		c.check(id, j)
	}
}

// TestWorkerKilledMidHeadPlan kills a worker held after its step of a
// 2-group heads plan, before it hands its heads on: the leader re-plans
// the unfinished blocks of both groups over the others and the result is
// exact.
func TestWorkerKilledMidHeadPlan(t *testing.T) {
	c := newTestCluster(t, 1500*time.Millisecond)
	ids := []string{"w0", "w1", "w2", "w3"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	c.setStepHook(holdAt(func(_ *testWorker, epoch uint64, rank int) bool { return epoch == 1 && rank == 1 }, held))
	j := newAttnJob(7, 1, 4, 2, 700, 700, 16, 64, true)
	j.spec.Strategy = "heads" // 2 groups (Hkv = 2), one rank each
	id := c.submit(j, "in-kill-heads")
	var victim string
	select {
	case victim = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("rank 1 never reached ring step 1")
	}
	tw := c.workers[victim]
	tw.cancel()
	if err := <-tw.done; err != nil {
		t.Fatalf("killed worker's Run: %v", err)
	}
	st := c.wait(id, 60*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || st.GetEpoch() < 2 || st.GetStrategy() != "heads" {
		t.Fatalf("job %v in epoch %d: %s; want SUCCEEDED after a re-plan", st.GetState(), st.GetEpoch(), st.GetReason())
	}
	t.Logf("killed %s; finished in epoch %d on %v (%s)", victim, st.GetEpoch(), st.GetWorkers(), st.GetStrategy())
	c.check(id, j)
}

// TestWorkerClusterHeadPlansBackward runs forward+backward and backward
// jobs with strategy heads on four workers (Hkv = 2: two groups): the
// writers of dQ and dK/dV blocks gather the other group's heads; the
// gradients (and the forward's o, lse) are exact.
func TestWorkerClusterHeadPlansBackward(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2", "w3"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	for _, mode := range []pb.JobMode{pb.JobMode_JOB_MODE_FORWARD_BACKWARD, pb.JobMode_JOB_MODE_BACKWARD} {
		j := newGradJob(8, mode)
		j.spec.Strategy = "heads"
		id := c.submitGrad(j, "in-heads-"+mode.String()[9:])
		st := c.wait(id, 90*time.Second)
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || st.GetStrategy() != "heads" {
			t.Fatalf("%v job %v (%s plan): %s", mode, st.GetState(), st.GetStrategy(), st.GetReason())
		}
		if want := int64(11 + 11); st.GetBlocksTotal() != want || st.GetBlocksDone() != want {
			t.Fatalf("%v job: %d of %d blocks, want %d", mode, st.GetBlocksDone(), st.GetBlocksTotal(), want)
		}
		c.checkGrads(id, j)
		if mode == pb.JobMode_JOB_MODE_FORWARD_BACKWARD {
			c.check(id, j.attnJob)
		}
		t.Logf("%v: %s plan over %v in %d epochs", mode, st.GetStrategy(), st.GetWorkers(), st.GetEpoch())
	}
}

// TestWorkerKilledMidHeadBackward kills the worker of rank 1 of a heads
// plan's backward epoch after its step: the re-plan (done blocks as units
// of both groups) finishes the gradients exactly.
func TestWorkerKilledMidHeadBackward(t *testing.T) {
	c := newTestCluster(t, 1500*time.Millisecond)
	ids := []string{"w0", "w1", "w2", "w3"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	c.setStepHook(holdAt(func(_ *testWorker, epoch uint64, rank int) bool { return epoch == 1 && rank == 1 }, held))
	j := newGradJob(9, pb.JobMode_JOB_MODE_BACKWARD)
	j.spec.Strategy = "heads"
	id := c.submitGrad(j, "in-kill-heads-bwd")
	var victim string
	select {
	case victim = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("rank 1 never reached ring step 1")
	}
	tw := c.workers[victim]
	tw.cancel()
	if err := <-tw.done; err != nil {
		t.Fatalf("killed worker's Run: %v", err)
	}
	st := c.wait(id, 90*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || st.GetEpoch() < 2 {
		t.Fatalf("job %v in epoch %d: %s; want SUCCEEDED after a re-plan", st.GetState(), st.GetEpoch(), st.GetReason())
	}
	t.Logf("killed %s; finished in epoch %d on %v (%s)", victim, st.GetEpoch(), st.GetWorkers(), st.GetStrategy())
	c.checkGrads(id, j)
}
