package worker

import (
	"context"
	"math"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// mhaGradJob is a layer forward+backward problem: x, dY, the weights
// (biases when bias) and its float64 reference.
type mhaGradJob struct {
	b, n, dModel, heads, d, block int
	bias, causal                  bool
	strategy                      string // "" (auto)
	x, dy                         []float32
	ws                            map[string][]float32
	ref                           *attnref.MHA
}

// newMHAGradJob is B=2, N=700 (block 64: 11 blocks, the last ragged),
// d_model 32, 4 heads of D=16: enough work for the leader to plan three
// ranks.
func newMHAGradJob(seed uint64, bias, causal bool) *mhaGradJob {
	j := &mhaGradJob{b: 2, n: 700, dModel: 32, heads: 4, d: 16, block: 64, bias: bias, causal: causal, ws: map[string][]float32{}}
	r := testrand.New(seed)
	j.x = r.Slice(j.b*j.n*j.dModel, testrand.Normal)
	j.dy = r.Slice(j.b*j.n*j.dModel, testrand.Normal)
	hd := j.heads * j.d
	for _, name := range []string{"wq", "wk", "wv", "wo"} {
		w := r.Slice(hd*j.dModel, testrand.Normal)
		for i := range w {
			w[i] /= 5 // keep the projections O(1)
		}
		j.ws[name] = w
	}
	if bias {
		j.ws["bq"], j.ws["bk"], j.ws["bv"] = r.Slice(hd, testrand.Normal), r.Slice(hd, testrand.Normal), r.Slice(hd, testrand.Normal)
		j.ws["bo"] = r.Slice(j.dModel, testrand.Normal)
	}
	j.ref = &attnref.MHA{B: j.b, N: j.n, DModel: j.dModel, Heads: j.heads, D: j.d, Mask: attnref.Mask{Causal: causal}}
	return j
}

func (j *mhaGradJob) weights() client.MHAWeights {
	t := func(name string, shape ...int) *tensor.Tensor {
		if w, ok := j.ws[name]; ok {
			return tensor.New(w, shape...)
		}
		return nil
	}
	hd := j.heads * j.d
	return client.MHAWeights{Heads: j.heads, Wq: t("wq", hd, j.dModel), Wk: t("wk", hd, j.dModel), Wv: t("wv", hd, j.dModel),
		Wo: t("wo", j.dModel, hd), Bq: t("bq", hd), Bk: t("bk", hd), Bv: t("bv", hd), Bo: t("bo", j.dModel)}
}

// submit uploads the job through the SDK and returns its id.
func (c *testCluster) submitMHAGrad(j *mhaGradJob) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	x, dy := tensor.New(j.x, j.b, j.n, j.dModel), tensor.New(j.dy, j.b, j.n, j.dModel)
	st, err := c.client.SubmitMHABackward(ctx, x, dy, j.weights(), client.JobOptions{Causal: j.causal, Block: j.block, Strategy: j.strategy})
	if err != nil {
		c.t.Fatalf("submit: %v", err)
	}
	return st.GetId()
}

// checkMHAGrads fetches y and the layer's gradients of a succeeded job
// through the SDK and compares each with the float64 reference:
// |got - ref| <= 2e-4 · max(1, max|ref|) (y: 1e-4).
func (c *testCluster) checkMHAGrads(st *pb.JobStatus, j *mhaGradJob) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.client.FetchMHAGrads(ctx, st)
	if err != nil {
		c.t.Fatalf("FetchMHAGrads: %v", err)
	}
	w := j.ws
	want := j.ref.Backward(j.x, w["wq"], w["wk"], w["wv"], w["wo"], w["bq"], w["bk"], w["bv"], w["bo"], j.dy)
	wantY := j.ref.Forward(j.x, w["wq"], w["wk"], w["wv"], w["wo"], w["bq"], w["bk"], w["bv"], w["bo"])
	if d := attnref.MaxAbsDiff(res.Y.Data, wantY); !(d <= 1e-4) {
		c.t.Fatalf("y differs from the float64 reference by %g, want <= 1e-4", d)
	}
	hd := j.heads * j.d
	for _, g := range []struct {
		name  string
		got   *tensor.Tensor
		want  []float64
		shape []int
	}{
		{"dx", res.DX, want.DX, []int{j.b, j.n, j.dModel}},
		{"dwq", res.DWq, want.DWq, []int{hd, j.dModel}}, {"dwk", res.DWk, want.DWk, []int{hd, j.dModel}},
		{"dwv", res.DWv, want.DWv, []int{hd, j.dModel}}, {"dwo", res.DWo, want.DWo, []int{j.dModel, hd}},
		{"dbq", res.DBq, want.DBq, []int{hd}}, {"dbk", res.DBk, want.DBk, []int{hd}},
		{"dbv", res.DBv, want.DBv, []int{hd}}, {"dbo", res.DBo, want.DBo, []int{j.dModel}},
	} {
		if g.want == nil {
			if g.got != nil {
				c.t.Fatalf("%s returned for a layer without biases", g.name)
			}
			continue
		}
		if g.got == nil || !slices.Equal(g.got.Shape, g.shape) {
			c.t.Fatalf("%s = %v, want shape %v", g.name, g.got, g.shape)
		}
		tol := 2e-4 * max(1, attnref.MaxAbs(g.want))
		if d := attnref.MaxAbsDiff(g.got.Data, g.want); !(d <= tol) {
			c.t.Fatalf("%s differs from the float64 reference by %g, want <= %g", g.name, d, tol)
		} else {
			c.t.Logf("max |%s - ref| = %.3g (tolerance %.3g)", g.name, d, tol)
		}
	}
}

// TestWorkerClusterMHABackwardExact runs layer forward+backward jobs over
// three workers, with and without biases, causal and not, and on a
// split-KV plan (rank 0 writes every dq unit after the tree): the forward
// epochs write y and the attention's o and lse, the backward epochs the
// attention gradients and each unit's share of the layer's; dX and every
// weight and bias gradient assembled by the SDK match the float64
// reference.
func TestWorkerClusterMHABackwardExact(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	for i, tc := range []struct {
		bias, causal bool
		strategy     string
	}{{true, true, ""}, {false, false, ""}, {true, false, "splitkv"}} {
		j := newMHAGradJob(uint64(40+i), tc.bias, tc.causal)
		j.strategy = tc.strategy
		id := c.submitMHAGrad(j)
		st := c.wait(id, 90*time.Second)
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("bias=%v causal=%v strategy %q: job %v: %s", tc.bias, tc.causal, tc.strategy, st.GetState(), st.GetReason())
		}
		if st.GetPhase() != "backward" || st.GetEpoch() < 2 {
			t.Fatalf("job phase %q epoch %d, want backward in epoch >= 2 (a forward, then a backward epoch)", st.GetPhase(), st.GetEpoch())
		}
		if want := int64(11 + 11); st.GetBlocksTotal() != want || st.GetBlocksDone() != want {
			t.Fatalf("%d of %d blocks, want %d of %d (11 dq + 11 dk/dv units)", st.GetBlocksDone(), st.GetBlocksTotal(), want, want)
		}
		if len(st.GetWorkers()) < 2 {
			t.Fatalf("backward ran on %v, want a ring of several workers", st.GetWorkers())
		}
		c.checkMHAGrads(st, j)
	}
	// A non-finite dY fails the job in its backward pass, naming dy.
	j := newMHAGradJob(49, false, true)
	j.dy[j.dModel*(j.n+5)+3] = float32(math.Inf(1)) // batch 1, row 5: block 0
	st := c.wait(c.submitMHAGrad(j), 90*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_FAILED || !strings.Contains(st.GetReason(), `"dy" block 0`) {
		t.Fatalf("job with an infinite dY: %v (%s), want FAILED naming dy block 0", st.GetState(), st.GetReason())
	}
	t.Logf("infinite dY: %s", st.GetReason())
}

// TestWorkerKilledMidMHABackward kills one of three workers abruptly while
// it holds rank 1 of the first backward epoch of a layer job at ring step
// 1: the leader re-plans and the layer's gradients are still exact. Every
// gradient unit's share was written whole by one epoch — the dk/dv units'
// shares by the epoch that wrote their dk and dv — so the SDK's sums over
// blocks count every row once.
func TestWorkerKilledMidMHABackward(t *testing.T) {
	c := newTestCluster(t, 1500*time.Millisecond)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	// Epoch 1 is the forward pass; epoch 2 the first backward one.
	c.setStepHook(holdAt(func(_ *testWorker, epoch uint64, rank int) bool { return epoch == 2 && rank == 1 }, held))
	j := newMHAGradJob(44, true, true)
	id := c.submitMHAGrad(j)
	var victim string
	select {
	case victim = <-held:
	case <-time.After(60 * time.Second):
		t.Fatal("rank 1 of epoch 2 never reached ring step 1")
	}
	tw := c.workers[victim]
	tw.cancel()
	if err := <-tw.done; err != nil {
		t.Fatalf("killed worker's Run: %v", err)
	}
	t.Logf("killed %s holding rank 1 at step 1 of the backward", victim)
	st := c.wait(id, 90*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", st.GetState(), st.GetReason())
	}
	if st.GetEpoch() < 3 || slices.Contains(st.GetWorkers(), victim) {
		t.Fatalf("finished in epoch %d on %v, want a re-plan without %s", st.GetEpoch(), st.GetWorkers(), victim)
	}
	c.checkMHAGrads(st, j)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var late int
	for b := range 11 {
		dk, err1 := c.store.BlockInfo(ctx, id, transport.TensorDK, b)
		dv, err2 := c.store.BlockInfo(ctx, id, transport.TensorDV, b)
		if err1 != nil || err2 != nil || dk.Epoch != dv.Epoch || dk.Epoch < 2 || dk.Epoch > st.GetEpoch() {
			t.Fatalf("dk/dv block %d: %+v %v / %+v %v: want one write of one backward epoch in 2..%d", b, dk, err1, dv, err2, st.GetEpoch())
		}
		if dk.Epoch >= 3 {
			late++
		}
	}
	if late == 0 {
		t.Fatalf("no dk/dv block written after epoch 2, want the victim's blocks re-planned")
	}
	t.Logf("%d of 11 dk/dv blocks written after the re-plan", late)
	c.checkShares(id, j)
}

// checkShares checks that every stored share of the layer's weight
// gradients is, bit for bit, the share of the complete gradient block
// stored beside it: dwq_i = cat(dq_i)ᵀ·x_i, dwk_j, dwv_j likewise with
// dk_j, dv_j. A share of an abandoned epoch's partial sum, or of another
// write than the block's, would differ.
func (c *testCluster) checkShares(id string, j *mhaGradJob) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	get := func(ns, tensor string, b int) []float32 {
		x, err := c.store.GetBlock(ctx, ns, tensor, b)
		if err != nil {
			c.t.Fatalf("%s block %d: %v", tensor, b, err)
		}
		return x
	}
	l := &layer{DModel: j.dModel, Heads: j.heads, D: j.d, Wq: j.ws["wq"], Wk: j.ws["wk"], Wv: j.ws["wv"], Wo: j.ws["wo"]}
	g := newLayerGrad(l, j.b)
	blocks := (j.n + j.block - 1) / j.block
	var in string
	if st, err := c.client.Get(ctx, id); err != nil {
		c.t.Fatal(err)
	} else {
		in = st.GetSpec().GetInputRef()
	}
	for b := range blocks {
		n := min(j.block, j.n-b*j.block)
		x := get(in, TensorX, b)
		for _, s := range []struct{ grad, share string }{
			{transport.TensorDQ, TensorDWQ}, {transport.TensorDK, TensorDWK}, {transport.TensorDV, TensorDWV},
		} {
			want := g.weightGrad(get(id, s.grad, b), x, n)
			if got := get(id, s.share, b); !slices.Equal(got, want) {
				c.t.Fatalf("%s block %d is not the share of the stored %s block %d", s.share, b, s.grad, b)
			}
		}
	}
}

// TestWorkerMHABackwardRedoDQOnly: the stored dq of query block 0 of a
// layer job is overwritten after its rank wrote it; the leader's check
// redoes that unit alone in a dQ-only epoch (every dk/dv unit done), which
// rewrites dq block 0 and its shares and nothing else. The layer's
// gradients are exact and every share matches its block.
func TestWorkerMHABackwardRedoDQOnly(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	var tampered atomic.Bool
	c.setStepHook(func(_ *testWorker, ctx context.Context, job string, epoch uint64, _ int, p ringattn.Progress) {
		if epoch != 2 || !p.Done || tampered.Load() {
			return
		}
		dq, err := c.store.GetBlock(ctx, job, transport.TensorDQ, 0)
		if err != nil {
			return // not written yet: a later rank's hook tampers
		}
		dq[0] += 1
		if err := c.store.PutBlock(ctx, job, transport.TensorDQ, 0, dq, transport.F32); err == nil {
			tampered.Store(true)
		}
	})
	j := newMHAGradJob(46, true, true)
	id := c.submitMHAGrad(j)
	st := c.wait(id, 90*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || !tampered.Load() {
		t.Fatalf("job %v (%s), tampered %v", st.GetState(), st.GetReason(), tampered.Load())
	}
	if st.GetEpoch() != 3 {
		t.Fatalf("finished in epoch %d, want 3 (forward, backward, one dQ-only re-plan)", st.GetEpoch())
	}
	c.checkMHAGrads(st, j)
	c.checkShares(id, j)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for b := range 11 {
		want := uint64(2)
		if b == 0 {
			want = 3
		}
		for _, g := range []struct {
			tensor string
			want   uint64
		}{{transport.TensorDQ, want}, {transport.TensorDK, 2}, {transport.TensorDV, 2}} {
			if bi, err := c.store.BlockInfo(ctx, id, g.tensor, b); err != nil || bi.Epoch != g.want {
				t.Fatalf("%s block %d: %+v, %v: want written in epoch %d", g.tensor, b, bi, err, g.want)
			}
		}
	}
}
