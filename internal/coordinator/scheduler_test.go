package coordinator

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The scheduler is pure: these tests give decide a snapshot and check its
// decisions, with no Raft, NATS or clock.

var t0 = time.Unix(1_700_000_000, 0)

// idle returns n idle workers w1..wn of 10 GFLOP/s, one slot each.
func idle(n int) []schedWorker {
	var ws []schedWorker
	for i := range n {
		ws = append(ws, schedWorker{ID: fmt.Sprintf("w%d", i+1), Slots: 1, Gflops: 10})
	}
	return ws
}

// queued is a queued job of `secs` seconds on one 10 GFLOP/s worker and
// plenty of blocks.
func queued(id string, seq uint64, secs float64) schedJob {
	return schedJob{ID: id, Seq: seq, Queued: true, Work: secs * 10e9, MaxRanks: 64}
}

// epochs returns the epoch decisions by job.
func epochs(ds []decision) map[string][]string {
	out := map[string][]string{}
	for _, d := range ds {
		if d.Kind == decideEpoch {
			out[d.Job] = d.Workers
		}
	}
	return out
}

func find(ds []decision, job string) (decision, bool) {
	for _, d := range ds {
		if d.Job == job {
			return d, true
		}
	}
	return decision{}, false
}

var policy = schedPolicy{MinRankTime: 100 * time.Millisecond}

// Issue 20: two queued jobs each ran on a single worker (6 s each) while
// two other workers sat idle; the same job on 4 workers took 2.1 s. The
// job ahead finished its ranks at staggered times and each freed worker
// went to the next queued job. Now a queued job waits for its gang when
// the gang frees sooner than one worker would finish it.
func TestSchedulerIssue20NoSingleWorkerWhileGangFreesSoon(t *testing.T) {
	ws := idle(4)
	// Job A runs on w1..w4; w1's rank is done, the others end in 300 ms.
	for i := 1; i < 4; i++ {
		ws[i].Used, ws[i].BusyUntil = 1, t0.Add(300*time.Millisecond)
	}
	a := schedJob{ID: "a", Seq: 1, Work: 1e9, MaxRanks: 64, Epoch: 1, BlocksAll: 64, BlocksDone: 16,
		Ranks: []schedRank{{"w1", true}, {"w2", false}, {"w3", false}, {"w4", false}}}
	in := schedInput{Now: t0, Policy: policy, Workers: ws, Jobs: []schedJob{a, queued("b", 2, 6), queued("c", 3, 6)}}
	ds := decide(in)
	if got := epochs(ds); len(got) != 0 {
		t.Fatalf("started %v while the gang frees in 300 ms (6 s jobs on one worker): %v", got, ds)
	}
	b, _ := find(ds, "b")
	if b.Kind != decideWait || !strings.Contains(b.Reason, "waiting for 4 workers (1 free)") {
		t.Fatalf("b: %v", b)
	}
	// A ended: b takes all four, c waits behind it (it does not take a
	// worker b's gang needs).
	in.Workers, in.Jobs = idle(4), in.Jobs[1:]
	ds = decide(in)
	got := epochs(ds)
	if len(got["b"]) != 4 || got["c"] != nil {
		t.Fatalf("after a: %v", ds)
	}
}

// Two big jobs submitted together do not split the cluster into single
// workers: the first gets the whole gang, the second waits for it.
func TestSchedulerBigJobsRunOneAfterAnother(t *testing.T) {
	in := schedInput{Now: t0, Policy: policy, Workers: idle(4), Jobs: []schedJob{queued("a", 1, 6), queued("b", 2, 6)}}
	ds := decide(in)
	got := epochs(ds)
	if len(got["a"]) != 4 || got["b"] != nil {
		t.Fatalf("decisions %v", ds)
	}
	if d, _ := find(ds, "b"); d.Kind != decideWait {
		t.Fatalf("b: %v", d)
	}
}

// Small jobs share the cluster side by side, one worker each, the
// earlier job on the faster worker.
func TestSchedulerSmallJobsShareWorkers(t *testing.T) {
	ws := idle(4)
	ws[2].Gflops = 40 // w3 fastest
	in := schedInput{Now: t0, Policy: policy, Workers: ws,
		Jobs: []schedJob{queued("a", 1, 0.05), queued("b", 2, 0.05), queued("c", 3, 0.05)}}
	got := epochs(decide(in))
	if len(got) != 3 || !slices.Equal(got["a"], []string{"w3"}) {
		t.Fatalf("epochs %v", got)
	}
	seen := map[string]bool{}
	for _, w := range got {
		if len(w) != 1 || seen[w[0]] {
			t.Fatalf("small jobs not on distinct single workers: %v", got)
		}
		seen[w[0]] = true
	}
}

// The gang follows the job's size at the median measured speed
// (MinRankTime per rank), its block count, the cluster, and a client's
// parallelism (which overrides the size rule).
func TestSchedulerGangSize(t *testing.T) {
	ws := idle(8)
	for _, c := range []struct {
		name string
		job  schedJob
		want int
	}{
		{"tiny", queued("j", 1, 0.01), 1},
		{"0.35 s", queued("j", 1, 0.35), 3},
		{"at the limit", queued("j", 1, 0.4), 4},
		{"big", queued("j", 1, 60), 8},
		{"few blocks", func() schedJob { j := queued("j", 1, 60); j.MaxRanks = 2; return j }(), 2},
		{"parallelism over size", func() schedJob { j := queued("j", 1, 0.01); j.MaxRanks, j.Fixed = 5, true; return j }(), 5},
	} {
		got := epochs(decide(schedInput{Now: t0, Policy: policy, Workers: ws, Jobs: []schedJob{c.job}}))
		if len(got["j"]) != c.want {
			t.Errorf("%s: %d ranks, want %d", c.name, len(got["j"]), c.want)
		}
	}
	// Unknown speeds weigh as the known median; none known: 1 GFLOP/s.
	slow := idle(8)
	for i := range slow {
		slow[i].Gflops = 0
	}
	got := epochs(decide(schedInput{Now: t0, Policy: policy, Workers: slow, Jobs: []schedJob{queued("j", 1, 0.035)}}))
	if len(got["j"]) != 3 { // 0.35 s at 1 GFLOP/s
		t.Errorf("unknown speeds: %v", got)
	}
	// MinRankTime 0: as many ranks as blocks and workers.
	got = epochs(decide(schedInput{Now: t0, Workers: ws, Jobs: []schedJob{queued("j", 1, 0.01)}}))
	if len(got["j"]) != 8 {
		t.Errorf("size rule off: %v", got)
	}
}

// Higher priority first; equal priority in submission order.
func TestSchedulerPriorityThenFIFO(t *testing.T) {
	hi := queued("hi", 9, 6)
	hi.Priority = 5
	in := schedInput{Now: t0, Policy: policy, Workers: idle(4), Jobs: []schedJob{queued("old", 1, 6), queued("new", 2, 6), hi}}
	got := epochs(decide(in))
	if len(got) != 1 || len(got["hi"]) != 4 {
		t.Fatalf("priority: %v", got)
	}
	in.Jobs = []schedJob{queued("new", 2, 6), queued("old", 1, 6)}
	if got := epochs(decide(in)); len(got) != 1 || got["old"] == nil {
		t.Fatalf("fifo: %v", got)
	}
}

// While the head waits for its gang, a later job may use a free worker
// only if it ends before the head's workers free (it never delays the
// head); a longer one waits.
func TestSchedulerBackfillOnlyBeforeReservation(t *testing.T) {
	ws := idle(4)
	for i := 1; i < 4; i++ {
		ws[i].Used, ws[i].BusyUntil = 1, t0.Add(time.Second)
	}
	in := schedInput{Now: t0, Policy: policy, Workers: ws,
		Jobs: []schedJob{queued("head", 1, 8), queued("short", 2, 0.2), queued("long", 3, 5)}}
	ds := decide(in)
	got := epochs(ds)
	if got["head"] != nil || !slices.Equal(got["short"], []string{"w1"}) || got["long"] != nil {
		t.Fatalf("backfill: %v", ds)
	}
	if d, _ := find(ds, "long"); d.Kind != decideWait || !strings.Contains(d.Reason, "behind a job waiting") {
		t.Fatalf("long: %v", d)
	}
}

// When the busy workers free much later than the free ones would finish
// the job, the job starts now on what is free.
func TestSchedulerStartsNowWhenWaitingIsSlower(t *testing.T) {
	ws := idle(4)
	for i := 2; i < 4; i++ {
		ws[i].Used, ws[i].BusyUntil = 1, t0.Add(10*time.Second)
	}
	in := schedInput{Now: t0, Policy: policy, Workers: ws, Jobs: []schedJob{queued("j", 1, 4)}}
	// Now: 4 s over 2 workers = 2 s; waiting: 10 s + 1 s.
	if got := epochs(decide(in)); len(got["j"]) != 2 {
		t.Fatalf("epochs %v", got)
	}
	// A busy worker whose end is unknown cannot be counted on.
	ws[2].BusyUntil, ws[3].BusyUntil = time.Time{}, time.Time{}
	if got := epochs(decide(in)); len(got["j"]) != 2 {
		t.Fatalf("unknown ends: %v", got)
	}
	// Nothing free and nothing known to free: the head waits, and no one
	// overtakes it.
	for i := range ws {
		ws[i].Used = 1
	}
	in.Jobs = append(in.Jobs, queued("k", 2, 0.01))
	ds := decide(in)
	if got := epochs(ds); len(got) != 0 {
		t.Fatalf("full cluster: %v", ds)
	}
}

// Leaving and suspect workers take no ranks; a worker with two slots
// runs ranks of two jobs.
func TestSchedulerWorkerStates(t *testing.T) {
	ws := idle(3)
	ws[0].Leaving, ws[1].Suspect, ws[2].Slots = true, true, 2
	in := schedInput{Now: t0, Policy: policy, Workers: ws, Jobs: []schedJob{queued("a", 1, 0.05), queued("b", 2, 0.05), queued("c", 3, 0.05)}}
	ds := decide(in)
	got := epochs(ds)
	if !slices.Equal(got["a"], []string{"w3"}) || !slices.Equal(got["b"], []string{"w3"}) || got["c"] != nil {
		t.Fatalf("decisions %v", ds)
	}
}

// runningJob is a running job of 4 ranks on w1..w4, rank 0 done.
func runningJob(id string) schedJob {
	return schedJob{ID: id, Seq: 1, Work: 40e9, MaxRanks: 64, Epoch: 2, BlocksAll: 64, BlocksDone: 16,
		Ranks: []schedRank{{"w1", true}, {"w2", false}, {"w3", false}, {"w4", false}}}
}

func busy(ws []schedWorker, ids ...string) []schedWorker {
	for i := range ws {
		if slices.Contains(ids, ws[i].ID) {
			ws[i].Used, ws[i].BusyUntil = 1, t0.Add(time.Second)
		}
	}
	return ws
}

// A running job is re-planned when a rank's worker is gone (or leaving,
// even in the grace period), when a re-plan was asked for, or when every
// rank reported with blocks left; its own ranks' workers count as free,
// and re-plans come before queued jobs.
func TestSchedulerReplans(t *testing.T) {
	// w3 gone: re-plan over w1, w2, w4 (own) and w5 (free); the queued
	// job waits.
	ws := busy(idle(5), "w2", "w4")
	ws = slices.DeleteFunc(ws, func(w schedWorker) bool { return w.ID == "w3" })
	in := schedInput{Now: t0, Policy: policy, Workers: ws, Jobs: []schedJob{queued("q", 0, 60), runningJob("r")}}
	ds := decide(in)
	if len(ds) == 0 || ds[0].Job != "r" || ds[0].Kind != decideEpoch || ds[0].Reason != "worker w3 of rank 2 is gone" || len(ds[0].Workers) != 4 {
		t.Fatalf("gone worker: %v", ds)
	}
	if got := epochs(ds); got["q"] != nil {
		t.Fatalf("queued job took a worker of the re-plan: %v", ds)
	}
	// In the grace period a missing worker may still be alive; a leaving
	// one is not.
	in.Grace, in.Jobs = true, []schedJob{runningJob("r")}
	if ds := decide(in); len(ds) != 0 {
		t.Fatalf("grace: %v", ds)
	}
	in.Workers = busy(idle(4), "w2", "w3", "w4")
	in.Workers[3].Leaving = true
	if ds := decide(in); len(ds) != 1 || ds[0].Reason != "worker w4 of rank 3 is leaving" || len(ds[0].Workers) != 3 {
		t.Fatalf("leaving in grace: %v", ds)
	}
	// Asked for; and every rank reported with blocks left.
	in.Grace, in.Workers = false, busy(idle(4), "w2", "w3", "w4")
	r := runningJob("r")
	r.Replan, r.Reason = true, "rank 1 on worker w2: oom"
	in.Jobs = []schedJob{r}
	if ds := decide(in); len(ds) != 1 || ds[0].Reason != r.Reason || ds[0].Kind != decideEpoch {
		t.Fatalf("asked: %v", ds)
	}
	r = runningJob("r")
	for i := range r.Ranks {
		r.Ranks[i].Done = true
	}
	in.Jobs, in.Workers = []schedJob{r}, idle(4)
	if ds := decide(in); len(ds) != 1 || ds[0].Reason != "epoch 2 ended with 16 of 64 blocks done" {
		t.Fatalf("epoch ended: %v", ds)
	}
	// No worker free at all (its own are gone): the re-plan waits.
	in.Jobs, in.Workers = []schedJob{runningJob("r")}, busy(idle(6)[4:], "w5", "w6")
	if ds := decide(in); len(ds) != 1 || ds[0].Kind != decideWait || ds[0].Reason != "worker w2 of rank 1 is gone" {
		t.Fatalf("no free worker: %v", ds)
	}
	// Healthy: nothing to do.
	in.Workers = busy(idle(4), "w2", "w3", "w4")
	if ds := decide(in); len(ds) != 0 {
		t.Fatalf("healthy: %v", ds)
	}
}

// Deadlines fail queued and running jobs, at the deadline and not a
// millisecond before.
func TestSchedulerDeadlines(t *testing.T) {
	q := queued("q", 1, 1)
	q.Deadline = t0
	r := runningJob("r")
	r.Deadline = t0
	in := schedInput{Now: t0, Policy: policy, Workers: busy(idle(4), "w2", "w3", "w4"), Jobs: []schedJob{q, r}}
	ds := decide(in)
	want := map[string]string{"q": "deadline exceeded while queued", "r": "deadline exceeded in epoch 2 (16 of 64 blocks done)"}
	for id, reason := range want {
		if d, ok := find(ds, id); !ok || d.Kind != decideFail || d.Reason != reason {
			t.Errorf("%s: %v", id, d)
		}
	}
	in.Now = t0.Add(-time.Millisecond)
	for _, d := range decide(in) {
		if d.Kind == decideFail {
			t.Errorf("before the deadline: %v", d)
		}
	}
}

// The job size estimate: a causal mask keeps about half the pairs, a
// window its width, documents the sum of their squares; backward passes
// cost more.
func TestSchedulerJobFLOPs(t *testing.T) {
	base := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 8, Hkv: 8, D: 128, N: 4096, Nk: 4096}
	full := jobFLOPs(base)
	if want := 4.0 * 8 * 128 * 4096 * 4096; full != want {
		t.Fatalf("full: %g, want %g", full, want)
	}
	with := func(m *pb.Mask, mode pb.JobMode) float64 {
		s := proto.CloneOf(base)
		s.Mask, s.Mode = m, mode
		return jobFLOPs(s) / full
	}
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"causal", with(&pb.Mask{Causal: true}, 0), 0.5},
		{"window", with(&pb.Mask{Windowed: true, WindowLeft: 511, WindowRight: 512}, 0), 1024.0 / 4096},
		{"unbounded window", with(&pb.Mask{Windowed: true, WindowLeft: -1, WindowRight: -1}, 0), 1},
		{"docs", with(&pb.Mask{Seqlens: []int64{2048, 2048}}, 0), 0.5},
		{"backward", with(nil, pb.JobMode_JOB_MODE_BACKWARD), 2.5},
		{"forward+backward", with(nil, pb.JobMode_JOB_MODE_FORWARD_BACKWARD), 3.5},
	} {
		if math.Abs(c.got-c.want) > 0.01 {
			t.Errorf("%s: %.4f of full, want %.4f", c.name, c.got, c.want)
		}
	}
	if f := jobFLOPs(&pb.JobSpec{N: -5, Nk: 3}); f != 0 {
		t.Errorf("negative sizes: %g", f)
	}
}

// A busy worker whose ranks are overdue is expected as late again as it
// is already late: a little late, the job still waits for its gang; very
// late, it starts on the free workers.
func TestSchedulerOverdueWorkers(t *testing.T) {
	for _, c := range []struct {
		late  time.Duration
		ranks int
	}{{100 * time.Millisecond, 0}, {5 * time.Second, 1}} {
		ws := idle(4)
		for i := 1; i < 4; i++ {
			ws[i].Used, ws[i].BusyUntil = 1, t0.Add(-c.late)
		}
		// 1 s on one worker: 0.25 s on four.
		got := epochs(decide(schedInput{Now: t0, Policy: policy, Workers: ws, Jobs: []schedJob{queued("j", 1, 1)}}))
		if len(got["j"]) != c.ranks {
			t.Errorf("%v overdue: %v, want %d ranks now", c.late, got, c.ranks)
		}
	}
}
