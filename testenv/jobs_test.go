package testenv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// tol is the exactness bound for unit-normal inputs (DESIGN §2).
const tol = 1e-4

// job is an attention problem, its inputs and, once submitted, its id.
type job struct {
	ref     attnref.Problem
	q, k, v []float32
	block   int
	// strategy is the job's plan strategy; "" lets the planner choose.
	strategy string
	// sample are the query rows checked against the reference; nil
	// checks every row.
	sample []int
	// wantFailed, when set, is what the reason of the job's failure must
	// contain; the job must then end FAILED.
	wantFailed string
	id         string
}

// newJob makes a seeded unit-normal attention problem. Problems above
// 0.1 GFLOP are checked on a sample of rows: the first and last row of
// every block and one more in each.
func newJob(seed uint64, b, hq, hkv, n, nk, d, block int, causal bool) *job {
	r := testrand.New(seed)
	j := &job{
		ref:   attnref.Problem{B: b, Hq: hq, Hkv: hkv, N: n, Nk: nk, D: d, Mask: attnref.Mask{Causal: causal}},
		q:     r.Slice(b*hq*n*d, testrand.Normal),
		k:     r.Slice(b*hkv*nk*d, testrand.Normal),
		v:     r.Slice(b*hkv*nk*d, testrand.Normal),
		block: block,
	}
	if j.gflop() > 0.1 {
		for s := 0; s < n; s += block {
			e := min(s+block, n)
			j.sample = append(j.sample, s, e-1)
			if e-s > 2 {
				j.sample = append(j.sample, s+1+r.Intn(e-s-2))
			}
		}
		slices.Sort(j.sample)
		j.sample = slices.Compact(j.sample)
	}
	return j
}

func (j *job) String() string {
	p := j.ref
	return fmt.Sprintf("attention B=%d Hq=%d Hkv=%d N=%d Nk=%d D=%d block=%d causal=%v (%.1f GFLOP)",
		p.B, p.Hq, p.Hkv, p.N, p.Nk, p.D, j.block, p.Mask.Causal, j.gflop())
}

// gflop is the job's visible attention work, 4·B·Hq·N·Nk·D (half for causal).
func (j *job) gflop() float64 {
	p := j.ref
	f := 4 * float64(p.B*p.Hq) * float64(p.N) * float64(p.Nk) * float64(p.D) / 1e9
	if p.Mask.Causal {
		f /= 2
	}
	return f
}

// check compares the job's outputs with the float64 reference.
func (j *job) check(res *client.AttentionResult) error {
	p := j.ref
	o := res.O.Data
	var lse []float32
	if res.LSE != nil {
		lse = res.LSE.Data
	}
	if len(o) != p.B*p.Hq*p.N*p.D || len(lse) != p.B*p.Hq*p.N {
		return fmt.Errorf("job %s: outputs have %d and %d elements, want %d and %d", j.id, len(o), len(lse),
			p.B*p.Hq*p.N*p.D, p.B*p.Hq*p.N)
	}
	var wantO, wantL []float64
	gotO, gotL := o, lse
	if j.sample == nil {
		wantO, wantL = p.Attention(j.q, j.k, j.v)
	} else {
		wantO, wantL = p.Rows(j.q, j.k, j.v, j.sample)
		gotO = make([]float32, 0, len(wantO))
		gotL = make([]float32, 0, len(wantL))
		for bh := 0; bh < p.B*p.Hq; bh++ {
			for _, row := range j.sample {
				at := bh*p.N + row
				gotO = append(gotO, o[at*p.D:(at+1)*p.D]...)
				gotL = append(gotL, lse[at])
			}
		}
	}
	if d := attnref.MaxAbsDiff(gotO, wantO); !(d <= tol) {
		return fmt.Errorf("job %s: o differs from the float64 reference by %g, want <= %g", j.id, d, tol)
	}
	if d := attnref.MaxAbsDiff(gotL, wantL); !(d <= tol) {
		return fmt.Errorf("job %s: lse differs from the float64 reference by %g, want <= %g", j.id, d, tol)
	}
	return nil
}

// ledger tracks every job a test submits and every FINISHED event the
// leader publishes, to prove that no job is lost or finished twice.
type ledger struct {
	t  *testing.T
	c  *localcluster.Cluster
	cl *client.Client
	nc *nats.Conn

	mu       sync.Mutex
	jobs     []*job
	byID     map[string]*job
	finished map[string][]pb.JobState // FINISHED events by job
	epochs   map[string][]epochStart  // EPOCH_STARTED events by job
}

// epochStart is an EPOCH_STARTED event and when it arrived.
type epochStart struct {
	epoch uint64
	at    time.Time
}

func newLedger(t *testing.T, c *localcluster.Cluster) *ledger {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := c.NATSConfig(t.Name() + "-client")
	cl, err := client.Connect(ctx, cfg, client.Options{RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(cl.Close)
	cfg.Name = t.Name() + "-events"
	nc, err := transport.Connect(cfg, nil)
	if err != nil {
		t.Fatalf("events connection: %v", err)
	}
	t.Cleanup(nc.Close)
	l := &ledger{t: t, c: c, cl: cl, nc: nc, byID: map[string]*job{},
		finished: map[string][]pb.JobState{}, epochs: map[string][]epochStart{}}
	if _, err := nc.Subscribe(cfg.Subjects().AllJobEvents(), func(m *nats.Msg) {
		at := time.Now()
		var ev pb.JobEvent
		if proto.Unmarshal(m.Data, &ev) != nil {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		switch ev.GetType() {
		case pb.JobEventType_JOB_EVENT_TYPE_FINISHED:
			l.finished[ev.GetJobId()] = append(l.finished[ev.GetJobId()], ev.GetState())
		case pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED:
			l.epochs[ev.GetJobId()] = append(l.epochs[ev.GetJobId()], epochStart{ev.GetEpoch(), at})
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// submit uploads the job's inputs and submits it; it returns the id.
func (l *ledger) submit(ctx context.Context, j *job) string {
	l.t.Helper()
	if err := l.trySubmit(ctx, j); err != nil {
		l.t.Fatalf("submit %v: %v", j, err)
	}
	return j.id
}

func (l *ledger) trySubmit(ctx context.Context, j *job) error {
	p := j.ref
	q := tensor.New(j.q, p.B, p.Hq, p.N, p.D)
	k := tensor.New(j.k, p.B, p.Hkv, p.Nk, p.D)
	v := tensor.New(j.v, p.B, p.Hkv, p.Nk, p.D)
	st, err := l.cl.SubmitAttention(ctx, q, k, v, true, client.JobOptions{Causal: p.Mask.Causal, Block: j.block, Strategy: j.strategy})
	if err != nil {
		return err
	}
	l.add(j, st.GetId())
	return nil
}

func (l *ledger) add(j *job, id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	j.id = id
	l.jobs = append(l.jobs, j)
	l.byID[id] = j
}

// finishedCount is how many jobs the leader announced finished.
func (l *ledger) finishedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.finished)
}

// replannedAt is when the first epoch above `after` of job id started
// (zero if none was seen).
func (l *ledger) replannedAt(id string, after uint64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.epochs[id] {
		if e.epoch > after {
			return e.at
		}
	}
	return time.Time{}
}

// status gets a job's status, retrying while the API is unavailable.
func (l *ledger) status(ctx context.Context, id string) (*pb.JobStatus, error) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return l.cl.Get(rctx, id)
}

// wait polls the job until it is final and returns its status.
func (l *ledger) wait(ctx context.Context, id string) *pb.JobStatus {
	l.t.Helper()
	var st *pb.JobStatus
	err := localcluster.Poll(ctx, localcluster.PollInterval, func() error {
		s, err := l.status(ctx, id)
		if err != nil {
			return err
		}
		st = s
		if client.Finished(s.GetState()) {
			return nil
		}
		return fmt.Errorf("job %s is %v in epoch %d (%d/%d blocks) on %v", id, s.GetState(), s.GetEpoch(),
			s.GetBlocksDone(), s.GetBlocksTotal(), s.GetWorkers())
	}, "job "+id+" finished")
	if err != nil {
		l.t.Fatal(err)
	}
	return st
}

// waitAll waits for every submitted job to be final.
func (l *ledger) waitAll(ctx context.Context) map[string]*pb.JobStatus {
	l.t.Helper()
	l.mu.Lock()
	jobs := slices.Clone(l.jobs)
	l.mu.Unlock()
	out := map[string]*pb.JobStatus{}
	for _, j := range jobs {
		out[j.id] = l.wait(ctx, j.id)
	}
	return out
}

// verify checks the ledger against the cluster: List holds every
// submitted job exactly once and no other, each SUCCEEDED with outputs
// equal to the float64 reference (or FAILED for the reason it must fail
// for), and the leader announced no job finished twice.
func (l *ledger) verify(ctx context.Context) {
	l.t.Helper()
	final := l.waitAll(ctx)
	var listed []*pb.JobStatus
	err := localcluster.Poll(ctx, localcluster.PollInterval, func() (err error) {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		listed, err = l.cl.List(rctx, 0)
		return err
	}, "listing jobs")
	if err != nil {
		l.t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	count := map[string]int{}
	for _, st := range listed {
		count[st.GetId()]++
		if l.byID[st.GetId()] == nil {
			l.t.Errorf("List holds job %s (%v), which this test never submitted", st.GetId(), st.GetState())
		}
	}
	for _, j := range l.jobs {
		if count[j.id] != 1 {
			l.t.Errorf("job %s is listed %d times, want exactly once", j.id, count[j.id])
		}
		st := final[j.id]
		switch {
		case j.wantFailed != "":
			if st.GetState() != pb.JobState_JOB_STATE_FAILED || !strings.Contains(st.GetReason(), j.wantFailed) {
				l.t.Errorf("job %s ended %v (%q), want FAILED naming %q", j.id, st.GetState(), st.GetReason(), j.wantFailed)
			}
		case st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED:
			l.t.Errorf("job %s ended %v (%s) in epoch %d, want SUCCEEDED", j.id, st.GetState(), st.GetReason(), st.GetEpoch())
		}
		if ev := l.finished[j.id]; len(ev) > 1 {
			l.t.Errorf("job %s was announced finished %d times: %v", j.id, len(ev), ev)
		}
	}
	if l.t.Failed() {
		l.t.FailNow()
	}
	failed := 0
	for _, j := range l.jobs {
		if j.wantFailed != "" {
			failed++
			continue
		}
		if err := l.fetchCheck(ctx, j, final[j.id]); err != nil {
			l.t.Fatal(err)
		}
	}
	l.t.Logf("%d jobs: each listed exactly once and announced finished at most once; %d SUCCEEDED with outputs within %g of the float64 reference, %d FAILED as they must",
		len(l.jobs), len(l.jobs)-failed, tol, failed)
}

// fetchCheck downloads a succeeded job's outputs and checks them.
func (l *ledger) fetchCheck(ctx context.Context, j *job, st *pb.JobStatus) error {
	var res *client.AttentionResult
	err := localcluster.Poll(ctx, localcluster.PollInterval, func() (err error) {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res, err = l.cl.FetchAttention(fctx, st)
		if errors.Is(err, client.ErrJobFailed) || errors.Is(err, client.ErrConflict) {
			return localcluster.Permanent(err)
		}
		return err
	}, "fetching the outputs of job "+j.id)
	if err != nil {
		return err
	}
	return j.check(res)
}

// finishedAt is when the leader finished the job (its record's clock).
func finishedAt(st *pb.JobStatus) time.Time { return time.UnixMilli(st.GetFinishedUnixMs()) }

// waitRunning waits until job id is RUNNING and returns its status.
func waitRunning(ctx context.Context, t *testing.T, l *ledger, id string) *pb.JobStatus {
	t.Helper()
	var st *pb.JobStatus
	err := localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		s, err := l.status(ctx, id)
		if err != nil {
			return err
		}
		st = s
		if client.Finished(s.GetState()) {
			return localcluster.Permanent(fmt.Errorf("job %s %v (%s) before it was seen running", id, s.GetState(), s.GetReason()))
		}
		if s.GetState() != pb.JobState_JOB_STATE_RUNNING {
			return fmt.Errorf("job %s is %v", id, s.GetState())
		}
		return nil
	}, "job "+id+" running")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// stepCounts are every worker's ring step counters now.
func stepCounts(ctx context.Context, c *localcluster.Cluster) map[string]float64 {
	out := map[string]float64{}
	for _, w := range c.Workers() {
		out[w.Name] = ringSteps(ctx, c, w)
	}
	return out
}

// waitMidJob waits until job id is RUNNING and worker w has computed at
// least one ring step of it (its step counter passed base) with a shard
// still running, and returns the job's status then. A job that finishes
// first fails the test: it is too small for the fault to land mid-job.
func waitMidJob(ctx context.Context, t *testing.T, l *ledger, id string, w *localcluster.Proc, base float64) *pb.JobStatus {
	t.Helper()
	var st *pb.JobStatus
	err := localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		s, err := l.status(ctx, id)
		if err != nil {
			return err
		}
		st = s
		if client.Finished(s.GetState()) {
			return localcluster.Permanent(fmt.Errorf("job %s %v before %s computed a ring step: make the job bigger", id, s.GetState(), w.Name))
		}
		if s.GetState() != pb.JobState_JOB_STATE_RUNNING || !slices.Contains(s.GetWorkers(), w.Name) {
			return fmt.Errorf("job %s is %v on %v", id, s.GetState(), s.GetWorkers())
		}
		steps, err := l.c.Metric(ctx, w, "ringattn_worker_ring_step_seconds_count")
		if err != nil {
			return err
		}
		running, err := l.c.Metric(ctx, w, "ringattn_worker_shards_running")
		if err != nil {
			return err
		}
		if steps <= base || running < 1 {
			return fmt.Errorf("%s: %g ring steps (base %g), %g shards running", w.Name, steps, base, running)
		}
		return nil
	}, "job "+id+" mid-way on "+w.Name)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// ringSteps is a worker's ring step counter (0 when unreachable).
func ringSteps(ctx context.Context, c *localcluster.Cluster, w *localcluster.Proc) float64 {
	v, err := c.Metric(ctx, w, "ringattn_worker_ring_step_seconds_count")
	if err != nil {
		return 0
	}
	return v
}

// round is a duration for logs.
func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
