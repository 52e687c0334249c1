package testenv

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// stallLastBackwardStep is the worker fault spec that stalls the
// worker's ranks of epoch 2 — a layer forward+backward job's first
// backward epoch (epoch 1 is its forward) — once they have finished 3 ring
// steps, the last of a 3-rank ring, until they are aborted: a worker
// killed then dies holding gradients it has not written, while the other
// ranks can finish theirs.
const stallLastBackwardStep = "RINGATTN_FAULT_STALL=epoch=2,step=3"

// TestSystemMHABackwardWorkerKilled SIGKILLs a worker process in the
// middle of the backward pass of a layer (mha) forward+backward job on
// three workers — stalled by a test fault after the last ring step of
// the first backward epoch, its gradient units unwritten — and checks
// that y, dX and every weight and bias gradient summed by the SDK match
// the float64 reference within 2e-4·max(1, max|ref|). The units the two
// other ranks wrote in the abandoned epoch are kept (listed done), the
// victim's redone by the next: the sums mix shares of both epochs.
//
// Why no share of the abandoned epoch is counted wrongly (checked below):
//   - A share is computed in the worker's GradSink from one complete
//     gradient block (the fenced ring hands PutDQ/PutDKV only complete
//     ones; a partial dK/dV never leaves its epoch's ring), so no share of
//     a partial sum is ever stored. Checked: every stored share equals the
//     share recomputed from the complete dq/dk/dv block stored beside it.
//   - Shares are keyed (namespace, tensor, block): a unit redone by a later
//     epoch replaces its shares, so the store holds one per unit (checked:
//     the output namespace holds exactly its expected object count), and
//     client.FetchMHAGrads sums blocks 0..QB-1 of each tensor once each.
//     Counting a share twice would need a second key, which cannot exist.
//   - The leader declares a unit done only with each of its shares stored
//     at its size (coordinator checkGradUnit), so none is left out.
//
// The test also shows that it would see a double count: adding any one
// block's stored share to the SDK's sum a second time exceeds the
// tolerance.
func TestSystemMHABackwardWorkerKilled(t *testing.T) {
	cfg := fastConfig(t, 2)
	// Every job gets a rank on each live worker (the workers' made-up
	// 1 GFLOP/s would make this small job one or two ranks).
	cfg.CoordinatorArgs = append(cfg.CoordinatorArgs, "--min-rank-time=0s")
	c := startCluster(t, cfg)
	ctx := testCtx(t)
	victim, err := c.AddWorkerEnv(ctx, stallLastBackwardStep)
	if err != nil {
		t.Fatal(err)
	}
	// B=2, N=390 in blocks of 32 (13 blocks, the last of 6 rows), d_model
	// 32, 4 heads of D=16, biases, causal.
	const b, n, dm, heads, d, block = 2, 390, 32, 4, 16, 32
	const qb = (n + block - 1) / block
	hd := heads * d
	r := testrand.New(57)
	x, dy := r.Slice(b*n*dm, testrand.Normal), r.Slice(b*n*dm, testrand.Normal)
	ws := map[string][]float32{}
	for _, name := range []string{"wq", "wk", "wv", "wo"} {
		w := r.Slice(hd*dm, testrand.Normal)
		for i := range w {
			w[i] /= 5 // keep the projections O(1)
		}
		ws[name] = w
	}
	for _, name := range []string{"bq", "bk", "bv"} {
		ws[name] = r.Slice(hd, testrand.Normal)
	}
	ws["bo"] = r.Slice(dm, testrand.Normal)
	wt := func(name string, shape ...int) *tensor.Tensor { return tensor.New(ws[name], shape...) }
	weights := client.MHAWeights{Heads: heads, Wq: wt("wq", hd, dm), Wk: wt("wk", hd, dm), Wv: wt("wv", hd, dm), Wo: wt("wo", dm, hd),
		Bq: wt("bq", hd), Bk: wt("bk", hd), Bv: wt("bv", hd), Bo: wt("bo", dm)}

	cl := c.Client()
	st, err := cl.SubmitMHABackward(ctx, tensor.New(x, b, n, dm), tensor.New(dy, b, n, dm), weights,
		client.JobOptions{Causal: true, Block: block})
	if err != nil {
		t.Fatal(err)
	}
	id := st.GetId()
	// Wait until the victim's rank of the first backward epoch has
	// stalled (its log says so) and still runs.
	var bst *pb.JobStatus
	err = localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		s, err := cl.Get(ctx, id)
		if err != nil {
			return err
		}
		if client.Finished(s.GetState()) || s.GetEpoch() > 2 {
			return localcluster.Permanent(fmt.Errorf("job %s %v in epoch %d (%s) before %s stalled in backward epoch 2",
				id, s.GetState(), s.GetEpoch(), s.GetReason(), victim.Name))
		}
		if s.GetPhase() != "backward" || !slices.Contains(s.GetWorkers(), victim.Name) {
			return fmt.Errorf("job %s is %v in phase %q on %v", id, s.GetState(), s.GetPhase(), s.GetWorkers())
		}
		if len(s.GetWorkers()) != 3 {
			return localcluster.Permanent(fmt.Errorf("backward epoch on %v: want 3 ranks (the fault stalls after step 3 of 3)", s.GetWorkers()))
		}
		running, err := c.Metric(ctx, victim, "ringattn_worker_shards_running")
		if err != nil {
			return err
		}
		log, err := os.ReadFile(victim.LogPath)
		if err != nil {
			return err
		}
		if running < 1 || !strings.Contains(string(log), "stalling rank (test fault)") {
			return fmt.Errorf("%s has not stalled yet (%g shards running)", victim.Name, running)
		}
		bst = s
		return nil
	}, "job "+id+" stalled mid-backward on "+victim.Name)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s (stalled after its last ring step of backward epoch %d; %d/%d gradient units reported done then)", victim.Name, bst.GetEpoch(), bst.GetBlocksDone(), bst.GetBlocksTotal())
	fin, err := cl.Watch(ctx, id, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fin.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", fin.GetState(), fin.GetReason())
	}
	t.Logf("FAULT worker SIGKILLed mid-mha-backward: job finished in epoch %d on %v, %v after the kill",
		fin.GetEpoch(), fin.GetWorkers(), round(time.Since(at)))
	if fin.GetEpoch() <= bst.GetEpoch() || slices.Contains(fin.GetWorkers(), victim.Name) {
		t.Fatalf("job finished in epoch %d on %v: want a re-plan without %s", fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	}
	if want := int64(2 * qb); fin.GetBlocksTotal() != want || fin.GetBlocksDone() != want {
		t.Fatalf("%d of %d units done, want %d of %d", fin.GetBlocksDone(), fin.GetBlocksTotal(), want, want)
	}

	// The gradients against the float64 reference.
	res, err := cl.FetchMHAGrads(ctx, fin)
	if err != nil {
		t.Fatal(err)
	}
	ref := &attnref.MHA{B: b, N: n, DModel: dm, Heads: heads, D: d, Mask: attnref.Mask{Causal: true}}
	want := ref.Backward(x, ws["wq"], ws["wk"], ws["wv"], ws["wo"], ws["bq"], ws["bk"], ws["bv"], ws["bo"], dy)
	wantY := ref.Forward(x, ws["wq"], ws["wk"], ws["wv"], ws["wo"], ws["bq"], ws["bk"], ws["bv"], ws["bo"])
	grads := []struct {
		name  string
		got   *tensor.Tensor
		want  []float64
		shape []int
	}{
		{"y", res.Y, wantY, []int{b, n, dm}}, {"dx", res.DX, want.DX, []int{b, n, dm}},
		{"dwq", res.DWq, want.DWq, []int{hd, dm}}, {"dwk", res.DWk, want.DWk, []int{hd, dm}},
		{"dwv", res.DWv, want.DWv, []int{hd, dm}}, {"dwo", res.DWo, want.DWo, []int{dm, hd}},
		{"dbq", res.DBq, want.DBq, []int{hd}}, {"dbk", res.DBk, want.DBk, []int{hd}},
		{"dbv", res.DBv, want.DBv, []int{hd}}, {"dbo", res.DBo, want.DBo, []int{dm}},
	}
	tols := map[string]float64{}
	for _, g := range grads {
		if g.got == nil || !slices.Equal(g.got.Shape, g.shape) {
			t.Fatalf("%s = %v, want shape %v", g.name, g.got, g.shape)
		}
		tol := 2e-4 * max(1, attnref.MaxAbs(g.want))
		tols[g.name] = tol
		e := attnref.MaxAbsDiff(g.got.Data, g.want)
		if !(e <= tol) {
			t.Fatalf("%s differs from the float64 reference by %g, want <= %g", g.name, e, tol)
		}
		t.Logf("max |%s - ref| = %.3g (tolerance %.3g)", g.name, e, tol)
	}

	store, err := cl.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, in := fin.GetOutputRef(), fin.GetSpec().GetInputRef()
	if out == "" {
		out = id
	}
	get := func(ns, tensor string, blk int) []float32 {
		v, err := store.GetBlock(ctx, ns, tensor, blk)
		if err != nil {
			t.Fatalf("%s block %d: %v", tensor, blk, err)
		}
		return v
	}
	// Every gradient block is one complete write of a backward epoch, the
	// victim's units rewritten after the kill.
	var late int
	for blk := range qb {
		var epochs []uint64
		for _, g := range []string{transport.TensorDQ, transport.TensorDK, transport.TensorDV} {
			bi, err := store.BlockInfo(ctx, out, g, blk)
			if err != nil || bi.Epoch < bst.GetEpoch() || bi.Epoch > fin.GetEpoch() {
				t.Fatalf("%s block %d: %+v, %v: want written by a backward epoch in %d..%d", g, blk, bi, err, bst.GetEpoch(), fin.GetEpoch())
			}
			epochs = append(epochs, bi.Epoch)
			if bi.Epoch > bst.GetEpoch() {
				late++
			}
		}
		if epochs[1] != epochs[2] {
			t.Fatalf("dk and dv block %d written by epochs %d and %d, want one write of the unit", blk, epochs[1], epochs[2])
		}
	}
	if late == 0 || late == 3*qb {
		t.Fatalf("%d of %d gradient blocks written after epoch %d, want the victim's units redone and the others' kept", late, 3*qb, bst.GetEpoch())
	}
	t.Logf("%d of %d gradient blocks written after the kill, the others by epoch %d", late, 3*qb, bst.GetEpoch())

	// One object per (tensor, block) in the output namespace: y, o, lse,
	// dq, dk, dv and the 10 shares (with biases) of each block.
	nss, err := store.Namespaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(nss, func(ns transport.NamespaceInfo) bool { return ns.Name == out })
	if i < 0 || nss[i].Objects != 16*qb {
		t.Fatalf("output namespace %s: %+v, want %d objects (16 per block)", out, nss, 16*qb)
	}

	// Each stored share is the share of the complete gradient block stored
	// beside it (a share of a partial dK/dV, or of another write, would
	// differ by far more than rounding), and counting any one of them twice
	// would break the exactness check above.
	layer := &ringattn.Layer{DModel: dm, Heads: heads, D: d, Wq: ws["wq"], Wk: ws["wk"], Wv: ws["wv"], Wo: ws["wo"],
		Bq: ws["bq"], Bk: ws["bk"], Bv: ws["bv"], Bo: ws["bo"]}
	sums := map[string]*tensor.Tensor{"dwq": res.DWq, "dwk": res.DWk, "dwv": res.DWv, "dwo": res.DWo,
		"dbq": res.DBq, "dbk": res.DBk, "dbv": res.DBv, "dbo": res.DBo}
	worst, margin := 0.0, math.Inf(1)
	for blk := range qb {
		rows := min(block, n-blk*block)
		g, err := worker.LayerGradsFrom(layer, b, rows, get(in, worker.TensorX, blk), get(in, worker.TensorDY, blk), get(out, transport.TensorO, blk),
			get(out, transport.TensorDQ, blk), get(out, transport.TensorDK, blk), get(out, transport.TensorDV, blk))
		if err != nil {
			t.Fatal(err)
		}
		dxq, dxkv := get(out, worker.TensorDXQ, blk), get(out, worker.TensorDXKV, blk)
		dx := make([]float32, len(dxq))
		for i := range dx {
			dx[i] = dxq[i] + dxkv[i]
		}
		for _, s := range []struct {
			name   string
			stored []float32
			want   []float32
		}{
			{"dxq+dxkv", dx, g.DX}, {"dwq", get(out, worker.TensorDWQ, blk), g.DWq}, {"dwk", get(out, worker.TensorDWK, blk), g.DWk},
			{"dwv", get(out, worker.TensorDWV, blk), g.DWv}, {"dwo", get(out, worker.TensorDWO, blk), g.DWo},
			{"dbq", get(out, worker.TensorDBQ, blk), g.DBq}, {"dbk", get(out, worker.TensorDBK, blk), g.DBk},
			{"dbv", get(out, worker.TensorDBV, blk), g.DBv}, {"dbo", get(out, worker.TensorDBO, blk), g.DBo},
		} {
			e, m := maxDiff32(s.stored, s.want)
			worst = max(worst, e/max(1, m))
			if !(e <= 1e-5*max(1, m)) {
				t.Fatalf("block %d: stored %s share differs from the share of the stored gradient block by %g (max |share| %g)", blk, s.name, e, m)
			}
			sum := sums[s.name]
			if sum == nil {
				continue
			}
			twice := slices.Clone(sum.Data)
			for i, v := range s.stored {
				twice[i] += v
			}
			e2 := attnref.MaxAbsDiff(twice, refOf(want, s.name))
			if e2 <= tols[s.name] {
				t.Fatalf("block %d: the %s sum with its share counted twice is within %g of the reference (%g): a double count would go unseen", blk, s.name, tols[s.name], e2)
			}
			margin = min(margin, e2/tols[s.name])
		}
	}
	t.Logf("stored shares vs the shares of the stored gradient blocks: max relative difference %.3g; "+
		"a share counted twice misses the reference by at least %.3gx the tolerance", worst, margin)
}

// maxDiff32 returns max |a-b| and max |b|.
func maxDiff32(a, b []float32) (diff, m float64) {
	if len(a) != len(b) {
		return 1e300, 0
	}
	for i := range a {
		diff = max(diff, abs64(float64(a[i])-float64(b[i])))
		m = max(m, abs64(float64(b[i])))
	}
	return diff, m
}

func abs64(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// refOf picks the reference of a weight or bias gradient by name.
func refOf(g attnref.MHAGrads, name string) []float64 {
	return map[string][]float64{"dwq": g.DWq, "dwk": g.DWk, "dwv": g.DWv, "dwo": g.DWo,
		"dbq": g.DBq, "dbk": g.DBk, "dbv": g.DBv, "dbo": g.DBo}[name]
}
