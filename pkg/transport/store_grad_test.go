package transport_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportStoreGradSink runs a backward plan with the store as both
// Source (q, k, v, o, lse, do read by block, lse [B, Hq, len]) and
// GradSink: the gradients read back with GetTensor are bit-identical to
// the in-memory run, every block carries the epoch that wrote it, and a
// later epoch recomputing the dQ blocks alone (every key block done)
// overwrites them with equal values and its own epoch, leaving dK/dV as
// they were.
func TestTransportStoreGradSink(t *testing.T) {
	e := transporttest.RunServer(t)
	c := newEngineCase(t, 3)
	p := c.p
	ctx := ctxT(t, 120*time.Second)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	o := make([]float32, len(c.q))
	lse := make([]float32, p.B*p.Hq*p.N)
	must(t, kernels.Attention(p, c.q, c.k, c.v, o, lse))
	do := randVals(15, len(c.q))
	qs := transport.Shape{p.B, p.Hq, p.N, p.D}
	ks := transport.Shape{p.B, p.Hkv, p.Nk, p.D}
	ls := transport.Shape{p.B, p.Hq, p.N, 1}
	for _, in := range []struct {
		name string
		data []float32
		sh   transport.Shape
	}{{"q", c.q, qs}, {"k", c.k, ks}, {"v", c.v, ks}, {"o", o, qs}, {"lse", lse, ls}, {transport.TensorDO, do, qs}} {
		_, err := s.PutTensor(ctx, "bwd-in", in.name, in.data, in.sh, c.plan.Block, transport.F32)
		must(t, err)
	}
	run := func(plan *shard.Plan, epoch uint64, doneDKV []int) {
		t.Helper()
		w := len(plan.Ranks)
		net, err := ringattn.NewMemNet(w, ringattn.MemOptions{})
		must(t, err)
		errs := make([]error, w)
		var wg sync.WaitGroup
		for r := range w {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = ringattn.RunRankBackward(ctx, ringattn.BackwardConfig{Params: p, Plan: plan, Ring: net.Rank(r),
					Source: s.Source("bwd-in"), Sink: s.GradSink("bwd-out"), Epoch: epoch, DoneDKV: doneDKV})
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("epoch %d rank %d: %v", epoch, r, err)
			}
		}
	}
	run(c.plan, 1, nil)
	mq, mk, mv, err := ringattn.RunLocalBackward(context.Background(), p, c.plan, c.q, c.k, c.v, o, lse, do)
	must(t, err)
	check := func(when string, exact bool) {
		t.Helper()
		dq, err := s.GetTensor(ctx, "bwd-out", transport.TensorDQ, qs, c.plan.Block)
		must(t, err)
		dk, err := s.GetTensor(ctx, "bwd-out", transport.TensorDK, ks, c.plan.Block)
		must(t, err)
		dv, err := s.GetTensor(ctx, "bwd-out", transport.TensorDV, ks, c.plan.Block)
		must(t, err)
		if exact {
			equalF32(t, when+" dq", dq, mq)
		} else {
			// Another plan sums in another order: equal within rounding.
			closeF32(t, when+" dq", dq, mq, 1e-5)
		}
		equalF32(t, when+" dk", dk, mk)
		equalF32(t, when+" dv", dv, mv)
	}
	check("epoch 1", true)
	epochOf := func(tensor string, block int) uint64 {
		t.Helper()
		bi, err := s.BlockInfo(ctx, "bwd-out", tensor, block)
		must(t, err)
		return bi.Epoch
	}
	for _, tn := range []string{transport.TensorDQ, transport.TensorDK, transport.TensorDV} {
		for b := range c.plan.QBlockCount {
			if got := epochOf(tn, b); got != 1 {
				t.Fatalf("%s block %d epoch = %d, want 1", tn, b, got)
			}
		}
	}
	// Epoch 2: dQ of blocks 0 and 5 again, every key block done.
	plan2, err := shard.NewPlan(shard.Request{B: p.B, Hq: p.Hq, Hkv: p.Hkv, D: p.D, N: p.N, Nk: p.Nk, Block: c.plan.Block,
		Mask: shard.Mask{Causal: true}, Ranks: 2, Strategy: shard.Zigzag, QBlocks: []int{0, 5}})
	must(t, err)
	all := make([]int, c.plan.KBlockCount)
	for j := range all {
		all[j] = j
	}
	run(plan2, 2, all)
	check("after epoch 2", false)
	for b := range c.plan.QBlockCount {
		want := uint64(1)
		if b == 0 || b == 5 {
			want = 2
		}
		if got := epochOf(transport.TensorDQ, b); got != want {
			t.Fatalf("dq block %d epoch = %d, want %d", b, got, want)
		}
		if got := epochOf(transport.TensorDK, b); got != 1 {
			t.Fatalf("dk block %d epoch = %d after a dQ-only epoch, want 1", b, got)
		}
	}
	// A block PutBlock wrote has no epoch.
	if bi, err := s.BlockInfo(ctx, "bwd-in", transport.TensorDO, 0); err != nil || bi.Epoch != 0 {
		t.Fatalf("input block info = %+v, %v: want epoch 0", bi, err)
	}
	// An epoch that does not parse is corrupt metadata.
	name := transport.BlockName("bwd-out", transport.TensorDK, 1)
	info, err := s.ObjectStore().GetInfo(ctx, name)
	must(t, err)
	meta := info.ObjectMeta
	meta.Metadata["ringattn-epoch"] = "x1"
	must(t, s.ObjectStore().UpdateMeta(ctx, name, meta))
	if _, err := s.BlockInfo(ctx, "bwd-out", transport.TensorDK, 1); !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("BlockInfo with a bad epoch in metadata: %v, want ErrCorrupt", err)
	}
}

// closeF32 fails unless every |got-want| <= tol·max(1, max|want|).
func closeF32(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	m := 1.0
	for _, w := range want {
		m = math.Max(m, math.Abs(float64(w)))
	}
	for i := range got {
		if d := math.Abs(float64(got[i]) - float64(want[i])); !(d <= tol*m) {
			t.Fatalf("%s: value %d = %v, want %v (tolerance %g)", what, i, got[i], want[i], tol*m)
		}
	}
}
