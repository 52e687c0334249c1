package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/coordinator"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// checkFor polls f every `every` until it returns nil or `total` passes.
func checkFor(t *testing.T, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

// testCluster is an embedded NATS server, a single-node coordinator (real
// raft with its log and snapshots on disk) and workers, all in this process.
type testCluster struct {
	t        *testing.T
	srv      *transport.Embedded
	nats     transport.Config
	coord    *coordinator.Coordinator
	serving  time.Time // when the coordinator started serving as leader
	hbTO     time.Duration
	dataDir  string
	client   *client.Client
	store    *transport.Store
	conn     *transport.Conn
	mu       sync.Mutex
	workers  map[string]*testWorker
	stepHook func(w *testWorker, ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress)
}

type testWorker struct {
	id     string
	w      *Worker
	cancel context.CancelFunc
	done   chan error
}

func newTestCluster(t *testing.T, hbTimeout time.Duration) *testCluster {
	t.Helper()
	srv := transporttest.RunServer(t)
	ncfg := transporttest.Config(srv)
	ncfg.Name = t.Name()
	c := &testCluster{t: t, srv: srv, nats: ncfg, hbTO: hbTimeout, workers: map[string]*testWorker{}}

	c.dataDir = t.TempDir()
	c.startCoordinator()

	ctx := context.Background()
	cl, err := client.Connect(ctx, ncfg, client.Options{})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(cl.Close)
	c.client = cl
	c.conn = transport.NewConn(transporttest.Connect(t, srv), ncfg.Subjects(), nil)
	if c.store, err = c.conn.OpenStore(ctx, transport.StoreConfig{Bucket: ncfg.Bucket}); err != nil {
		t.Fatalf("store: %v", err)
	}
	return c
}

// startCoordinator starts the single-node coordinator on c.dataDir (its
// raft log and snapshots survive a restart) and waits until it serves.
func (c *testCluster) startCoordinator() {
	t := c.t
	t.Helper()
	cc := coordinator.DefaultConfig()
	cc.NodeID = "c1"
	cc.Bootstrap = true
	cc.DataDir = c.dataDir
	cc.HTTPAddr = ""
	cc.NATS = c.nats
	cc.HeartbeatTimeout = c.hbTO
	cc.AssignTimeout = 2 * time.Second
	cc.SchedulerInterval = 20 * time.Millisecond
	// Every job gets as many ranks as it has blocks and workers: these
	// tests are about rings over several workers, not about gang sizing
	// (the workers report 1 GFLOP/s, which would make small jobs one rank).
	cc.MinRankTime = 0
	cc.RaftHeartbeatTimeout = 100 * time.Millisecond
	cc.RaftElectionTimeout = 100 * time.Millisecond
	cc.RaftLeaderLeaseTimeout = 50 * time.Millisecond
	cc.RaftCommitTimeout = 5 * time.Millisecond
	_, trans := raft.NewInmemTransport("c1")
	coord, err := coordinator.New(cc, coordinator.Deps{Logger: xlog.Test(t).With("side", "coordinator"), RaftTransport: trans})
	if err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	t.Cleanup(func() { coord.Close() })
	c.coord = coord
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !coord.Serving() {
			return errors.New("coordinator not serving yet")
		}
		return nil
	})
	c.serving = time.Now()
}

// startWorker starts one worker; its context is canceled at cleanup (an
// abrupt stop) unless the test stopped it before.
func (c *testCluster) startWorker(id string) *testWorker {
	c.t.Helper()
	cfg := DefaultConfig()
	cfg.ID = id
	cfg.NATS = c.nats
	cfg.NATS.Name = id
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.RecvTimeout = time.Second
	cfg.RequestTimeout = time.Second
	cfg.ReportBackoffMax = 200 * time.Millisecond
	cfg.GFLOPS = 1 // measured speed is not what these tests are about
	cfg.MetricsAddr = MetricsDisabled
	cfg.Threads = 1
	cfg.Logger = xlog.Test(c.t).With("side", id)
	w, err := New(cfg)
	if err != nil {
		c.t.Fatalf("worker %s: %v", id, err)
	}
	tw := &testWorker{id: id, w: w, done: make(chan error, 1)}
	w.hooks.progress = func(ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) {
		c.mu.Lock()
		h := c.stepHook
		c.mu.Unlock()
		if h != nil {
			h(tw, ctx, job, epoch, rank, p)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	tw.cancel = cancel
	go func() { tw.done <- w.Run(ctx) }()
	c.t.Cleanup(func() {
		cancel()
		<-w.Done()
	})
	select {
	case <-w.Ready():
	case err := <-tw.done:
		c.t.Fatalf("worker %s stopped: %v", id, err)
	case <-time.After(10 * time.Second):
		c.t.Fatalf("worker %s not ready", id)
	}
	c.mu.Lock()
	c.workers[id] = tw
	c.mu.Unlock()
	return tw
}

// waitWorkers waits until the leader lists every id as a live worker.
func (c *testCluster) waitWorkers(ids ...string) {
	c.t.Helper()
	checkFor(c.t, 10*time.Second, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		cl, err := c.client.Cluster(ctx)
		if err != nil {
			return err
		}
		var have []string
		for _, w := range cl.GetWorkers() {
			if !w.GetLeaving() {
				have = append(have, w.GetId())
			}
		}
		for _, id := range ids {
			if !slices.Contains(have, id) {
				return fmt.Errorf("worker %s not live at the leader (have %v)", id, have)
			}
		}
		return nil
	})
}

func (c *testCluster) setStepHook(h func(w *testWorker, ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress)) {
	c.mu.Lock()
	c.stepHook = h
	c.mu.Unlock()
}

// attnJob is an attention problem with its inputs.
type attnJob struct {
	spec    *pb.JobSpec
	q, k, v []float32
	ref     *attnref.Problem
	tol     float64 // max |o - o_ref|; 0 means 1e-4
}

func newAttnJob(seed uint64, b, hq, hkv, n, nk, d, block int, causal bool) *attnJob {
	r := testrand.New(seed)
	j := &attnJob{
		spec: &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: int64(b), Hq: int64(hq), Hkv: int64(hkv),
			N: int64(n), Nk: int64(nk), D: int64(d), Block: int64(block), WantLse: true,
			Mask: &pb.Mask{Causal: causal}},
		q:   r.Slice(b*hq*n*d, testrand.Normal),
		k:   r.Slice(b*hkv*nk*d, testrand.Normal),
		v:   r.Slice(b*hkv*nk*d, testrand.Normal),
		ref: &attnref.Problem{B: b, Hq: hq, Hkv: hkv, N: n, Nk: nk, D: d, Mask: attnref.Mask{Causal: causal}},
	}
	return j
}

// submit uploads the job's inputs under ref and submits it.
func (c *testCluster) submit(j *attnJob, ref string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := j.spec
	bl := int(s.Block)
	for _, in := range []struct {
		name string
		x    []float32
		sh   transport.Shape
	}{
		{"q", j.q, transport.Shape{int(s.B), int(s.Hq), int(s.N), int(s.D)}},
		{"k", j.k, transport.Shape{int(s.B), int(s.Hkv), int(s.Nk), int(s.D)}},
		{"v", j.v, transport.Shape{int(s.B), int(s.Hkv), int(s.Nk), int(s.D)}},
	} {
		if _, err := c.store.PutTensor(ctx, ref, in.name, in.x, in.sh, bl, transport.F32); err != nil {
			c.t.Fatalf("upload %s: %v", in.name, err)
		}
	}
	s.InputRef = ref
	st, err := c.client.Submit(ctx, s)
	if err != nil {
		c.t.Fatalf("submit: %v", err)
	}
	return st.GetId()
}

// wait polls the job until it is in a final state and returns its status.
func (c *testCluster) wait(id string, within time.Duration) *pb.JobStatus {
	c.t.Helper()
	var st *pb.JobStatus
	checkFor(c.t, within, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		var err error
		if st, err = c.client.Get(ctx, id); err != nil {
			return err
		}
		if coordinator.Terminal(st.GetState()) {
			return nil
		}
		return fmt.Errorf("job %s is %v in epoch %d (%d/%d blocks)", id, st.GetState(), st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	})
	return st
}

// check fetches the job's outputs and compares them with the reference.
func (c *testCluster) check(id string, j *attnJob) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := j.spec
	o, err := c.store.GetTensor(ctx, id, transport.TensorO, transport.Shape{int(s.B), int(s.Hq), int(s.N), int(s.D)}, int(s.Block))
	if err != nil {
		c.t.Fatalf("fetching o: %v", err)
	}
	lse, err := c.store.GetTensor(ctx, id, transport.TensorLSE, transport.Shape{int(s.B), int(s.Hq), int(s.N), 1}, int(s.Block))
	if err != nil {
		c.t.Fatalf("fetching lse: %v", err)
	}
	wantO, wantL := j.ref.Attention(j.q, j.k, j.v)
	tol := j.tol
	if tol == 0 {
		tol = 1e-4
	}
	if d := attnref.MaxAbsDiff(o, wantO); !(d <= tol) {
		// Name the blocks at fault (and who wrote them) to make a failure
		// actionable.
		sh := transport.Shape{int(s.B), int(s.Hq), int(s.N), int(s.D)}
		var bad []string
		for i := range sh.Blocks(int(s.Block)) {
			got := transport.ExtractBlock(o, sh, int(s.Block), i)
			want := transport.ExtractBlock(toF32(wantO), sh, int(s.Block), i)
			if bd := attnref.MaxAbsDiff(got, toF64(want)); !(bd <= tol) {
				bad = append(bad, fmt.Sprintf("%d (%.3g)", i, bd))
			}
		}
		c.t.Fatalf("o differs from the float64 reference by %g, want <= %g; query blocks at fault: %v", d, tol, bad)
	} else {
		c.t.Logf("max |o - o_ref| = %.3g", d)
	}
	if d := attnref.MaxAbsDiff(lse, wantL); !(d <= tol) {
		c.t.Fatalf("lse differs from the float64 reference by %g, want <= %g", d, tol)
	}
}

// TestWorkerClusterJobExact runs attention jobs over three workers and
// checks them against the float64 reference: causal GQA with a ragged last
// block, packed documents on a zigzag plan, and short queries over long
// keys with a sliding window on a split-KV plan (the reduction tree).
func TestWorkerClusterJobExact(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	docs := newAttnJob(2, 1, 2, 1, 960, 960, 16, 64, true)
	docs.spec.Strategy = "zigzag"
	docs.spec.Mask.Seqlens = []int64{100, 460, 400}
	docs.ref.Mask.SeqLens = []int{100, 460, 400}
	decode := newAttnJob(3, 2, 4, 2, 40, 1100, 16, 100, false)
	decode.spec.Strategy = "splitkv"
	decode.spec.Mask = &pb.Mask{Windowed: true, WindowLeft: 700, WindowRight: 5}
	decode.ref.Mask = attnref.Mask{Windowed: true, Left: 700, Right: 5}
	bf16 := newAttnJob(4, 1, 2, 2, 500, 500, 32, 100, true)
	bf16.spec.WireDtype = pb.WireDType_WIRE_DTYPE_BF16
	bf16.tol = 1e-2 // K and V travel rounded to bfloat16 (8 significant bits)
	for name, j := range map[string]*attnJob{
		"causal-gqa": newAttnJob(1, 1, 4, 2, 1000, 1000, 32, 128, true),
		"docs":       docs,
		"splitkv":    decode,
		"bf16-wire":  bf16,
	} {
		id := c.submit(j, "in-"+name)
		st := c.wait(id, 60*time.Second)
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("%s: job %v: %s", name, st.GetState(), st.GetReason())
		}
		if got := len(st.GetWorkers()); got != 3 {
			t.Fatalf("%s: job ran on %d workers %v, want 3", name, got, st.GetWorkers())
		}
		t.Logf("%s: %s plan over %v", name, st.GetStrategy(), st.GetWorkers())
		c.check(id, j)
	}
	// Every worker reported its shards and holds nothing unacknowledged.
	for _, tw := range c.workers {
		for _, s := range tw.w.Shards() {
			if s.State != "reported" {
				t.Errorf("worker %s holds %+v after the jobs", tw.id, s)
			}
		}
	}
}

// holdAt returns a step hook that holds the ranks picked by `pick` after
// ring step 1 until their context ends, announcing each on `held`.
func holdAt(pick func(w *testWorker, epoch uint64, rank int) bool, held chan<- string) func(*testWorker, context.Context, string, uint64, int, ringattn.Progress) {
	return func(w *testWorker, ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) {
		if p.Step != 1 || p.Done || !pick(w, epoch, rank) {
			return
		}
		held <- w.id
		<-ctx.Done()
	}
}

// TestWorkerKilledMidJob kills one of three workers abruptly while it is
// held in the middle of its ring (no leave notice): the job finishes on the
// two others, exactly.
func TestWorkerKilledMidJob(t *testing.T) {
	c := newTestCluster(t, 1500*time.Millisecond)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	c.setStepHook(holdAt(func(_ *testWorker, epoch uint64, rank int) bool { return epoch == 1 && rank == 1 }, held))
	j := newAttnJob(2, 2, 4, 4, 700, 700, 16, 64, false)
	id := c.submit(j, "in-kill")
	var victim string
	select {
	case victim = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("rank 1 never reached ring step 1")
	}
	tw := c.workers[victim]
	tw.cancel() // killed: no drain, no leave notice
	if err := <-tw.done; err != nil {
		t.Fatalf("killed worker's Run: %v", err)
	}
	t.Logf("killed %s holding rank 1 at step 1", victim)
	st := c.wait(id, 60*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", st.GetState(), st.GetReason())
	}
	if st.GetEpoch() < 2 {
		t.Fatalf("job finished in epoch %d, want a re-plan (epoch >= 2)", st.GetEpoch())
	}
	for _, w := range st.GetWorkers() {
		if w == victim {
			t.Fatalf("final epoch %d still uses the killed worker: %v", st.GetEpoch(), st.GetWorkers())
		}
	}
	t.Logf("finished in epoch %d on %v", st.GetEpoch(), st.GetWorkers())
	c.check(id, j)
}

// TestWorkerDrainReplansAtOnce drains a worker that is held mid-job: it
// tells the leader it is leaving, the leader re-plans without waiting for a
// heartbeat timeout, the held shard is aborted, Run returns nil, and the
// job finishes exactly on the two others.
func TestWorkerDrainReplansAtOnce(t *testing.T) {
	hbTimeout := 2500 * time.Millisecond
	c := newTestCluster(t, hbTimeout)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	// The drain falls in the new leader's grace period (its first heartbeat
	// timeout), where only an explicit leave re-plans: the leave is heard.
	held := make(chan string, 8)
	c.setStepHook(holdAt(func(_ *testWorker, epoch uint64, rank int) bool { return epoch == 1 && rank == 0 }, held))
	j := newAttnJob(3, 1, 4, 1, 900, 900, 32, 100, true)
	id := c.submit(j, "in-drain")
	var victim string
	select {
	case victim = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("rank 0 never reached ring step 1")
	}
	tw := c.workers[victim]
	replanned := make(chan time.Time, 1)
	stop, err := c.conn.OnEvents(id, transport.ServeConfig{}, func(ev *pb.JobEvent) {
		if ev.GetType() == pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED && ev.GetEpoch() == 2 {
			replanned <- time.Now()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop() //nolint:errcheck
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	if err := c.conn.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tw.w.Drain(dctx)
	drained := time.Since(start)
	if err := <-tw.done; err != nil {
		t.Fatalf("drained worker's Run returned %v, want nil", err)
	}
	var replan time.Duration
	select {
	case at := <-replanned:
		replan = at.Sub(start)
	case <-time.After(hbTimeout):
		t.Fatalf("no re-plan within the heartbeat timeout %v of the drain", hbTimeout)
	}
	st := c.wait(id, 60*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", st.GetState(), st.GetReason())
	}
	t.Logf("drain of %s took %v; re-planned %v after the drain began; job finished in epoch %d on %v",
		victim, drained, replan, st.GetEpoch(), st.GetWorkers())
	if drained >= hbTimeout || replan >= hbTimeout {
		t.Fatalf("drain took %v, re-plan %v: want both < the heartbeat timeout %v", drained, replan, hbTimeout)
	}
	if st.GetEpoch() < 2 || slices.Contains(st.GetWorkers(), victim) {
		t.Fatalf("final epoch %d on %v, want a re-plan without %s", st.GetEpoch(), st.GetWorkers(), victim)
	}
	c.check(id, j)
}

// TestWorkerCancelStopsAllRanks cancels a job while all three ranks are
// held mid-ring: every worker stops its rank within a second.
func TestWorkerCancelStopsAllRanks(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	var released sync.WaitGroup
	released.Add(3)
	hold := holdAt(func(*testWorker, uint64, int) bool { return true }, held)
	c.setStepHook(func(w *testWorker, ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) {
		if p.Step == 1 && !p.Done {
			defer released.Done()
		}
		hold(w, ctx, job, epoch, rank, p)
	})
	j := newAttnJob(4, 1, 2, 2, 600, 600, 16, 100, false)
	id := c.submit(j, "in-cancel")
	for range 3 {
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Fatal("not every rank reached ring step 1")
		}
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.client.Cancel(ctx, id, "test"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	stopped := make(chan struct{})
	go func() { released.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(time.Second):
		t.Fatalf("ranks still running 1 s after the cancel")
	}
	checkFor(t, time.Second-time.Since(start), 5*time.Millisecond, func() error {
		for _, tw := range c.workers {
			if s := tw.w.Shards(); len(s) > 0 {
				return fmt.Errorf("worker %s still holds %+v", tw.id, s)
			}
		}
		return nil
	})
	t.Logf("all ranks stopped %v after the cancel", time.Since(start))
	if st := c.wait(id, 5*time.Second); st.GetState() != pb.JobState_JOB_STATE_CANCELED {
		t.Fatalf("job %v, want CANCELED", st.GetState())
	}
}

// TestWorkerClusterMHAExact runs a multi-head self-attention layer job
// (causal, with biases) over three workers: each rank projects only its own
// blocks and applies the output projection to its rows; y equals the
// float64 reference.
func TestWorkerClusterMHAExact(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	const b, n, dModel, heads, d, block = 2, 333, 24, 3, 8, 64
	r := testrand.New(7)
	x := r.Slice(b*n*dModel, testrand.Normal)
	ws := map[string][]float32{}
	scaleW := float32(1 / 5.0) // keep projections O(1)
	for _, name := range []string{"wq", "wk", "wv", "wo"} {
		w := r.Slice(heads*d*dModel, testrand.Normal)
		for i := range w {
			w[i] *= scaleW
		}
		ws[name] = w
	}
	ws["bq"], ws["bk"], ws["bv"] = r.Slice(heads*d, testrand.Normal), r.Slice(heads*d, testrand.Normal), r.Slice(heads*d, testrand.Normal)
	ws["bo"] = r.Slice(dModel, testrand.Normal)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const ref = "in-mha"
	if _, err := c.store.PutTensor(ctx, ref, TensorX, x, transport.Shape{b, 1, n, dModel}, block, transport.F32); err != nil {
		t.Fatal(err)
	}
	for name, w := range ws {
		if err := c.store.PutBlock(ctx, ref, name, 0, w, transport.F32); err != nil {
			t.Fatal(err)
		}
	}
	spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_MHA, B: b, Hq: heads, Hkv: heads, N: n, Nk: n, D: d, DModel: dModel,
		Block: block, MhaBias: true, Mask: &pb.Mask{Causal: true}, InputRef: ref}
	st, err := c.client.Submit(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	st = c.wait(st.GetId(), 60*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", st.GetState(), st.GetReason())
	}
	y, err := c.store.GetTensor(ctx, st.GetId(), TensorY, transport.Shape{b, 1, n, dModel}, block)
	if err != nil {
		t.Fatal(err)
	}
	m := &attnref.MHA{B: b, N: n, DModel: dModel, Heads: heads, D: d, Mask: attnref.Mask{Causal: true}}
	want := m.Forward(x, ws["wq"], ws["wk"], ws["wv"], ws["wo"], ws["bq"], ws["bk"], ws["bv"], ws["bo"])
	if diff := attnref.MaxAbsDiff(y, want); !(diff <= 1e-4) {
		t.Fatalf("y differs from the float64 reference by %g, want <= 1e-4", diff)
	} else {
		t.Logf("mha over %d workers: max |y - y_ref| = %.3g", len(st.GetWorkers()), diff)
	}
}

func toF32(x []float64) []float32 {
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v)
	}
	return out
}

func toF64(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}

// TestWorkerReportsSurviveLeaderRestart stops the only coordinator while
// every rank is mid-ring, lets the ranks finish with no leader to report
// to, and starts the coordinator again from its raft log: the workers'
// retried reports are committed by the new leader, its re-issued
// assignments restart nothing, and the job succeeds in its first epoch.
func TestWorkerReportsSurviveLeaderRestart(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	release := make(chan struct{})
	c.setStepHook(func(w *testWorker, ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) {
		if p.Step == 1 && !p.Done {
			held <- w.id
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	})
	j := newAttnJob(5, 1, 4, 2, 800, 800, 32, 100, true)
	id := c.submit(j, "in-failover")
	for range 3 {
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Fatal("not every rank reached ring step 1")
		}
	}
	if err := c.coord.Close(); err != nil {
		t.Fatalf("closing the coordinator: %v", err)
	}
	close(release)
	// With no leader the shards finish and keep their reports.
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		for _, tw := range c.workers {
			s := tw.w.Shards()
			if len(s) != 1 || s[0].State != "reporting" {
				return fmt.Errorf("worker %s holds %+v, want one shard reporting", tw.id, s)
			}
		}
		return nil
	})
	c.startCoordinator()
	st := c.wait(id, 30*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || st.GetEpoch() != 1 {
		t.Fatalf("job %v in epoch %d (%s), want SUCCEEDED in epoch 1", st.GetState(), st.GetEpoch(), st.GetReason())
	}
	for _, tw := range c.workers {
		if got := counterValue(t, tw.w.met.shards.WithLabelValues("done")); got != 1 {
			t.Errorf("worker %s computed %v shards, want 1", tw.id, got)
		}
	}
	c.check(id, j)
}

// TestWorkerSurvivesNATSRestart restarts the NATS server (JetStream on
// disk) while every rank is mid-ring: workers, coordinator and client
// reconnect, ranks fall back to the store for lost frames or are
// re-planned, and the job's result is exact.
func TestWorkerSurvivesNATSRestart(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	release := make(chan struct{})
	c.setStepHook(func(w *testWorker, ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) {
		if epoch == 1 && p.Step == 1 && !p.Done {
			held <- w.id
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	})
	j := newAttnJob(6, 1, 2, 2, 900, 900, 32, 100, true)
	id := c.submit(j, "in-natsrestart")
	for range 3 {
		select {
		case <-held:
		case <-time.After(30 * time.Second):
			t.Fatal("not every rank reached ring step 1")
		}
	}
	c.srv.Stop()
	if err := c.srv.Restart(); err != nil {
		t.Fatalf("restarting NATS: %v", err)
	}
	close(release)
	st := c.wait(id, 60*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", st.GetState(), st.GetReason())
	}
	t.Logf("finished in epoch %d on %v after the NATS restart", st.GetEpoch(), st.GetWorkers())
	c.check(id, j)
}
