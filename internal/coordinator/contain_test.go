package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// panicOn is a plan hook that panics for jobs of one idempotency key.
func panicOn(key string) *hooks {
	return &hooks{plan: func(j *cpb.Job) {
		if j.GetSpec().GetIdempotencyKey() == key {
			panic("planner exploded on " + key)
		}
	}}
}

// A job that makes the planner panic fails with the panic as its reason;
// the leader survives, other jobs run, and the next leader does not plan
// (and panic on) the failed job again.
func TestCoordinatorPlanPanicFailsOnlyThatJob(t *testing.T) {
	tc := newCluster(t, 3, nil)
	tc.setHooks(panicOn("boom"))
	nc := connect(t, tc.url)
	ld := tc.leader()
	newTestWorker(t, tc.url, "w1", 10, 10*time.Millisecond)
	newTestWorker(t, tc.url, "w2", 20, 10*time.Millisecond)
	waitWorkers(t, nc, 2)

	boom := submit(t, nc, attnSpec("boom", 256))
	ok := submit(t, nc, attnSpec("fine", 256))
	js := waitState(t, nc, boom.Job.Id, pb.JobState_JOB_STATE_FAILED, 10*time.Second)
	if !strings.Contains(js.Reason, "internal error while planning: planner exploded on boom") {
		t.Fatalf("reason = %q", js.Reason)
	}
	waitState(t, nc, ok.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	if got := tc.leader(); got != ld {
		t.Fatalf("leader changed from %d to %d", ld, got)
	}
	if n := metricLabel(t, tc.nodes[ld], "ringattn_coordinator_panics_total", "where", "planning"); n != 1 {
		t.Fatalf("panics{where=planning} = %v, want 1", n)
	}
	// The failure is in the log: a new leader sees a FAILED job, not one
	// to plan.
	tc.kill(ld)
	next := tc.leader()
	again := submit(t, nc, attnSpec("after", 256))
	waitState(t, nc, again.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	if n := metricLabel(t, tc.nodes[next], "ringattn_coordinator_panics_total", "where", "planning"); n != 0 {
		t.Fatalf("new leader panicked %v times", n)
	}
	if st := getJob(t, nc, boom.Job.Id); st.State != pb.JobState_JOB_STATE_FAILED {
		t.Fatalf("boom after leader change: %v", st)
	}
}

// A plan that takes longer than PlanTimeout fails its job saying so.
func TestCoordinatorPlanTimeout(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.PlanTimeout = 200 * time.Millisecond })
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	tc.setHooks(&hooks{plan: func(j *cpb.Job) {
		if j.GetSpec().GetIdempotencyKey() == "slow" {
			<-release
		}
	}})
	nc := connect(t, tc.url)
	tc.leader()
	newTestWorker(t, tc.url, "w", 10, 10*time.Millisecond)
	waitWorkers(t, nc, 1)
	slow := submit(t, nc, attnSpec("slow", 256))
	js := waitState(t, nc, slow.Job.Id, pb.JobState_JOB_STATE_FAILED, 10*time.Second)
	if !strings.Contains(js.Reason, "planning took longer than 200ms") {
		t.Fatalf("reason = %q", js.Reason)
	}
	ok := submit(t, nc, attnSpec("quick", 256))
	waitState(t, nc, ok.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
}

// A leader steps down (here: closes) without waiting for a plan in
// progress.
func TestCoordinatorStepDownDoesNotWaitForPlanning(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.PlanTimeout = time.Hour })
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var entered atomic.Bool
	tc.setHooks(&hooks{plan: func(*cpb.Job) {
		entered.Store(true)
		<-release
	}})
	nc := connect(t, tc.url)
	tc.leader()
	newTestWorker(t, tc.url, "w", 10, 10*time.Millisecond)
	waitWorkers(t, nc, 1)
	submit(t, nc, attnSpec("stuck", 256))
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !entered.Load() {
			return fmt.Errorf("planning not started")
		}
		return nil
	})
	start := time.Now()
	tc.stop(0)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closing the leader took %v while a plan hung", d)
	}
}

// A panic in an API handler answers that request with an internal error;
// the leader goes on serving.
func TestCoordinatorAPIPanicContained(t *testing.T) {
	tc := newCluster(t, 1, nil)
	tc.setHooks(&hooks{api: func(endpoint string, data []byte) {
		if endpoint == EndpointGet {
			panic("get exploded")
		}
	}})
	nc := connect(t, tc.url)
	ld := tc.leader()
	r := apiRetry(t, nc, EndpointGet, &pb.GetRequest{JobId: "j-x"}, func() *pb.GetReply { return &pb.GetReply{} })
	if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INTERNAL || !strings.Contains(r.GetError().GetMessage(), "internal error while serving get") {
		t.Fatalf("get: %v", r.GetError())
	}
	s := submit(t, nc, attnSpec("still-serving", 256))
	if s.Job.State != pb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("submit after panic: %v", s)
	}
	if n := metricLabel(t, tc.nodes[ld], "ringattn_coordinator_panics_total", "where", "api_get"); n != 1 {
		t.Fatalf("panics{where=api_get} = %v, want 1", n)
	}
	if got := tc.leader(); got != ld {
		t.Fatal("leader changed")
	}
}

// A worker heartbeating a speed of +Inf is planned with a default weight;
// the job succeeds (it used to fail: the planner refuses an infinite
// weight).
func TestCoordinatorHeartbeatInfiniteSpeed(t *testing.T) {
	tc := newCluster(t, 1, nil)
	nc := connect(t, tc.url)
	tc.leader()
	newTestWorker(t, tc.url, "inf", math.Inf(1), 10*time.Millisecond)
	newTestWorker(t, tc.url, "w1", 10, 10*time.Millisecond)
	newTestWorker(t, tc.url, "w2", 20, 10*time.Millisecond)
	waitWorkers(t, nc, 3)
	spec := attnSpec("inf", 64*12)
	spec.Parallelism = 3
	r := submit(t, nc, spec)
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	if !slices.Contains(js.Workers, "inf") || js.BlocksDone != 12 {
		t.Fatalf("job: %v", js)
	}
	cl := &pb.ClusterReply{}
	noErr(t, api(nc, EndpointCluster, &pb.ClusterRequest{}, cl, time.Second))
	for _, w := range cl.Workers {
		if w.Id == "inf" && w.Gflops != 0 {
			t.Fatalf("registry keeps speed %v for worker inf, want 0 (unknown)", w.Gflops)
		}
	}
}

func TestCoordinatorSanitizeHeartbeat(t *testing.T) {
	for _, c := range []struct {
		gflops float64
		bad    bool
	}{
		{math.Inf(1), true}, {math.Inf(-1), true}, {math.NaN(), true}, {-1, true}, {0, true}, {1e300, true},
		{maxGflops, false}, {math.Nextafter(maxGflops, math.Inf(1)), true}, {1e-3, false}, {55.5, false},
	} {
		hb := &pb.Heartbeat{WorkerId: "w", Gflops: c.gflops}
		bad, _ := sanitizeHeartbeat(hb)
		want := c.gflops
		if c.bad {
			want = 0
		}
		if bad != c.bad || hb.Gflops != want {
			t.Errorf("gflops %v: bad %v, kept %v; want bad %v, kept %v", c.gflops, bad, hb.Gflops, c.bad, want)
		}
	}
	for _, c := range []struct{ in, want int32 }{{-5, 0}, {0, 0}, {maxSlots, maxSlots}, {maxSlots + 1, maxSlots}, {math.MaxInt32, maxSlots}} {
		hb := &pb.Heartbeat{Slots: c.in, Gflops: 1}
		sanitizeHeartbeat(hb)
		if hb.Slots != c.want {
			t.Errorf("slots %d: kept %d, want %d", c.in, hb.Slots, c.want)
		}
	}
	refs := func(n int) []*pb.ShardRef {
		var out []*pb.ShardRef
		for i := range n {
			out = append(out, &pb.ShardRef{JobId: "j", Epoch: 1, Rank: int32(i)})
		}
		return out
	}
	for _, n := range []int{maxRunning, maxRunning + 1} {
		hb := &pb.Heartbeat{Gflops: 1, Running: refs(n)}
		_, dropped := sanitizeHeartbeat(hb)
		if len(hb.Running) != maxRunning || dropped != n-maxRunning {
			t.Errorf("%d refs: kept %d, dropped %d", n, len(hb.Running), dropped)
		}
	}
	hb := &pb.Heartbeat{Gflops: 1, Version: strings.Repeat("é", 100), Running: []*pb.ShardRef{
		{JobId: "ok", Rank: 0}, {JobId: "ok", Rank: 0}, {JobId: "a.b", Rank: 0}, {JobId: "", Rank: 1}, {JobId: "ok", Rank: -1}, nil,
	}}
	_, dropped := sanitizeHeartbeat(hb)
	if len(hb.Running) != 1 || dropped != 5 || len(hb.Version) > maxVersionBytes {
		t.Fatalf("kept %v (dropped %d), version %d bytes", hb.Running, dropped, len(hb.Version))
	}
	if _, err := proto.Marshal(hb); err != nil {
		t.Fatalf("sanitized heartbeat does not encode: %v", err)
	}
}

// sendReport sends one report as a worker would and returns the ack.
func sendReport(t *testing.T, nc *transport.Conn, rep *pb.Report) *pb.ReportAck {
	t.Helper()
	var a *pb.ReportAck
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		if a, err = nc.Report(ctx, rep); err != nil {
			return err
		}
		if a.Status == pb.ReportStatus_REPORT_STATUS_RETRY {
			return fmt.Errorf("retry: %s", a.Message)
		}
		return nil
	})
	return a
}

// Reports must come from the worker the rank is assigned to: a report
// naming another worker, or none, is refused and changes nothing.
func TestCoordinatorReportOwnership(t *testing.T) {
	tc := newCluster(t, 1, nil)
	nc := connect(t, tc.url)
	ld := tc.leader()
	g := &gate{}
	g.shut()
	t.Cleanup(g.open)
	w := newTestWorker(t, tc.url, "w1", 10, 10*time.Millisecond)
	w.gate = g
	waitWorkers(t, nc, 1)
	r := submit(t, nc, attnSpec("owned", 256))
	waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_RUNNING, 10*time.Second)
	j := tc.nodes[ld].State().Job(r.Job.Id)
	done := &pb.Report_Done{Done: &pb.ShardDone{}}
	for _, b := range j.Plan.Ranks[0].QBlocks {
		done.Done.Blocks = append(done.Done.Blocks, &pb.BlockChecksum{Block: b})
	}
	for _, c := range []struct {
		name string
		rep  *pb.Report
		msg  string
	}{
		{"other worker", &pb.Report{WorkerId: "mallory", JobId: j.Id, Epoch: 1, Rank: 0, Result: done},
			"rank 0 of job " + j.Id + " epoch 1 is assigned to worker w1, not mallory"},
		{"no worker", &pb.Report{JobId: j.Id, Epoch: 1, Rank: 0, Result: done}, "worker_id: empty"},
		{"other worker fails it", &pb.Report{WorkerId: "mallory", JobId: j.Id, Epoch: 1, Rank: 0,
			Result: &pb.Report_Failed{Failed: &pb.ShardFailed{Reason: "sabotage", Fatal: true, Block: -1}}}, "not mallory"},
		{"block not owned", &pb.Report{WorkerId: "w1", JobId: j.Id, Epoch: 1, Rank: 0,
			Result: &pb.Report_Done{Done: &pb.ShardDone{Blocks: []*pb.BlockChecksum{{Block: 99}}}}}, "block 99, which the rank does not own"},
		{"rank out of range", &pb.Report{WorkerId: "w1", JobId: j.Id, Epoch: 1, Rank: 7, Result: done}, "rank 7 outside [0,1)"},
	} {
		a := sendReport(t, nc, c.rep)
		if a.Status != pb.ReportStatus_REPORT_STATUS_REJECTED || !strings.Contains(a.Message, c.msg) {
			t.Errorf("%s: ack %v %q, want REJECTED containing %q", c.name, a.Status, a.Message, c.msg)
		}
	}
	if st := tc.nodes[ld].State().Job(j.Id); st.State != pb.JobState_JOB_STATE_RUNNING || len(st.DoneBlocks) != 0 {
		t.Fatalf("refused reports changed the job: %v", st)
	}
	if n := metricValue(t, tc.nodes[ld], "ringattn_reports_refused_total"); n != 5 {
		t.Fatalf("reports_refused_total = %v, want 5", n)
	}
	g.open()
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	if js.BlocksDone != 4 {
		t.Fatalf("job: %v", js)
	}
}

// A retried submit (same key) that uploaded under a new namespace is the
// same job; a submit naming the inputs of another live job is refused.
func TestCoordinatorSubmitInputRef(t *testing.T) {
	tc := newCluster(t, 1, nil)
	nc := connect(t, tc.url)
	tc.leader()
	first := attnSpec("k1", 256)
	first.InputRef = "up-a"
	a := submit(t, nc, first)
	retry := attnSpec("k1", 256)
	retry.InputRef = "up-b"
	again := submit(t, nc, retry)
	if !again.Existing || again.Job.Id != a.Job.Id || again.Job.Spec.InputRef != "up-a" {
		t.Fatalf("retry with a fresh namespace: %v", again)
	}
	// The conflict check still sees the rest of the spec.
	other := attnSpec("k1", 512)
	other.InputRef = "up-c"
	r := apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: other}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
	if r.GetError().GetField() != "spec.idempotency_key" {
		t.Fatalf("changed spec under the same key: %v", r)
	}
	for _, key := range []string{"k2", ""} {
		s := attnSpec(key, 256)
		s.InputRef = "up-a"
		r := apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: s}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
		e := r.GetError()
		if e.GetCode() != pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION || e.GetField() != "spec.input_ref" ||
			!strings.Contains(e.GetMessage(), "in use by job "+a.Job.Id) {
			t.Fatalf("key %q reusing up-a: %v", key, r)
		}
	}
	// Canceled is not expired: the namespace stays taken.
	c := apiRetry(t, nc, EndpointCancel, &pb.CancelRequest{JobId: a.Job.Id}, func() *pb.CancelReply { return &pb.CancelReply{} })
	noErr(t, errOf(c.Error))
	s := attnSpec("k3", 256)
	s.InputRef = "up-a"
	r = apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: s}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
	if r.GetError().GetField() != "spec.input_ref" {
		t.Fatalf("reusing a canceled job's inputs: %v", r)
	}
}

func errOf(e *pb.Error) error {
	if e == nil {
		return nil
	}
	return fmt.Errorf("%v", e)
}

// A rank whose worker heartbeats but whose steps_done stays put is
// re-planned elsewhere; a slow rank that keeps progressing is not.
func TestCoordinatorProgressWatchdog(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) {
		c.ProgressTimeout = 400 * time.Millisecond
		c.HeartbeatTimeout = 800 * time.Millisecond
	})
	nc := connect(t, tc.url)
	ld := tc.leader()
	stuck := newTestWorker(t, tc.url, "stuck", 20, time.Hour)
	newTestWorker(t, tc.url, "ok", 10, 10*time.Millisecond)
	waitWorkers(t, nc, 2)
	r := submit(t, nc, attnSpec("stall", 64*8))
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 15*time.Second)
	if js.Epoch != 2 || !slices.Equal(js.Workers, []string{"ok"}) {
		t.Fatalf("after the stall: %v", js)
	}
	if len(stuck.assignments()) != 1 {
		t.Fatalf("stuck worker assignments: %v", stuck.assignments())
	}
	if n := metricValue(t, tc.nodes[ld], "ringattn_rank_stalls_total"); n != 1 {
		t.Fatalf("rank_stalls_total = %v, want 1", n)
	}
	stuck.kill()

	// Slower than the timeout, but progressing: left alone.
	slow := newTestWorker(t, tc.url, "slow", 50, time.Second)
	slow.mu.Lock()
	slow.stepping = true
	slow.mu.Unlock()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		r := &pb.ClusterReply{}
		if err := api(nc, EndpointCluster, &pb.ClusterRequest{}, r, time.Second); err != nil {
			return err
		}
		var ids []string
		for _, w := range r.Workers {
			ids = append(ids, w.Id)
		}
		if !slices.Equal(ids, []string{"ok", "slow"}) {
			return fmt.Errorf("workers %v, want ok and slow", ids)
		}
		return nil
	})
	spec := attnSpec("slow", 64*8)
	spec.Parallelism = 1 // the fastest worker: slow
	r = submit(t, nc, spec)
	js = waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 15*time.Second)
	if js.Epoch != 1 || !slices.Equal(js.Workers, []string{"slow"}) {
		t.Fatalf("slow but progressing: %v", js)
	}
	if n := metricValue(t, tc.nodes[ld], "ringattn_rank_stalls_total"); n != 1 {
		t.Fatalf("rank_stalls_total = %v, want still 1", n)
	}
}

func TestCoordinatorProgressTimeoutFormula(t *testing.T) {
	p := &pb.Plan{Steps: 4}
	floor := 30 * time.Second
	for _, c := range []struct {
		cost, gflops float64
		want         time.Duration
	}{
		{1e9, 10, floor},                                        // 25 ms a step
		{4e12, 10, 1000 * time.Second},                          // 100 s a step × 10
		{4e12, 0, 10000 * time.Second},                          // unknown speed: 1 GFLOP/s
		{math.Inf(1), 10, maxProgressTimeout},                   // capped
		{math.NaN(), 10, floor},                                 // nonsense: the floor
		{-1, 10, floor},                                         //
		{1e30, math.SmallestNonzeroFloat64, maxProgressTimeout}, //
	} {
		got := progressTimeout(floor, p, &pb.RankPlan{Cost: c.cost}, c.gflops)
		if got != c.want {
			t.Errorf("cost %g at %g GFLOP/s: %v, want %v", c.cost, c.gflops, got, c.want)
		}
	}
}

// A panic in the report handler answers REJECTED, one in the heartbeat
// handler drops that heartbeat, one while scheduling a running job fails
// that job: the leader goes on in every case.
func TestCoordinatorHandlerPanicsContained(t *testing.T) {
	tc := newCluster(t, 1, nil)
	tc.setHooks(&hooks{
		report: func(data []byte) {
			if bytes.Contains(data, []byte("report-boom")) {
				panic("report exploded")
			}
		},
		heartbeat: func(data []byte) {
			if bytes.Contains(data, []byte("hb-boom")) {
				panic("heartbeat exploded")
			}
		},
		tick: func(j *cpb.Job) {
			if j.GetSpec().GetIdempotencyKey() == "tick-boom" {
				panic("scheduler exploded")
			}
		},
	})
	nc := connect(t, tc.url)
	ld := tc.leader()
	newTestWorker(t, tc.url, "w", 10, 10*time.Millisecond)
	waitWorkers(t, nc, 1)

	a := sendReport(t, nc, &pb.Report{WorkerId: "w", JobId: "report-boom", Epoch: 1})
	if a.Status != pb.ReportStatus_REPORT_STATUS_REJECTED || !strings.Contains(a.Message, "internal error while handling the report") {
		t.Fatalf("report panic: ack %v %q", a.Status, a.Message)
	}
	data, err := proto.Marshal(&pb.Heartbeat{WorkerId: "hb-boom", Gflops: 1})
	noErr(t, err)
	if _, err := nc.NATS().Request(transport.NewSubjects("").Heartbeat(), data, 300*time.Millisecond); err == nil {
		t.Fatal("a heartbeat whose handler panicked got an ack")
	}
	boom := submit(t, nc, attnSpec("tick-boom", 256))
	js := waitState(t, nc, boom.Job.Id, pb.JobState_JOB_STATE_FAILED, 10*time.Second)
	if !strings.Contains(js.Reason, "internal error while scheduling: scheduler exploded") {
		t.Fatalf("scheduling panic: %v", js)
	}
	ok := submit(t, nc, attnSpec("tick-fine", 256))
	waitState(t, nc, ok.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	for _, where := range []string{"report", "heartbeat", "scheduling"} {
		if n := metricLabel(t, tc.nodes[ld], "ringattn_coordinator_panics_total", "where", where); n != 1 {
			t.Errorf("panics{where=%s} = %v, want 1", where, n)
		}
	}
	if got := tc.leader(); got != ld {
		t.Fatal("leader changed")
	}
}

// serving returns node i's running leader session.
func serving(t *testing.T, tc *testCluster, i int) *leader {
	t.Helper()
	l := tc.nodes[i].currentLeader()
	if l == nil || !l.isReady() {
		t.Fatal("no serving leader")
	}
	return l
}

// padTo grows the string *s until m encodes to exactly n bytes.
func padTo(t *testing.T, m proto.Message, s *string, n int) []byte {
	t.Helper()
	for i := 0; i < 8 && proto.Size(m) != n; i++ {
		if d := n - proto.Size(m); d > 0 {
			*s += strings.Repeat("x", d)
		} else {
			*s = (*s)[:max(0, len(*s)+d)]
		}
	}
	b, err := proto.Marshal(m)
	noErr(t, err)
	if len(b) != n {
		t.Fatalf("padded to %d bytes, want %d", len(b), n)
	}
	return b
}

// The handlers' size and count limits, at the limit and just past it.
func TestCoordinatorEdgeLimits(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.HeartbeatTimeout = time.Hour })
	ld := tc.leader()
	l := serving(t, tc, ld)
	nc := connect(t, tc.url)
	ctx := context.Background()
	within := func(d time.Duration) context.Context {
		c, cancel := context.WithTimeout(ctx, d)
		t.Cleanup(cancel)
		return c
	}

	// Over the wire: transport's serve bounds what the leader decodes.
	hb := &pb.Heartbeat{WorkerId: "big", Gflops: 1}
	padTo(t, hb, &hb.Version, maxHeartbeatBytes)
	if _, err := nc.SendHeartbeat(within(5*time.Second), hb); err != nil {
		t.Errorf("heartbeat of maxHeartbeatBytes: %v", err)
	}
	hb.Version = ""
	padTo(t, hb, &hb.Version, maxHeartbeatBytes+1)
	if a, err := nc.SendHeartbeat(within(300*time.Millisecond), hb); err == nil {
		t.Errorf("heartbeat of maxHeartbeatBytes+1 answered: %v", a)
	}

	rep := &pb.Report{WorkerId: "w", JobId: "j-none", Result: &pb.Report_Failed{Failed: &pb.ShardFailed{}}}
	padTo(t, rep, &rep.GetFailed().Reason, maxReportBytes)
	if a, err := nc.Report(within(5*time.Second), rep); err != nil || !strings.Contains(a.Message, "unknown job") {
		t.Errorf("report of maxReportBytes: %v %v, want it read (unknown job)", a, err)
	}
	rep.GetFailed().Reason = ""
	padTo(t, rep, &rep.GetFailed().Reason, maxReportBytes+1)
	if a, err := nc.Report(within(5*time.Second), rep); err != nil || a.Status != pb.ReportStatus_REPORT_STATUS_REJECTED ||
		!strings.Contains(a.Message, "want at most 4194304") {
		t.Errorf("report of maxReportBytes+1: %v %v", a, err)
	}

	rk := &pb.RankPlan{QBlocks: []int32{4, 5, 6}}
	if err := checkChecksums(rk, []*pb.BlockChecksum{{Block: 6}, {Block: 4}, {Block: 5}}); err != nil {
		t.Errorf("one checksum per block: %v", err)
	}
	if err := checkChecksums(rk, []*pb.BlockChecksum{{Block: 6}, {Block: 4}, {Block: 5}, {Block: 4}}); err == nil {
		t.Error("more checksums than blocks accepted")
	}
	if got := truncate(strings.Repeat("é", maxReasonBytes), maxReasonBytes); len(got) > maxReasonBytes+len("…") || !utf8.ValidString(got) {
		t.Errorf("truncated reason: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}

	// API request lists: list states and a cancel reason.
	states := slices.Repeat([]pb.JobState{pb.JobState_JOB_STATE_RUNNING}, maxListStates)
	if _, ae := l.apiList(ctx, &pb.ListRequest{States: states}); ae != nil {
		t.Errorf("list of %d states: %v", maxListStates, ae)
	}
	if _, ae := l.apiList(ctx, &pb.ListRequest{States: append(states, 1)}); ae == nil || ae.field != "states" {
		t.Errorf("list of %d states: %v", maxListStates+1, ae)
	}
	if _, ae := l.apiList(ctx, &pb.ListRequest{States: []pb.JobState{7}}); ae == nil || ae.field != "states" {
		t.Errorf("list of state 7: %v", ae)
	}
	reason := strings.Repeat("r", maxReasonBytes)
	if _, ae := l.apiCancel(ctx, &pb.CancelRequest{JobId: "j-none", Reason: reason}); ae == nil || ae.field != "job_id" {
		t.Errorf("cancel with a reason of %d bytes: %v, want unknown job", maxReasonBytes, ae)
	}
	if _, ae := l.apiCancel(ctx, &pb.CancelRequest{JobId: "j-none", Reason: reason + "r"}); ae == nil || ae.field != "reason" {
		t.Errorf("cancel with a reason of %d bytes: %v", maxReasonBytes+1, ae)
	}

	// The registry holds maxWorkers; one more new worker is dropped, a
	// known one still heard.
	for i := len(l.workerInfos(nil)); i < maxWorkers; i++ {
		if l.heartbeat(&pb.Heartbeat{WorkerId: fmt.Sprintf("w%d", i), Gflops: 1}) == nil {
			t.Fatalf("worker %d of %d dropped", i, maxWorkers)
		}
	}
	if l.heartbeat(&pb.Heartbeat{WorkerId: "one-too-many", Gflops: 1}) != nil {
		t.Error("worker past maxWorkers registered")
	}
	if l.heartbeat(&pb.Heartbeat{WorkerId: "w7", Gflops: 2}) == nil {
		t.Error("a known worker dropped when the registry is full")
	}
}

// In a ring the ranks after a stuck one stall too; the watchdog blames
// the rank idle longest and makes only its worker suspect.
func TestCoordinatorWatchdogBlamesFirstStalled(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.ProgressTimeout = time.Second })
	// A session that is not started: no scheduler tick touches its state.
	l := newLeader(tc.nodes[tc.leader()])
	j := &cpb.Job{Id: "j-ring", Epoch: 3, Plan: &pb.Plan{Steps: 3, Ranks: []*pb.RankPlan{
		{WorkerId: "a", Cost: 1}, {WorkerId: "b", Cost: 1}, {WorkerId: "c", Cost: 1}, {WorkerId: "d", Cost: 1}}},
		DoneRanks: []int32{3}}
	live := map[string]*pb.Heartbeat{"a": {Gflops: 1}, "b": {Gflops: 1}, "c": {Gflops: 1}, "d": {Gflops: 1}}
	now := time.Now()
	l.mu.Lock()
	for r, last := range []time.Duration{2 * time.Second, 5 * time.Second, 3 * time.Second, 9 * time.Second} {
		k := shardKey{j.Id, j.Epoch, int32(r)}
		l.sent[k] = &sendState{acked: true, since: now.Add(-10 * time.Second)}
		l.progress[k] = &progressState{steps: 7, at: now.Add(-last)}
	}
	l.mu.Unlock()
	// Ranks 0..2 are past the 1 s timeout; rank 1 stopped first (rank 3
	// idles longer but is done).
	why := l.watchdog(j, live, now)
	if why != "rank 1 on worker b made no progress for 5s" {
		t.Fatalf("watchdog: %q", why)
	}
	l.mu.Lock()
	_, a := l.suspect["a"]
	_, b := l.suspect["b"]
	l.mu.Unlock()
	if a || !b {
		t.Fatalf("suspects: a %v, b %v; want only b", a, b)
	}
	// Within the timeout nobody is blamed.
	if why := l.watchdog(j, live, now.Add(-4500*time.Millisecond)); why != "" {
		t.Fatalf("watchdog within the timeout: %q", why)
	}
}

// A panic under the soft-state lock, once contained, leaves it unlocked.
func TestCoordinatorPanicUnderLockReleasesIt(t *testing.T) {
	tc := newCluster(t, 1, nil)
	l := newLeader(tc.nodes[tc.leader()])
	l.guard("test", func() { l.locked(func() { panic("under the lock") }) })
	if !l.mu.TryLock() {
		t.Fatal("l.mu still held after a contained panic")
	}
	l.mu.Unlock()
	if n := metricLabel(t, tc.nodes[0], "ringattn_coordinator_panics_total", "where", "test"); n != 1 {
		t.Fatalf("panics{where=test} = %v", n)
	}
}
