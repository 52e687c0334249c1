package worker

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// These tests play the leader's side of the control protocol themselves,
// through pkg/transport's typed calls (ServeReports, ServeHeartbeats,
// Assign) with the real protocol messages, to reach what a healthy
// coordinator does not do on demand: answer RETRY, re-issue an assignment
// that is running or finished, list a shard in HeartbeatAck.abort, send
// malformed or stale assignments. Everything else (NATS, the store, the
// ring, the worker) is real.

// planPB encodes a shard plan for the wire as the leader does, rank r on
// workers[r % len(workers)].
func planPB(p *shard.Plan, workers ...string) *pb.Plan { return transport.PlanToPB(p, workers) }

// fakeLeader answers reports and heartbeats on the real subjects.
type fakeLeader struct {
	mu      sync.Mutex
	reports []*pb.Report
	retries int // answer RETRY this many times first
	aborts  []*pb.ShardRef
	hbs     []*pb.Heartbeat
	seen    map[string]bool
}

func startFakeLeader(t *testing.T, conn *transport.Conn, retries int) *fakeLeader {
	f := &fakeLeader{retries: retries, seen: map[string]bool{}}
	stopReports, err := conn.ServeReports(transport.ServeConfig{}, func(r *pb.Report) *pb.ReportAck {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.reports = append(f.reports, r)
		st := pb.ReportStatus_REPORT_STATUS_ACCEPTED
		key := fmt.Sprintf("%s/%d/%d", r.JobId, r.Epoch, r.Rank)
		switch {
		case f.retries > 0:
			f.retries--
			st = pb.ReportStatus_REPORT_STATUS_RETRY
		case f.seen[key]:
			st = pb.ReportStatus_REPORT_STATUS_DUPLICATE
		default:
			f.seen[key] = true
		}
		return &pb.ReportAck{Status: st, LeaderId: "fake"}
	})
	if err != nil {
		t.Fatal(err)
	}
	stopHeartbeats, err := conn.ServeHeartbeats(transport.ServeConfig{}, func(hb *pb.Heartbeat) *pb.HeartbeatAck {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.hbs = append(f.hbs, hb)
		return &pb.HeartbeatAck{LeaderId: "fake", Abort: f.aborts}
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Every message that reached the fake leader decoded (transport
	// counts a handler's panic; a malformed message is logged and dropped).
	t.Cleanup(func() {
		stopReports()    //nolint:errcheck
		stopHeartbeats() //nolint:errcheck
		if n := conn.HandlerPanics(); n != 0 {
			t.Errorf("the fake leader's handlers panicked %d times", n)
		}
	})
	return f
}

func (f *fakeLeader) reportCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reports)
}

func (f *fakeLeader) lastHeartbeat() *pb.Heartbeat {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.hbs) == 0 {
		return nil
	}
	return f.hbs[len(f.hbs)-1]
}

type protoEnv struct {
	t     *testing.T
	conn  *transport.Conn // the leader's side
	subj  transport.Subjects
	store *transport.Store
	w     *Worker
	reg   *prometheus.Registry
	lead  *fakeLeader
	hook  chan struct{} // closed to release ranks held by the hook
	held  chan string

	// Test seams set with setHooks (guarded by mu): step replaces the
	// default step hook when it returns true; handler and openStore are
	// the worker's hooks of the same names.
	mu        sync.Mutex
	step      func(ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) bool
	handler   func(where string)
	openStore func(bucket string)
}

// setHooks installs the test seams (nil leaves one unset).
func (e *protoEnv) setHooks(step func(ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) bool,
	handler func(where string), openStore func(bucket string)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.step, e.handler, e.openStore = step, handler, openStore
}

func newProtoEnv(t *testing.T, retries int, mut func(*Config)) *protoEnv {
	srv := transporttest.RunServer(t)
	ncfg := transporttest.Config(srv)
	conn := transport.NewConn(transporttest.Connect(t, srv), ncfg.Subjects(), xlog.Test(t))
	e := &protoEnv{t: t, conn: conn, subj: ncfg.Subjects(), reg: prometheus.NewRegistry(),
		hook: make(chan struct{}), held: make(chan string, 16)}
	var err error
	if e.store, err = conn.OpenStore(context.Background(), transport.StoreConfig{Bucket: ncfg.Bucket}); err != nil {
		t.Fatal(err)
	}
	e.lead = startFakeLeader(t, conn, retries)
	cfg := DefaultConfig()
	cfg.ID = "pw"
	cfg.NATS = ncfg
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.RequestTimeout = 500 * time.Millisecond
	cfg.ReportBackoffMax = 50 * time.Millisecond
	cfg.GFLOPS = 2
	cfg.MetricsAddr = MetricsDisabled
	cfg.Registerer = e.reg
	cfg.Logger = xlog.Test(t)
	if mut != nil {
		mut(&cfg)
	}
	if e.w, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	e.w.hooks.handler = func(where string) {
		e.mu.Lock()
		h := e.handler
		e.mu.Unlock()
		if h != nil {
			h(where)
		}
	}
	e.w.hooks.openStore = func(bucket string) {
		e.mu.Lock()
		h := e.openStore
		e.mu.Unlock()
		if h != nil {
			h(bucket)
		}
	}
	e.w.hooks.progress = func(ctx context.Context, job string, epoch uint64, rank int, p ringattn.Progress) {
		e.mu.Lock()
		h := e.step
		e.mu.Unlock()
		if h != nil && h(ctx, job, epoch, rank, p) {
			return
		}
		if p.Step == 1 && !p.Done && strings.HasPrefix(job, "hold") {
			e.held <- job
			select {
			case <-e.hook:
			case <-ctx.Done():
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go e.w.Run(ctx) //nolint:errcheck
	t.Cleanup(func() { cancel(); <-e.w.Done() })
	select {
	case <-e.w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("worker not ready")
	}
	return e
}

// job uploads a one-rank attention job and returns its assignment.
func (e *protoEnv) job(id string, epoch uint64, seed uint64) *pb.Assignment {
	e.t.Helper()
	const b, h, n, d, block = 1, 2, 200, 16, 64
	r := testrand.New(seed)
	ctx := context.Background()
	for _, name := range []string{"q", "k", "v"} {
		x := r.Slice(b*h*n*d, testrand.Normal)
		if _, err := e.store.PutTensor(ctx, "in-"+id, name, x, transport.Shape{b, h, n, d}, block, transport.F32); err != nil {
			e.t.Fatal(err)
		}
	}
	p, err := shard.NewPlan(shard.Request{B: b, Hq: h, Hkv: h, D: d, N: n, Nk: n, Block: block, Ranks: 1})
	if err != nil {
		e.t.Fatal(err)
	}
	return &pb.Assignment{JobId: id, Epoch: epoch, Rank: 0, Size: 1, Plan: planPB(p, "pw"),
		Params:   &pb.KernelParams{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: b, Hq: h, Hkv: h, D: d, Scale: 0.25, WantLse: true},
		InputRef: "in-" + id, OutputRef: id}
}

func (e *protoEnv) assign(a *pb.Assignment) *pb.AssignmentAck {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ack, err := e.conn.Assign(ctx, "pw", a)
	if err != nil {
		e.t.Fatalf("assign: %v", err)
	}
	return ack
}

func (e *protoEnv) shardState(job string, epoch uint64) string {
	for _, s := range e.w.Shards() {
		if s.Job == job && s.Epoch == epoch {
			return s.State
		}
	}
	return ""
}

// TestWorkerAssignmentIdempotent: a re-issued running assignment does not
// restart the rank; reports are retried through RETRY until accepted; a
// re-issued finished assignment re-sends the same report; the checksums
// reported are those of the stored blocks.
func TestWorkerAssignmentIdempotent(t *testing.T) {
	e := newProtoEnv(t, 2, nil)
	a := e.job("hold-a", 1, 1)
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("first assignment rejected: %s", ack.Reason)
	}
	<-e.held
	// Re-issued while running (a new leader does this): no restart.
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("re-issued assignment rejected: %s", ack.Reason)
	}
	if got := counterValue(t, e.w.met.assignments.WithLabelValues("repeated")); got != 1 {
		t.Fatalf("repeated assignments = %v, want 1", got)
	}
	// Heartbeats list the running shard.
	checkFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		hb := e.lead.lastHeartbeat()
		if hb == nil || len(hb.Running) != 1 || hb.Running[0].JobId != "hold-a" || hb.Gflops != 2 || hb.Slots != 1 {
			return fmt.Errorf("last heartbeat %v", hb)
		}
		return nil
	})
	close(e.hook)
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st := e.shardState("hold-a", 1); st != "reported" {
			return fmt.Errorf("shard is %q", st)
		}
		return nil
	})
	if got := e.lead.reportCount(); got != 3 {
		t.Fatalf("leader saw %d report attempts, want 3 (RETRY, RETRY, ACCEPTED)", got)
	}
	if got := counterValue(t, e.w.met.shards.WithLabelValues("done")); got != 1 {
		t.Fatalf("shards done = %v, want 1 (no restart)", got)
	}
	// The checksums are those of the stored bytes.
	rep := e.lead.reports[2]
	done := rep.GetDone()
	if done == nil || len(done.Blocks) != 4 {
		t.Fatalf("report %v, want ShardDone with 4 blocks", rep)
	}
	for _, bc := range done.Blocks {
		o, err := e.store.GetBlock(context.Background(), "hold-a", "o", int(bc.Block))
		if err != nil {
			t.Fatal(err)
		}
		lse, err := e.store.GetBlock(context.Background(), "hold-a", "lse", int(bc.Block))
		if err != nil {
			t.Fatal(err)
		}
		if crc := crcOf(o); crc != bc.Crc32CO {
			t.Fatalf("block %d: reported crc32c(o) %08x, stored %08x", bc.Block, bc.Crc32CO, crc)
		}
		if crc := crcOf(lse); crc != bc.Crc32CLse {
			t.Fatalf("block %d: reported crc32c(lse) %08x, stored %08x", bc.Block, bc.Crc32CLse, crc)
		}
	}
	// Re-issued after it finished: the same report again, no recompute.
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("re-issued finished assignment rejected: %s", ack.Reason)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := e.lead.reportCount(); got != 4 {
			return fmt.Errorf("%d reports", got)
		}
		return nil
	})
	if !proto.Equal(e.lead.reports[3], rep) {
		t.Fatalf("re-sent report differs:\n%v\n%v", e.lead.reports[3], rep)
	}
	if got := counterValue(t, e.w.met.shards.WithLabelValues("done")); got != 1 {
		t.Fatalf("shards done = %v after the re-issue, want 1", got)
	}
}

func crcOf(x []float32) uint32 {
	_, crc := crcF32(nil, x)
	return crc
}

// TestWorkerAssignmentRejections: no free slot, stale epoch, malformed
// plans are rejected with a reason naming the problem; a newer epoch of a
// held job replaces it at once; a HeartbeatAck abort stops a shard.
func TestWorkerAssignmentRejections(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	a := e.job("hold-b", 2, 2)
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("rejected: %s", ack.Reason)
	}
	<-e.held
	other := e.job("other", 1, 3)
	if ack := e.assign(other); ack.Accepted || !strings.Contains(ack.Reason, "no free slot") {
		t.Fatalf("second job with one slot: %+v, want rejected for no free slot", ack)
	}
	old := proto.CloneOf(a)
	old.Epoch = 1
	if ack := e.assign(old); ack.Accepted || !strings.Contains(ack.Reason, "stale epoch") {
		t.Fatalf("older epoch: %+v, want rejected as stale", ack)
	}
	for _, c := range []struct {
		mut  func(*pb.Assignment)
		want string
	}{
		{func(a *pb.Assignment) { a.Rank = 3 }, "rank = 3"},
		{func(a *pb.Assignment) { a.Params.Hkv = 3 }, "Hkv"},
		{func(a *pb.Assignment) { a.Params.Scale = 0 }, "params.scale"},
		{func(a *pb.Assignment) { a.Plan.Ranks[0].KvBlocks = a.Plan.Ranks[0].KvBlocks[1:] }, "key/value block 0"},
		{func(a *pb.Assignment) { a.Plan.Ranks[0].WorkerId = "someone" }, "worker_id"},
		{func(a *pb.Assignment) { a.JobId = "a.b" }, "job_id"},
		{func(a *pb.Assignment) {
			a.Params.Kind, a.Params.DModel, a.Params.WantLse = pb.JobKind_JOB_KIND_MHA, 0, false
		}, "params.d_model"},
		{func(a *pb.Assignment) {
			a.Params.Kind, a.Params.DModel, a.Params.MhaBias = pb.JobKind_JOB_KIND_ATTENTION, 0, true
		}, "params.mha_bias"},
	} {
		bad := e.job("bad", 5, 4)
		c.mut(bad)
		// Field names compare case-insensitively (Hkv, params.hkv).
		if ack := e.assign(bad); ack.Accepted || !strings.Contains(strings.ToLower(ack.Reason), strings.ToLower(c.want)) {
			t.Errorf("malformed assignment: %+v, want rejected naming %q", ack, c.want)
		}
	}
	// A newer epoch of the held job takes over its slot at once.
	next := proto.CloneOf(a)
	next.Epoch = 3
	next.JobId = "hold-b"
	if ack := e.assign(next); !ack.Accepted {
		t.Fatalf("newer epoch rejected: %s", ack.Reason)
	}
	<-e.held
	if st := e.shardState("hold-b", 2); st != "" {
		t.Fatalf("epoch 2 still held (%s) after epoch 3 was assigned", st)
	}
	// The leader aborts epoch 3 through a heartbeat ack.
	e.lead.mu.Lock()
	e.lead.aborts = []*pb.ShardRef{{JobId: "hold-b", Epoch: 3, Rank: 0}}
	e.lead.mu.Unlock()
	checkFor(t, 2*time.Second, 10*time.Millisecond, func() error {
		if s := e.w.Shards(); len(s) != 0 {
			return fmt.Errorf("still holds %+v", s)
		}
		return nil
	})
	if got := counterValue(t, e.w.met.shards.WithLabelValues("aborted")); got != 2 {
		t.Fatalf("aborted shards = %v, want 2", got)
	}
	if n := e.lead.reportCount(); n != 0 {
		t.Fatalf("%d reports for aborted shards, want none", n)
	}
}

// TestWorkerNonFiniteInputFails: a NaN in an input block fails the shard
// with a fatal report naming the block.
func TestWorkerNonFiniteInputFails(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	a := e.job("nan", 1, 5)
	blk, err := e.store.GetBlock(context.Background(), "in-nan", "k", 2)
	if err != nil {
		t.Fatal(err)
	}
	blk[7] = float32(nanValue())
	if err := e.store.PutBlock(context.Background(), "in-nan", "k", 2, blk, transport.F32); err != nil {
		t.Fatal(err)
	}
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("rejected: %s", ack.Reason)
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if e.lead.reportCount() == 0 {
			return fmt.Errorf("no report yet")
		}
		return nil
	})
	f := e.lead.reports[0].GetFailed()
	if f == nil || !f.Fatal || f.Block != 2 || !strings.Contains(f.Reason, `"k" block 2`) {
		t.Fatalf("report %v, want a fatal failure naming k block 2", e.lead.reports[0])
	}
}

func nanValue() float64 {
	var z float64
	return z / z
}

// counterValue reads a counter or gauge.
func counterValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatalf("metric %v is neither a counter nor a gauge", m.Desc())
	return 0
}

// TestWorkerWaitsForNATS: a worker started before NATS keeps dialing and
// becomes ready once the server is up; a drain before that returns nil.
func TestWorkerWaitsForNATS(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := DefaultConfig()
	cfg.ID = "early"
	cfg.NATS.URLs = []string{fmt.Sprintf("nats://127.0.0.1:%d", port)}
	cfg.NATS.ConnectTimeout = 200 * time.Millisecond
	cfg.GFLOPS, cfg.MetricsAddr, cfg.Logger = 1, MetricsDisabled, xlog.Test(t)
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
		t.Fatal("ready without a server")
	case err := <-done:
		t.Fatalf("Run gave up without a server: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	transporttest.RunServerWith(t, transport.EmbeddedConfig{Port: port})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready 10 s after the server started")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after an abrupt stop: %v", err)
	}

	// Drained while still dialing: Run returns nil at once.
	cfg.ID = "never"
	cfg.NATS.URLs = []string{"nats://127.0.0.1:1"}
	w2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- w2.Run(context.Background()) }()
	<-w2.started
	start := time.Now()
	w2.Drain(context.Background())
	if err := <-done; err != nil || time.Since(start) > 5*time.Second {
		t.Fatalf("drain while dialing: Run = %v after %v, want nil at once", err, time.Since(start))
	}
}
