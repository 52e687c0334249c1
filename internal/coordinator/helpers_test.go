package coordinator

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// checkFor polls fn every `every` until it returns nil or total elapses.
func checkFor(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(every)
	}
	t.Fatalf("condition not met after %v: %v", total, err)
}

func noErr(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// startNATS runs an embedded nats-server on 127.0.0.1 with a random port.
func startNATS(t testing.TB) string {
	t.Helper()
	e, err := transport.StartEmbedded(transport.EmbeddedConfig{})
	noErr(t, err)
	t.Cleanup(e.Shutdown)
	return e.ClientURL()
}

// connect returns a control-plane connection to the NATS server at url
// (default subjects), closed when the test ends. Hostile tests reach the
// raw connection with NATS().
func connect(t testing.TB, url string) *transport.Conn {
	t.Helper()
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{url}
	nc, err := transport.Connect(cfg, xlog.Discard())
	noErr(t, err)
	t.Cleanup(nc.Close)
	return transport.NewConn(nc, cfg.Subjects(), xlog.Discard())
}

// testConfig is a coordinator config with test timings: 50 ms Raft
// timeouts (as hashicorp/raft's own tests) and a short worker heartbeat
// timeout.
func testConfig(t testing.TB, id, natsURL string) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr = ""
	cfg.NATS.URLs = []string{natsURL}
	cfg.RaftHeartbeatTimeout = 50 * time.Millisecond
	cfg.RaftElectionTimeout = 50 * time.Millisecond
	cfg.RaftLeaderLeaseTimeout = 50 * time.Millisecond
	cfg.RaftCommitTimeout = 5 * time.Millisecond
	cfg.HeartbeatTimeout = 1500 * time.Millisecond
	cfg.AssignTimeout = 500 * time.Millisecond
	cfg.SchedulerInterval = 20 * time.Millisecond
	cfg.ApplyTimeout = 2 * time.Second
	// Test workers' speeds are made up and their jobs tiny: spread every
	// job over the workers as the size rule would a big one (the rule has
	// its own tests, scheduler_test.go).
	cfg.MinRankTime = 0
	return cfg
}

// testCluster is n coordinators over raft's in-memory transport, sharing
// one NATS server.
type testCluster struct {
	t     testing.TB
	url   string
	cfgs  []Config
	trans []*raft.InmemTransport
	nodes []*Coordinator // nil when stopped
}

func newCluster(t testing.TB, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, url: startNATS(t)}
	var peers []Peer
	for i := range n {
		addr, tr := raft.NewInmemTransportWithTimeout(raft.ServerAddress(fmt.Sprintf("inmem-%d", i)), 500*time.Millisecond)
		tc.trans = append(tc.trans, tr)
		peers = append(peers, Peer{ID: fmt.Sprintf("c%d", i), Addr: string(addr)})
	}
	tc.connectAll()
	for i := range n {
		cfg := testConfig(t, peers[i].ID, tc.url)
		cfg.Peers = peers
		if tweak != nil {
			tweak(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
		tc.nodes = append(tc.nodes, nil)
		tc.start(i)
	}
	t.Cleanup(tc.stopAll)
	return tc
}

func (tc *testCluster) connectAll() {
	for i, a := range tc.trans {
		for j, b := range tc.trans {
			if i != j {
				a.Connect(b.LocalAddr(), b)
			}
		}
	}
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	c, err := New(tc.cfgs[i], Deps{
		Logger:        tc.logger(i),
		Registerer:    prometheus.NewRegistry(),
		RaftTransport: tc.trans[i],
	})
	noErr(tc.t, err)
	tc.nodes[i] = c
}

// logger logs through t.Log in tests; benchmarks and fuzz targets stay quiet.
func (tc *testCluster) logger(i int) *slog.Logger {
	switch tc.t.(type) {
	case *testing.B, *testing.F:
		return xlog.Discard()
	}
	return xlog.Test(tc.t).With("test_node", tc.cfgs[i].NodeID)
}

// stop closes node i (its transport goes with it, as when it dies).
func (tc *testCluster) stop(i int) {
	if c := tc.nodes[i]; c != nil {
		tc.nodes[i] = nil
		if err := c.Close(); err != nil {
			tc.t.Logf("closing %s: %v", c.NodeID(), err)
		}
	}
}

// restart starts node i again on its data dir with a fresh transport at
// the same address.
// kill stops node i as if it crashed: no leadership handoff.
func (tc *testCluster) kill(i int) {
	if c := tc.nodes[i]; c != nil {
		tc.nodes[i] = nil
		if err := c.crash(); err != nil {
			tc.t.Logf("killing %s: %v", c.NodeID(), err)
		}
	}
}

func (tc *testCluster) restart(i int) {
	tc.t.Helper()
	_, tr := raft.NewInmemTransportWithTimeout(tc.trans[i].LocalAddr(), 500*time.Millisecond)
	tc.trans[i] = tr
	tc.connectAll()
	tc.start(i)
}

func (tc *testCluster) stopAll() {
	for i := range tc.nodes {
		tc.stop(i)
	}
}

// leader waits for exactly one serving leader among the running nodes.
func (tc *testCluster) leader() int {
	tc.t.Helper()
	idx := -1
	checkFor(tc.t, 10*time.Second, 10*time.Millisecond, func() error {
		idx = -1
		for i, c := range tc.nodes {
			if c != nil && c.IsLeader() && c.Serving() {
				if idx >= 0 {
					return errors.New("two serving leaders")
				}
				idx = i
			}
		}
		if idx < 0 {
			return errors.New("no serving leader")
		}
		return nil
	})
	return idx
}

// converged waits until every running node has applied the same index and
// holds an identical state, and returns that state.
func (tc *testCluster) converged() *State {
	tc.t.Helper()
	var st *State
	checkFor(tc.t, 10*time.Second, 20*time.Millisecond, func() error {
		st = nil
		var idx uint64
		for _, c := range tc.nodes {
			if c == nil {
				continue
			}
			s := c.State()
			if st == nil {
				st, idx = s, c.AppliedIndex()
				continue
			}
			if c.AppliedIndex() != idx || !s.Equal(st) {
				return fmt.Errorf("node %s at index %d differs from index %d", c.NodeID(), c.AppliedIndex(), idx)
			}
		}
		return nil
	})
	return st
}

// api calls one client API endpoint through transport's APIClient, once
// within timeout (the client retries a busy or absent leader until then).
// An error answer comes back in reply's error field, not as err.
func api(nc *transport.Conn, endpoint string, req, reply proto.Message, timeout time.Duration) error {
	cl := transport.NewAPIClient(nc)
	cl.Timeout = timeout
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		got proto.Message
		err error
	)
	switch endpoint {
	case EndpointSubmit:
		got, err = cl.Submit(ctx, req.(*pb.SubmitRequest))
	case EndpointGet:
		got, err = cl.Get(ctx, req.(*pb.GetRequest))
	case EndpointCancel:
		got, err = cl.Cancel(ctx, req.(*pb.CancelRequest))
	case EndpointList:
		got, err = cl.List(ctx, req.(*pb.ListRequest))
	case EndpointCluster:
		got, err = cl.Cluster(ctx, req.(*pb.ClusterRequest))
	default:
		return fmt.Errorf("unknown endpoint %q", endpoint)
	}
	if _, isAPI := errors.AsType[*transport.APIError](err); err != nil && !isAPI {
		return err
	}
	proto.Reset(reply)
	proto.Merge(reply, got)
	return nil
}

type errReply interface {
	proto.Message
	GetError() *pb.Error
}

// retryable reports whether a client should retry: no leader answered, or
// it answered NOT_LEADER/UNAVAILABLE/BUSY (as the SDK does).
func retryable(err error, e *pb.Error) bool {
	if err != nil {
		return true
	}
	switch e.GetCode() {
	case pb.ErrorCode_ERROR_CODE_NOT_LEADER, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_BUSY:
		return true
	}
	return false
}

// apiRetry calls an endpoint until a leader gives a definite answer.
func apiRetry[R errReply](t testing.TB, nc *transport.Conn, endpoint string, req proto.Message, newReply func() R) R {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := newReply()
		err := api(nc, endpoint, req, r, time.Second)
		if !retryable(err, r.GetError()) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no definite answer: %v %v", endpoint, err, r.GetError())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func submit(t testing.TB, nc *transport.Conn, spec *pb.JobSpec) *pb.SubmitReply {
	t.Helper()
	r := apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: spec}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
	if r.Error != nil {
		t.Fatalf("submit: %v", r.Error)
	}
	return r
}

func getJob(t testing.TB, nc *transport.Conn, id string) *pb.JobStatus {
	t.Helper()
	r := apiRetry(t, nc, EndpointGet, &pb.GetRequest{JobId: id}, func() *pb.GetReply { return &pb.GetReply{} })
	if r.Error != nil {
		t.Fatalf("get %s: %v", id, r.Error)
	}
	return r.Job
}

func waitState(t testing.TB, nc *transport.Conn, id string, want pb.JobState, total time.Duration) *pb.JobStatus {
	t.Helper()
	var js *pb.JobStatus
	checkFor(t, total, 20*time.Millisecond, func() error {
		js = getJob(t, nc, id)
		if js.State != want {
			return fmt.Errorf("job %s is %v (epoch %d, %d/%d blocks, %q), want %v", id, js.State, js.Epoch, js.BlocksDone, js.BlocksTotal, js.Reason, want)
		}
		return nil
	})
	return js
}

// attnSpec is a small attention job: n tokens in blocks of 64.
func attnSpec(key string, n int64) *pb.JobSpec {
	return &pb.JobSpec{
		Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 4, Hkv: 2, N: n, Nk: n, D: 32, Block: 64,
		Mask: &pb.Mask{Causal: true}, IdempotencyKey: key, InputRef: "in-" + key,
	}
}

// testWorker speaks the worker side of control.proto through transport's
// typed calls: it heartbeats (SendHeartbeat), accepts assignments
// idempotently (ServeAssignments), "computes" for a while and reports each
// shard (Report) until the report is acknowledged. It computes nothing:
// the coordinator never sees tensors.
type testWorker struct {
	t      testing.TB
	id     string
	nc     *transport.Conn
	gflops float64
	slots  int32
	every  time.Duration

	// gate, when set, holds finished shards' reports until it is closed.
	gate *gate
	// stepping: heartbeats show each running shard's steps_done growing
	// (by one a heartbeat); otherwise it stays 0 (a stuck rank).
	stepping bool
	// skip: output blocks it reports without writing them; lie: blocks
	// whose checksum it reports wrong, for that many reports.
	skip   map[int32]bool
	lie    map[int32]int
	stores map[string]*transport.Store // by bucket (the assignment's)

	mu       sync.Mutex
	delay    time.Duration
	fail     string // when set, report failures with this reason
	fatal    bool
	running  map[shardKey]bool     // true once its report is acknowledged
	steps    map[shardKey]int64    // steps_done shown in heartbeats
	assigned map[shardKey]int      // assignments received
	senders  map[shardKey][]string // leader of each assignment received
	aborted  []*pb.ShardRef
	stopped  bool
	stopSrv  transport.StopFunc
	done     chan struct{}
	wg       sync.WaitGroup
}

func newTestWorker(t testing.TB, url, id string, gflops float64, delay time.Duration) *testWorker {
	t.Helper()
	w := &testWorker{t: t, id: id, nc: connect(t, url), gflops: gflops, slots: 2,
		every: 100 * time.Millisecond, delay: delay, running: map[shardKey]bool{}, steps: map[shardKey]int64{}, assigned: map[shardKey]int{}, senders: map[shardKey][]string{}, done: make(chan struct{})}
	var err error
	w.stopSrv, err = w.nc.ServeAssignments(id, transport.ServeConfig{}, w.onAssign)
	noErr(t, err)
	w.wg.Add(1)
	go w.heartbeats()
	t.Cleanup(w.kill)
	return w
}

func (w *testWorker) heartbeat(leaving bool) {
	w.mu.Lock()
	hb := &pb.Heartbeat{WorkerId: w.id, Slots: w.slots, Gflops: w.gflops, Version: "test", Leaving: leaving, SentUnixMs: time.Now().UnixMilli()}
	for k, acked := range w.running {
		if !acked {
			if w.stepping {
				w.steps[k]++
			}
			hb.Running = append(hb.Running, &pb.ShardRef{JobId: k.job, Epoch: k.epoch, Rank: k.rank, StepsDone: w.steps[k], StepsTotal: 1000})
		}
	}
	w.mu.Unlock()
	if leaving {
		_ = w.nc.PublishHeartbeat(hb)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	ack, err := w.nc.SendHeartbeat(ctx, hb)
	if err == nil && len(ack.Abort) > 0 {
		w.mu.Lock()
		w.aborted = append(w.aborted, ack.Abort...)
		for _, ref := range ack.Abort {
			w.running[shardKey{ref.JobId, ref.Epoch, ref.Rank}] = true
		}
		w.mu.Unlock()
	}
}

func (w *testWorker) heartbeats() {
	defer w.wg.Done()
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		w.heartbeat(false)
		select {
		case <-w.done:
			return
		case <-t.C:
		}
	}
}

func (w *testWorker) onAssign(a *pb.Assignment) *pb.AssignmentAck {
	k := shardKey{a.JobId, a.Epoch, a.Rank}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return nil
	}
	w.assigned[k]++
	w.senders[k] = append(w.senders[k], a.LeaderId)
	_, dup := w.running[k]
	if !dup {
		w.running[k] = false
	}
	w.mu.Unlock()
	if a.Plan.Ranks[a.Rank].WorkerId != w.id || a.Params.GetScale() == 0 || a.OutputRef != a.JobId {
		w.t.Errorf("worker %s: inconsistent assignment %v", w.id, a)
	}
	if !dup {
		w.wg.Add(1)
		go w.run(a)
	}
	return &pb.AssignmentAck{Accepted: true}
}

func (w *testWorker) run(a *pb.Assignment) {
	defer w.wg.Done()
	k := shardKey{a.JobId, a.Epoch, a.Rank}
	w.mu.Lock()
	delay := w.delay
	w.mu.Unlock()
	select {
	case <-w.done:
		return
	case <-time.After(delay):
	}
	if w.gate != nil {
		select {
		case <-w.gate.wait():
		case <-w.done:
			return
		}
	}
	rep := &pb.Report{WorkerId: w.id, JobId: a.JobId, Epoch: a.Epoch, Rank: a.Rank}
	w.mu.Lock()
	fail, fatal := w.fail, w.fatal
	w.mu.Unlock()
	if fail != "" {
		rep.Result = &pb.Report_Failed{Failed: &pb.ShardFailed{Reason: fail, Fatal: fatal, Block: -1}}
	} else {
		done := &pb.ShardDone{}
		for _, b := range writtenBlocks(a.Plan, a.Rank) { // its q_blocks, or with head groups the blocks it writes
			bc, err := w.writeBlock(a, b)
			if err != nil {
				w.t.Logf("worker %s: writing block %d of %s: %v", w.id, b, a.JobId, err)
				return
			}
			done.Blocks = append(done.Blocks, bc)
		}
		rep.Result = &pb.Report_Done{Done: done}
	}
	for {
		select {
		case <-w.done:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		ack, err := w.nc.Report(ctx, rep)
		cancel()
		if err == nil {
			switch ack.Status {
			case pb.ReportStatus_REPORT_STATUS_ACCEPTED, pb.ReportStatus_REPORT_STATUS_DUPLICATE,
				pb.ReportStatus_REPORT_STATUS_STALE, pb.ReportStatus_REPORT_STATUS_REJECTED:
				w.mu.Lock()
				w.running[k] = true
				w.mu.Unlock()
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// outputData is what a test worker writes as output block b of a job.
func outputData(job string, b int32) []float32 {
	return []float32{float32(b), float32(len(job)), -2.5, 4}
}

func crcOfF32(x []float32) uint32 {
	buf := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return transport.CRC32C(buf)
}

// writeBlock writes output block b of assignment a to the store (unless
// told to skip it) and returns the checksums to report (wrong ones when
// told to lie).
func (w *testWorker) writeBlock(a *pb.Assignment, b int32) (*pb.BlockChecksum, error) {
	w.mu.Lock()
	skip := w.skip[b]
	lie := w.lie[b] > 0
	if lie {
		w.lie[b]--
	}
	bucket := cmp.Or(a.GetBucket(), transport.DefaultBucket)
	st := w.stores[bucket]
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st == nil {
		var err error
		if st, err = w.nc.OpenStore(ctx, transport.StoreConfig{Bucket: bucket}); err != nil {
			return nil, err
		}
		w.mu.Lock()
		if w.stores == nil {
			w.stores = map[string]*transport.Store{}
		}
		w.stores[bucket] = st
		w.mu.Unlock()
	}
	tensors := []string{transport.TensorO}
	if a.Params.GetKind() == pb.JobKind_JOB_KIND_MHA {
		tensors = []string{"y"}
	} else if a.Params.GetWantLse() {
		tensors = append(tensors, transport.TensorLSE)
	}
	data := outputData(a.JobId, b)
	bc := &pb.BlockChecksum{Block: b, Crc32CO: crcOfF32(data)}
	for _, t := range tensors {
		if skip {
			break
		}
		if err := st.PutBlock(ctx, a.OutputRef, t, int(b), data, transport.F32); err != nil {
			return nil, err
		}
	}
	if len(tensors) > 1 {
		bc.Crc32CLse = bc.Crc32CO
	}
	if lie {
		bc.Crc32CO ^= 0xdeadbeef
	}
	return bc, nil
}

// kill stops the worker without a word (a crash).
func (w *testWorker) kill() {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	w.stopped = true
	w.mu.Unlock()
	_ = w.stopSrv()
	close(w.done)
	w.wg.Wait()
}

// leave announces the worker is leaving, then stops.
func (w *testWorker) leave() {
	w.kill()
	w.heartbeat(true)
}

func (w *testWorker) set(delay time.Duration, fail string, fatal bool) {
	w.mu.Lock()
	w.delay, w.fail, w.fatal = delay, fail, fatal
	w.mu.Unlock()
}

// sentBy returns the shards for which leader sent an assignment.
func (w *testWorker) sentBy(leader string) []shardKey {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []shardKey
	for k, ls := range w.senders {
		if slices.Contains(ls, leader) {
			out = append(out, k)
		}
	}
	return out
}

func (w *testWorker) assignments() map[shardKey]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[shardKey]int{}
	for k, v := range w.assigned {
		out[k] = v
	}
	return out
}

// restartWith restarts node i with a tensor deleter.
func (tc *testCluster) restartWith(i int, td TensorDeleter) {
	tc.t.Helper()
	_, tr := raft.NewInmemTransportWithTimeout(tc.trans[i].LocalAddr(), 500*time.Millisecond)
	tc.trans[i] = tr
	tc.connectAll()
	c, err := New(tc.cfgs[i], Deps{
		Logger:        tc.logger(i),
		Registerer:    prometheus.NewRegistry(),
		RaftTransport: tc.trans[i],
		Tensors:       td,
	})
	noErr(tc.t, err)
	tc.nodes[i] = c
}

// setHooks installs test hooks on every running node.
func (tc *testCluster) setHooks(h *hooks) {
	for _, c := range tc.nodes {
		if c != nil {
			c.setHooks(h)
		}
	}
}

// metricLabel returns the value of one labelled series of a counter.
func metricLabel(t testing.TB, c *Coordinator, name, label, value string) float64 {
	t.Helper()
	mfs, err := c.deps.Gatherer.Gather()
	noErr(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// metricValue returns the sum of a metric's series in c's registry.
func metricValue(t testing.TB, c *Coordinator, name string) float64 {
	t.Helper()
	mfs, err := c.deps.Gatherer.Gather()
	noErr(t, err)
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

// gate holds test workers' reports while shut.
type gate struct {
	mu sync.Mutex
	ch chan struct{} // nil: open
}

func (g *gate) wait() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	return g.ch
}

func (g *gate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

// waitWorkers waits until the leader's registry holds n workers.
func waitWorkers(t testing.TB, nc *transport.Conn, n int) {
	t.Helper()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		r := &pb.ClusterReply{}
		if err := api(nc, EndpointCluster, &pb.ClusterRequest{}, r, time.Second); err != nil {
			return err
		}
		if len(r.Workers) != n {
			return fmt.Errorf("%d workers registered, want %d", len(r.Workers), n)
		}
		return nil
	})
}

// flush waits until the server has processed nc's subscriptions.
func flush(t testing.TB, nc *transport.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	noErr(t, nc.Flush(ctx))
}
