package coordinator

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/attnref"
	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestGradSharesOfLayerUnits: the shares the leader expects of a layer
// job's gradient units are the tensors internal/worker writes (its names),
// sized as the worker's shares of a block (LayerGradsFrom computes the
// shares of one block holding the whole sequence), the last block ragged;
// an attention job has none.
func TestGradSharesOfLayerUnits(t *testing.T) {
	for _, c := range []struct{ coord, worker string }{
		{tensorDXQ, worker.TensorDXQ}, {tensorDXKV, worker.TensorDXKV}, {tensorDWQ, worker.TensorDWQ},
		{tensorDWK, worker.TensorDWK}, {tensorDWV, worker.TensorDWV}, {tensorDWO, worker.TensorDWO},
		{tensorDBQ, worker.TensorDBQ}, {tensorDBK, worker.TensorDBK}, {tensorDBV, worker.TensorDBV}, {tensorDBO, worker.TensorDBO},
	} {
		if c.coord != c.worker {
			t.Fatalf("share %q, the worker writes %q", c.coord, c.worker)
		}
	}
	const b, n, block, dm, heads, d = 2, 70, 32, 12, 3, 4 // blocks of 32, 32, 6 rows
	spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_MHA, Mode: pb.JobMode_JOB_MODE_FORWARD_BACKWARD, B: b, N: n, Nk: n,
		Hq: heads, Hkv: heads, D: d, DModel: dm, Block: block, MhaBias: true}
	// The worker's shares of a block of `rows` rows, by name.
	r := testrand.New(7)
	hd := heads * d
	rnd := func(n int) []float32 { return r.Slice(n, testrand.Normal) }
	layer := &ringattn.Layer{DModel: dm, Heads: heads, D: d, Wq: rnd(hd * dm), Wk: rnd(hd * dm), Wv: rnd(hd * dm), Wo: rnd(dm * hd),
		Bq: rnd(hd), Bk: rnd(hd), Bv: rnd(hd), Bo: rnd(dm)}
	sizes := func(rows int) map[string]int {
		x, t4 := b*rows*dm, b*heads*rows*d
		g, err := worker.LayerGradsFrom(layer, b, rows, rnd(x), rnd(x), rnd(t4), rnd(t4), rnd(t4), rnd(t4))
		if err != nil {
			t.Fatal(err)
		}
		return map[string]int{tensorDXQ: len(g.DX), tensorDXKV: len(g.DX), tensorDWQ: len(g.DWq), tensorDWK: len(g.DWk),
			tensorDWV: len(g.DWv), tensorDWO: len(g.DWo), tensorDBQ: len(g.DBq), tensorDBK: len(g.DBk), tensorDBV: len(g.DBv), tensorDBO: len(g.DBo)}
	}
	for _, blk := range []int32{0, 2} {
		want := sizes(min(block, n-int(blk)*block))
		for _, dq := range []bool{true, false} {
			var names []string
			for _, s := range gradShares(spec, dq, blk) {
				names = append(names, s.name)
				if int(s.elems) != want[s.name] {
					t.Errorf("block %d: share %s of %d values, the worker's has %d", blk, s.name, s.elems, want[s.name])
				}
			}
			wantNames := []string{tensorDXKV, tensorDWK, tensorDWV, tensorDBK, tensorDBV}
			if dq {
				wantNames = []string{tensorDXQ, tensorDWQ, tensorDWO, tensorDBQ, tensorDBO}
			}
			if !slices.Equal(names, wantNames) {
				t.Errorf("block %d dq=%v: shares %v, want %v", blk, dq, names, wantNames)
			}
		}
	}
	spec.MhaBias = false
	if s := gradShares(spec, false, 0); len(s) != 3 {
		t.Errorf("without biases: shares %v, want dxkv, dwk, dwv", s)
	}
	spec.Kind = pb.JobKind_JOB_KIND_ATTENTION
	if s := gradShares(spec, true, 0); s != nil {
		t.Errorf("attention job: shares %v, want none", s)
	}
}

// layerJob is a small layer forward+backward problem (causal, biases):
// B=1, N=200 in blocks of 32 (7 blocks, the last of 8 rows), d_model 16,
// 2 heads of D=8.
type layerJob struct {
	b, n, dm, heads, d, block int
	x, dy                     []float32
	ws                        map[string][]float32
}

func newLayerJob(seed uint64) *layerJob {
	j := &layerJob{b: 1, n: 200, dm: 16, heads: 2, d: 8, block: 32, ws: map[string][]float32{}}
	r := testrand.New(seed)
	hd := j.heads * j.d
	j.x, j.dy = r.Slice(j.b*j.n*j.dm, testrand.Normal), r.Slice(j.b*j.n*j.dm, testrand.Normal)
	for _, name := range []string{"wq", "wk", "wv", "wo"} {
		w := r.Slice(hd*j.dm, testrand.Normal)
		for i := range w {
			w[i] /= 4 // keep the projections O(1)
		}
		j.ws[name] = w
	}
	for _, name := range []string{"bq", "bk", "bv"} {
		j.ws[name] = r.Slice(hd, testrand.Normal)
	}
	j.ws["bo"] = r.Slice(j.dm, testrand.Normal)
	return j
}

// tamperFunc changes the store as the leader is about to handle report
// rep of job id (the leader's report hook).
type tamperFunc func(ctx context.Context, st *transport.Store, id string, rep *pb.Report)

// runLayerJob runs j on a single-node coordinator with two real workers,
// tamper installed as the leader's report hook, and returns the finished
// job's status and record, the store and the client.
func runLayerJob(t *testing.T, j *layerJob, tamper tamperFunc) (*pb.JobStatus, *cpb.Job, *testCluster, *transport.Store, *client.Client) {
	t.Helper()
	tc := newCluster(t, 1, nil)
	ld := tc.leader()
	ncfg := transport.DefaultConfig()
	ncfg.URLs = []string{tc.url}
	for _, id := range []string{"w0", "w1"} {
		startRealWorker(t, ncfg, id)
	}
	waitWorkers(t, connect(t, tc.url), 2)
	st := openStore(t, tc.url)
	var (
		mu  sync.Mutex
		job string
	)
	tc.setHooks(&hooks{report: func(data []byte) {
		var rep pb.Report
		if proto.Unmarshal(data, &rep) != nil || rep.GetDone() == nil {
			return
		}
		mu.Lock()
		id := job
		mu.Unlock()
		if rep.GetJobId() != id {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tamper(ctx, st, id, &rep)
	}})
	cl, err := client.Connect(context.Background(), ncfg, client.Options{})
	noErr(t, err)
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	hd := j.heads * j.d
	w := func(name string, shape ...int) *tensor.Tensor { return tensor.New(j.ws[name], shape...) }
	// Submit under the lock: the hook knows the id before any report.
	mu.Lock()
	sub, err := cl.SubmitMHABackward(ctx, tensor.New(j.x, j.b, j.n, j.dm), tensor.New(j.dy, j.b, j.n, j.dm),
		client.MHAWeights{Heads: j.heads, Wq: w("wq", hd, j.dm), Wk: w("wk", hd, j.dm), Wv: w("wv", hd, j.dm), Wo: w("wo", j.dm, hd),
			Bq: w("bq", hd), Bk: w("bk", hd), Bv: w("bv", hd), Bo: w("bo", j.dm)},
		client.JobOptions{Causal: true, Block: j.block})
	if err == nil {
		job = sub.GetId()
	}
	mu.Unlock()
	noErr(t, err)
	fin, err := cl.Watch(ctx, job, 0, nil)
	noErr(t, err)
	if fin.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", fin.GetState(), fin.GetReason())
	}
	jr := tc.nodes[ld].State().Job(job)
	if bad, err := checkOutputs(ctx, st, jr, nil); err != nil || len(bad) != 0 {
		t.Fatalf("the succeeded job's outputs: %v, %v: want every gradient block and share stored", bad, err)
	}
	return fin, jr, tc, st, cl
}

// checkLayerGrads compares y's gradients of a succeeded job, as the SDK
// sums them, with the float64 reference: |got - ref| <= 2e-4·max(1, max|ref|).
func checkLayerGrads(t *testing.T, cl *client.Client, fin *pb.JobStatus, j *layerJob) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := cl.FetchMHAGrads(ctx, fin)
	noErr(t, err)
	ref := &attnref.MHA{B: j.b, N: j.n, DModel: j.dm, Heads: j.heads, D: j.d, Mask: attnref.Mask{Causal: true}}
	ws := j.ws
	want := ref.Backward(j.x, ws["wq"], ws["wk"], ws["wv"], ws["wo"], ws["bq"], ws["bk"], ws["bv"], ws["bo"], j.dy)
	for _, g := range []struct {
		name string
		got  *tensor.Tensor
		want []float64
	}{
		{"dx", res.DX, want.DX}, {"dwq", res.DWq, want.DWq}, {"dwk", res.DWk, want.DWk}, {"dwv", res.DWv, want.DWv},
		{"dwo", res.DWo, want.DWo}, {"dbq", res.DBq, want.DBq}, {"dbk", res.DBk, want.DBk}, {"dbv", res.DBv, want.DBv},
		{"dbo", res.DBo, want.DBo},
	} {
		tol := 2e-4 * max(1, attnref.MaxAbs(g.want))
		if e := attnref.MaxAbsDiff(g.got.Data, g.want); !(e <= tol) {
			t.Errorf("%s differs from the float64 reference by %g, want <= %g", g.name, e, tol)
		}
	}
}

// TestCoordinatorRedoesUnitWithoutShare runs a layer forward+backward job
// on two real workers, the leader's report hook taking away, in the first
// backward epoch (2), a share of two units just before the report
// declaring them done is handled: the dwk share of key block 1 deleted (as
// if its worker had reported the unit without writing it), the dxq share
// of query block 0 overwritten with half its values. The leader's check
// finds both (verify failures "missing" and "mismatch"), redoes exactly
// those two units in one more epoch (the fencing rule: every query block,
// the other units listed done), and the job succeeds with every share
// stored, its gradients exact against the float64 reference.
func TestCoordinatorRedoesUnitWithoutShare(t *testing.T) {
	j := newLayerJob(91)
	var tampered atomic.Int32
	fin, jr, tc, st, cl := runLayerJob(t, j, func(ctx context.Context, st *transport.Store, id string, rep *pb.Report) {
		if rep.GetEpoch() != 2 {
			return
		}
		for _, g := range rep.GetDone().GetDkvBlocks() {
			if g.GetBlock() == 1 {
				if err := st.ObjectStore().Delete(ctx, transport.BlockName(id, tensorDWK, 1)); err != nil {
					t.Errorf("deleting the dwk share of key block 1: %v", err)
				}
				tampered.Add(1)
			}
		}
		for _, g := range rep.GetDone().GetDqBlocks() {
			if g.GetBlock() == 0 {
				dxq, err := st.GetBlock(ctx, id, tensorDXQ, 0)
				if err == nil {
					err = st.PutBlock(ctx, id, tensorDXQ, 0, dxq[:len(dxq)/2], transport.F32)
				}
				if err != nil {
					t.Errorf("halving the dxq share of query block 0: %v", err)
				}
				tampered.Add(1)
			}
		}
	})
	if tampered.Load() != 2 {
		t.Fatalf("%d shares taken away, want 2 (at the epoch-2 reports of dk/dv unit 1 and dq unit 0)", tampered.Load())
	}
	if fin.GetEpoch() != 3 || jr.Redos != 1 {
		t.Fatalf("finished in epoch %d after %d redos, want epoch 3 after 1 (forward, backward, one redo)", fin.GetEpoch(), jr.Redos)
	}
	ld := tc.leader()
	for _, p := range []string{"missing", "mismatch"} {
		if v := metricLabel(t, tc.nodes[ld], "ringattn_output_verify_failures_total", "problem", p); v != 1 {
			t.Errorf("verify failures{problem=%q} = %v, want 1", p, v)
		}
	}
	// Only the two units were written again, by epoch 3.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for blk := range 7 {
		for _, g := range []struct {
			tensor string
			redone bool
		}{{transport.TensorDQ, blk == 0}, {transport.TensorDK, blk == 1}, {transport.TensorDV, blk == 1}} {
			want := uint64(2)
			if g.redone {
				want = 3
			}
			if bi, err := st.BlockInfo(ctx, fin.GetId(), g.tensor, blk); err != nil || bi.Epoch != want {
				t.Errorf("%s block %d: %+v, %v: want written by epoch %d", g.tensor, blk, bi, err, want)
			}
		}
	}
	checkLayerGrads(t, cl, fin, j)
}

// TestCoordinatorRedoesLayerForwardWithoutO: the forward pass of a layer
// forward+backward job also writes the attention's o and lse, which its
// backward reads. An o block taken away as its block's report arrives
// (o has no reported checksum: presence and size are checked) is redone
// by a forward epoch before the backward starts; the job is exact.
func TestCoordinatorRedoesLayerForwardWithoutO(t *testing.T) {
	j := newLayerJob(92)
	var tampered atomic.Int32
	fin, jr, tc, _, cl := runLayerJob(t, j, func(ctx context.Context, st *transport.Store, id string, rep *pb.Report) {
		if rep.GetEpoch() != 1 {
			return
		}
		for _, c := range rep.GetDone().GetBlocks() {
			if c.GetBlock() == 2 {
				if err := st.ObjectStore().Delete(ctx, transport.BlockName(id, transport.TensorO, 2)); err != nil {
					t.Errorf("deleting o block 2: %v", err)
				}
				tampered.Add(1)
			}
		}
	})
	if tampered.Load() != 1 {
		t.Fatalf("o block 2 taken away %d times, want once", tampered.Load())
	}
	// Epoch 1 forward, 2 the forward redo of block 2, 3 the backward.
	if fin.GetEpoch() != 3 || jr.Redos != 1 {
		t.Fatalf("finished in epoch %d after %d redos, want epoch 3 after 1", fin.GetEpoch(), jr.Redos)
	}
	if v := metricLabel(t, tc.nodes[tc.leader()], "ringattn_output_verify_failures_total", "problem", "missing"); v != 1 {
		t.Errorf("verify failures{problem=missing} = %v, want 1", v)
	}
	checkLayerGrads(t, cl, fin, j)
}

// startRealWorker runs an internal/worker worker in this process until
// the test ends.
func startRealWorker(t *testing.T, ncfg transport.Config, id string) {
	t.Helper()
	cfg := worker.DefaultConfig()
	cfg.ID = id
	cfg.NATS = ncfg
	cfg.NATS.Name = id
	cfg.HeartbeatInterval = 100 * time.Millisecond
	cfg.RecvTimeout = time.Second
	cfg.RequestTimeout = time.Second
	cfg.ReportBackoffMax = 200 * time.Millisecond
	cfg.GFLOPS = 1
	cfg.MetricsAddr = worker.MetricsDisabled
	cfg.Threads = 1
	cfg.Logger = xlog.Test(t).With("side", id)
	w, err := worker.New(cfg)
	noErr(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-w.Done()
	})
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker %s stopped: %v", id, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("worker %s not ready", id)
	}
}
