package coordinator

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// epochPlan returns the plan of a job's epoch as recorded by worker
// assignments: rank -> query blocks.
func jobRecord(t *testing.T, tc *testCluster, i int, id string) *cpb.Job {
	t.Helper()
	j := tc.nodes[i].State().Job(id)
	if j == nil {
		t.Fatalf("job %s not in node %d's state", id, i)
	}
	return j
}

func TestCoordinatorWorkerDiesReplansUnfinished(t *testing.T) {
	tc := newCluster(t, 1, nil)
	nc := connect(t, tc.url)
	ld := tc.leader()
	fast := newTestWorker(t, tc.url, "fast", 20, 10*time.Millisecond)
	slow := newTestWorker(t, tc.url, "slow", 10, time.Hour) // never finishes
	waitWorkers(t, nc, 2)

	r := submit(t, nc, attnSpec("die", 64*20))
	// Wait for epoch 1 with both workers, and fast's rank done.
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		j := tc.nodes[ld].State().Job(r.Job.Id)
		if j.GetEpoch() != 1 || len(j.Plan.GetRanks()) != 2 || len(j.DoneRanks) != 1 {
			return fmt.Errorf("job %v", j)
		}
		return nil
	})
	e1 := jobRecord(t, tc, ld, r.Job.Id)
	slowRank := slices.IndexFunc(e1.Plan.Ranks, func(rk *pb.RankPlan) bool { return rk.WorkerId == "slow" })
	unfinished := slices.Clone(e1.Plan.Ranks[slowRank].QBlocks)
	slices.Sort(unfinished)
	if len(slow.assignments()) != 1 {
		t.Fatalf("slow worker assignments: %v", slow.assignments())
	}
	killed := time.Now()
	slow.kill()
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	t.Logf("worker death to job done: %v (heartbeat timeout %v)", time.Since(killed), tc.cfgs[0].HeartbeatTimeout)
	if js.Epoch != 2 || js.BlocksDone != 20 || !slices.Equal(js.Workers, []string{"fast"}) {
		t.Fatalf("after re-plan: %v", js)
	}
	// Epoch 2 planned exactly the blocks the dead worker had not finished.
	var e2 []int32
	for k := range fast.assignments() {
		if k.epoch == 2 {
			e2 = append(e2, jobRecord(t, tc, ld, r.Job.Id).Plan.Ranks[k.rank].QBlocks...)
		}
	}
	slices.Sort(e2)
	if !slices.Equal(e2, unfinished) {
		t.Fatalf("epoch 2 re-planned blocks %v, want the unfinished %v", e2, unfinished)
	}
}

func TestCoordinatorWorkerLeavesReplansAtOnce(t *testing.T) {
	// A heartbeat timeout far longer than the test: only the explicit
	// leave can trigger the re-plan.
	tc := newCluster(t, 1, func(c *Config) { c.HeartbeatTimeout = time.Minute })
	nc := connect(t, tc.url)
	ld := tc.leader()
	newTestWorker(t, tc.url, "stay", 20, 10*time.Millisecond)
	leaver := newTestWorker(t, tc.url, "leaver", 10, time.Hour)
	waitWorkers(t, nc, 2)
	r := submit(t, nc, attnSpec("leave", 64*8))
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if len(leaver.assignments()) != 1 {
			return fmt.Errorf("leaver has %d assignments", len(leaver.assignments()))
		}
		return nil
	})
	leaver.leave()
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	if js.Epoch != 2 || !slices.Equal(js.Workers, []string{"stay"}) {
		t.Fatalf("after leave: %v", js)
	}
	if n := metricValue(t, tc.nodes[ld], "ringattn_replans_total"); n != 1 {
		t.Fatalf("ringattn_replans_total = %v, want 1", n)
	}
}

func TestCoordinatorShardFailures(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.MaxEpochs = 3 })
	nc := connect(t, tc.url)
	tc.leader()
	w := newTestWorker(t, tc.url, "w", 10, 10*time.Millisecond)

	// A fatal failure fails the job, naming the rank, worker and reason.
	w.set(10*time.Millisecond, "NaN in q block 3", true)
	r := submit(t, nc, attnSpec("fatal", 256))
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_FAILED, 10*time.Second)
	if !strings.Contains(js.Reason, "NaN in q block 3") || !strings.Contains(js.Reason, "worker w") || js.Epoch != 1 {
		t.Fatalf("fatal failure: %v", js)
	}
	// A non-fatal failure re-plans; a worker that always fails exhausts
	// MaxEpochs and the job fails saying so.
	w.set(10*time.Millisecond, "out of memory", false)
	r = submit(t, nc, attnSpec("flaky", 256))
	js = waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_FAILED, 20*time.Second)
	if js.Epoch != 3 || !strings.Contains(js.Reason, "gave up after 3 epochs") || !strings.Contains(js.Reason, "out of memory") {
		t.Fatalf("flaky worker: %v", js)
	}
	// Recovered worker: the next job runs.
	w.set(10*time.Millisecond, "", false)
	r = submit(t, nc, attnSpec("ok", 256))
	waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
}

func TestCoordinatorCancelRunningAndDeadline(t *testing.T) {
	tc := newCluster(t, 1, nil)
	nc := connect(t, tc.url)
	tc.leader()
	w := newTestWorker(t, tc.url, "w", 10, time.Hour)
	r := submit(t, nc, attnSpec("cancel", 256))
	waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_RUNNING, 10*time.Second)
	c := apiRetry(t, nc, EndpointCancel, &pb.CancelRequest{JobId: r.Job.Id}, func() *pb.CancelReply { return &pb.CancelReply{} })
	if c.Error != nil || c.Job.State != pb.JobState_JOB_STATE_CANCELED || c.Job.Reason != "canceled by client" {
		t.Fatalf("cancel: %v", c)
	}
	// The worker is told to drop the shard through its heartbeat ack.
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, ref := range w.aborted {
			if ref.JobId == r.Job.Id {
				return nil
			}
		}
		return fmt.Errorf("no abort for %s yet", r.Job.Id)
	})
	// Canceling a finished job is a precondition failure.
	w2 := newTestWorker(t, tc.url, "w2", 50, 5*time.Millisecond)
	_ = w2
	done := submit(t, nc, attnSpec("done", 64))
	waitState(t, nc, done.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	c = apiRetry(t, nc, EndpointCancel, &pb.CancelRequest{JobId: done.Job.Id}, func() *pb.CancelReply { return &pb.CancelReply{} })
	if c.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION {
		t.Fatalf("cancel finished job: %v", c)
	}
	// Deadlines: a job that cannot finish in time fails saying why.
	spec := attnSpec("late", 64*64)
	spec.DeadlineUnixMs = time.Now().Add(300 * time.Millisecond).UnixMilli()
	w2.set(time.Hour, "", false)
	w.kill()
	late := submit(t, nc, spec)
	js := waitState(t, nc, late.Job.Id, pb.JobState_JOB_STATE_FAILED, 10*time.Second)
	if !strings.Contains(js.Reason, "deadline exceeded") {
		t.Fatalf("deadline: %v", js)
	}
}

type recordingDeleter struct {
	mu   sync.Mutex
	jobs []string
	fail int
}

func (d *recordingDeleter) DeleteJob(_ context.Context, job string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail > 0 {
		d.fail--
		return fmt.Errorf("store unavailable")
	}
	d.jobs = append(d.jobs, job)
	return nil
}

func TestCoordinatorExpiry(t *testing.T) {
	del := &recordingDeleter{fail: 1}
	tc := newCluster(t, 1, func(c *Config) {
		c.JobTTL = 200 * time.Millisecond
		c.TombstoneTTL = 300 * time.Millisecond
	})
	// Restart the node with the tensor deleter injected.
	tc.stop(0)
	tc.restartWith(0, del)
	nc := connect(t, tc.url)
	tc.leader()
	newTestWorker(t, tc.url, "w", 10, 5*time.Millisecond)
	a := submit(t, nc, attnSpec("exp-a", 128))
	b := submit(t, nc, attnSpec("exp-b", 128))
	waitState(t, nc, a.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	waitState(t, nc, b.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	// Both expire (the first deletion attempt fails and is retried), then
	// the tombstones are purged.
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		g := apiRetry(t, nc, EndpointGet, &pb.GetRequest{JobId: a.Job.Id}, func() *pb.GetReply { return &pb.GetReply{} })
		if g.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND {
			return fmt.Errorf("job a: %v %v", g.GetJob().GetState(), g.GetError())
		}
		// b finished a little later: its tombstone may outlive a's.
		if n := tc.nodes[0].State().Len(); n != 0 {
			return fmt.Errorf("%d records left after purge", n)
		}
		return nil
	})
	del.mu.Lock()
	got := slices.Clone(del.jobs)
	del.mu.Unlock()
	slices.Sort(got)
	want := []string{a.Job.Id, b.Job.Id, "in-exp-a", "in-exp-b"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("deleted %v, want %v (each job's outputs and inputs once)", got, want)
	}
}
