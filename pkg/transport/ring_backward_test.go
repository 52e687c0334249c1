package transport_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportRingBackward runs ringattn.RunRankBackward over NATSRings
// (each rank on its own connection): dK/dV accumulators (KindGrad) travel
// the ring behind their key/value blocks, and for split-KV the dQ partials
// (KindDQ) go up the reduction tree. The gradients are bit-identical to
// the in-memory ring's on the same plan. NATSRing used to refuse every
// frame kind but KindKV and KindPartial.
func TestTransportRingBackward(t *testing.T) {
	e := transporttest.RunServer(t)
	for _, s := range []shard.Strategy{shard.Zigzag, shard.SplitKV} {
		c := newEngineCase(t, 3)
		plan, err := shard.NewPlan(shard.Request{B: c.p.B, Hq: c.p.Hq, Hkv: c.p.Hkv, D: c.p.D, N: c.p.N, Nk: c.p.Nk,
			Block: 128, Mask: shard.Mask{Causal: true}, Ranks: 3, Strategy: s})
		must(t, err)
		o := make([]float32, len(c.q))
		lse := make([]float32, c.p.B*c.p.Hq*c.p.N)
		must(t, kernels.Attention(c.p, c.q, c.k, c.v, o, lse))
		do := randVals(14, len(c.q))
		ctx := ctxT(t, 120*time.Second)
		src, err := ringattn.NewMemGradSource(c.p, plan.Block, c.q, c.k, c.v, o, lse, do)
		must(t, err)
		sink, err := ringattn.NewMemGradSink(c.p, plan.Block)
		must(t, err)
		w := len(plan.Ranks)
		errs := make([]error, w)
		var wg sync.WaitGroup
		for r := range w {
			ring, err := transport.NewNATSRing(transporttest.Connect(t, e), transport.RingConfig{
				Job: "job-bwd-" + string(s), Epoch: 1, Rank: r, Size: w, RecvTimeout: 30 * time.Second,
				Logger: transporttest.Logger(t)})
			must(t, err)
			defer ring.Close()
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = ringattn.RunRankBackward(ctx, ringattn.BackwardConfig{Params: c.p, Plan: plan, Ring: ring,
					Source: src, Sink: sink, Epoch: 1, Logger: transporttest.Logger(t)})
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("%s rank %d: %v", s, r, err)
			}
		}
		dq, dk, dv := sink.Result()
		mq, mk, mv, err := ringattn.RunLocalBackward(context.Background(), c.p, plan, c.q, c.k, c.v, o, lse, do)
		must(t, err)
		equalF32(t, string(s)+" dq vs in-memory ring", dq, mq)
		equalF32(t, string(s)+" dk vs in-memory ring", dk, mk)
		equalF32(t, string(s)+" dv vs in-memory ring", dv, mv)
	}
}
