package coordinator

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestCoordinatorProgressEvents: heartbeats with growing steps_done become
// PROGRESS events summed over the ranks, growing, at most about one a
// second, and ending with done == total before FINISHED; the job status
// and the status page show the same counters while the job runs.
func TestCoordinatorProgressEvents(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	nc := connect(t, tc.url)
	tc.leader()
	var ws []*testWorker
	for _, id := range []string{"wa", "wb"} {
		w := newTestWorker(t, tc.url, id, 10, 3500*time.Millisecond)
		w.mu.Lock()
		w.stepping = true
		w.mu.Unlock()
		ws = append(ws, w)
	}
	waitWorkers(t, nc, 2)
	spec := attnSpec("progress", 1024)
	spec.Parallelism = 2

	var (
		mu     sync.Mutex
		events []*pb.JobEvent
	)
	// Subscribe to every job's events before submitting (the id is not
	// known yet).
	stop, err := nc.OnEvents("", transport.ServeConfig{}, func(ev *pb.JobEvent) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	})
	noErr(t, err)
	defer stop()
	flush(t, nc)
	job := submit(t, nc, spec).Job

	// While it runs, get and the status page show the step counters.
	base := "http://" + tc.nodes[0].HTTPAddr()
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		st := getJob(t, nc, job.Id)
		if st.State != pb.JobState_JOB_STATE_RUNNING || st.StepsTotal != 2000 || st.StepsDone <= 0 {
			return fmt.Errorf("status %v: steps %d of %d", st.State, st.StepsDone, st.StepsTotal)
		}
		page := getStatusPage(t, base)
		jr := row(page, "jobs", job.Id)
		if !strings.Contains(jr, "/2000 steps") {
			return fmt.Errorf("job row lacks the steps: %s", jr)
		}
		if wr := row(page, "workers", "wa"); !stepTimeRE.MatchString(wr) {
			return fmt.Errorf("worker row lacks a step time: %s", wr)
		}
		return nil
	})
	final := waitState(t, nc, job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 20*time.Second)
	// The finished job's row: created time and its GFLOP/s.
	jr := row(getStatusPage(t, base), "jobs", job.Id)
	if !regexp.MustCompile(`<td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>`).MatchString(jr) ||
		!regexp.MustCompile(`<td class="num">\d+\.\d</td>`).MatchString(jr) {
		t.Errorf("finished job row lacks its created time or GFLOP/s: %s", jr)
	}
	if final.StepsTotal != 0 {
		t.Errorf("finished job status: steps %d of %d, want 0 of 0 (only running jobs have them)", final.StepsDone, final.StepsTotal)
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(events) == 0 || events[len(events)-1].Type != pb.JobEventType_JOB_EVENT_TYPE_FINISHED {
			return fmt.Errorf("no FINISHED event yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	var prog []*pb.JobEvent
	for _, ev := range events {
		if ev.Type == pb.JobEventType_JOB_EVENT_TYPE_PROGRESS {
			if ev.JobId != job.Id || ev.Epoch != 1 || ev.State != pb.JobState_JOB_STATE_RUNNING && ev.State != pb.JobState_JOB_STATE_SUCCEEDED {
				t.Fatalf("progress event %v", ev)
			}
			prog = append(prog, ev)
		}
	}
	if len(prog) < 3 {
		t.Fatalf("%d PROGRESS events in a 3.5 s job, want at least 3: %v", len(prog), prog)
	}
	for i, ev := range prog {
		if ev.BlocksTotal != 2000 || ev.BlocksDone < 0 || ev.BlocksDone > ev.BlocksTotal {
			t.Fatalf("event %d: %d of %d steps, want of 2000", i, ev.BlocksDone, ev.BlocksTotal)
		}
		if i == 0 {
			continue
		}
		prev := prog[i-1]
		if ev.BlocksDone <= prev.BlocksDone {
			t.Fatalf("event %d: %d steps after %d: want growing", i, ev.BlocksDone, prev.BlocksDone)
		}
		// At most one a second, but for the final done == total.
		if gap := time.Duration(ev.UnixMs-prev.UnixMs) * time.Millisecond; gap < 950*time.Millisecond && i < len(prog)-1 {
			t.Fatalf("events %d and %d only %v apart", i-1, i, gap)
		}
	}
	last := prog[len(prog)-1]
	if last.BlocksDone != last.BlocksTotal {
		t.Fatalf("last PROGRESS event %d of %d, want done == total", last.BlocksDone, last.BlocksTotal)
	}
	// The final PROGRESS precedes FINISHED.
	for i := len(events) - 1; i >= 0; i-- {
		if events[i].Type == pb.JobEventType_JOB_EVENT_TYPE_PROGRESS {
			if events[i] != last || events[len(events)-1].Type != pb.JobEventType_JOB_EVENT_TYPE_FINISHED {
				t.Fatalf("events end %v, want the final PROGRESS then FINISHED", events[i:])
			}
			break
		}
	}
	_ = ws
}

var stepTimeRE = regexp.MustCompile(`<td class="num">[0-9.]+(µs|ms|s)</td>`)

// TestLeaderJobSteps: the sum over ranks counts finished ranks as done,
// estimates a finished rank never heard of by the others' mean, is unknown
// while an unfinished rank's total is, and bounds hostile counters.
func TestLeaderJobSteps(t *testing.T) {
	l := &leader{progress: map[shardKey]*progressState{}}
	j := &cpb.Job{Id: "j", Epoch: 2, State: pb.JobState_JOB_STATE_RUNNING, Plan: testPlan([]int32{0}, []int32{1}, []int32{2})}
	set := func(r int32, done, total int64) {
		l.progress[shardKey{"j", 2, r}] = &progressState{steps: done, total: total}
	}
	want := func(done, total int64, ok bool) {
		t.Helper()
		d, tot, o := l.jobSteps(j)
		if d != done || tot != total || o != ok {
			t.Fatalf("jobSteps = %d, %d, %v; want %d, %d, %v", d, tot, o, done, total, ok)
		}
	}
	want(0, 0, false)
	set(0, 5, 10)
	set(1, 7, 20)
	want(0, 0, false) // rank 2 unknown and unfinished
	set(2, 0, 30)
	want(12, 60, true)
	j.DoneRanks = []int32{1}
	want(25, 60, true)
	delete(l.progress, shardKey{"j", 2, 1})                              // finished before any heartbeat
	want(5+20, 10+20+30, true)                                           // estimated as mean(10, 30)
	set(0, -4, 1<<62)                                                    // hostile counters
	want(1<<39+15, 1<<40+30+1<<39+15, true)                              // clamped to [0, 1<<40]
	l.progress[shardKey{"j", 1, 0}] = &progressState{steps: 1, total: 1} // an old epoch counts not
	set(0, 3, 3)
	j.DoneRanks = []int32{0, 1, 2}
	want(33+16, 33+16, true)
}
