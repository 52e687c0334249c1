package transport_test

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// engineCase is one attention problem run by ringattn.RunRank over NATS.
type engineCase struct {
	p       *kernels.Params
	plan    *shard.Plan
	q, k, v []float32
}

func newEngineCase(t *testing.T, ranks int) engineCase {
	t.Helper()
	const B, Hq, Hkv, D, N, block = 1, 4, 2, 32, 1000, 128 // GQA, ragged last block
	p := &kernels.Params{Shape: kernels.Shape{B: B, Hq: Hq, Hkv: Hkv, D: D}, N: N, Nk: N,
		Mask: kernels.Mask{Causal: true}}
	plan, err := shard.NewPlan(shard.Request{B: B, Hq: Hq, Hkv: Hkv, D: D, N: N, Nk: N, Block: block,
		Mask: shard.Mask{Causal: true}, Ranks: ranks, Strategy: shard.Zigzag})
	must(t, err)
	return engineCase{p: p, plan: plan,
		q: randVals(11, B*Hq*N*D), k: randVals(12, B*Hkv*N*D), v: randVals(13, B*Hkv*N*D)}
}

// runOverNATS uploads the inputs, runs every rank on its own connection
// with its own NATSRing and store, and returns o, lse and the fallbacks.
func (c engineCase) runOverNATS(t *testing.T, e *transport.Embedded, job string, recvTimeout time.Duration,
	tweak func(rank int, r *transport.NATSRing)) (o, lse []float32, fallbacks int) {
	t.Helper()
	ctx := ctxT(t, 120*time.Second)
	p, plan := c.p, c.plan
	up := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	qs := transport.Shape{p.B, p.Hq, p.N, p.D}
	ks := transport.Shape{p.B, p.Hkv, p.Nk, p.D}
	for _, in := range []struct {
		name string
		data []float32
		sh   transport.Shape
	}{{"q", c.q, qs}, {"k", c.k, ks}, {"v", c.v, ks}} {
		_, err := up.PutTensor(ctx, job, in.name, in.data, in.sh, plan.Block, transport.F32)
		must(t, err)
	}
	w := len(plan.Ranks)
	var (
		wg    sync.WaitGroup
		falls atomic.Int64
		errs  = make([]error, w)
	)
	rings := make([]*transport.NATSRing, w)
	stores := make([]*transport.Store, w)
	for r := range w {
		nc := transporttest.Connect(t, e)
		stores[r] = transporttest.Store(t, nc, transport.StoreConfig{})
		ring, err := transport.NewNATSRing(nc, transport.RingConfig{Job: job, Epoch: 1, Rank: r, Size: w,
			RecvTimeout: recvTimeout, ProbeInterval: 50 * time.Millisecond, Logger: transporttest.Logger(t)})
		must(t, err)
		defer ring.Close()
		rings[r] = ring
		if tweak != nil {
			tweak(r, ring)
		}
	}
	for r := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last int
			errs[r] = ringattn.RunRank(ctx, ringattn.RankConfig{Params: p, Plan: plan, Ring: rings[r],
				Source: stores[r].Source(job), Sink: stores[r].Sink(job), Logger: transporttest.Logger(t),
				Progress: func(pr ringattn.Progress) { last = pr.Fallbacks }})
			falls.Add(int64(last))
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	o, err := up.GetTensor(ctx, job, transport.TensorO, qs, plan.Block)
	must(t, err)
	lse, err = up.GetTensor(ctx, job, transport.TensorLSE, transport.Shape{p.B, p.Hq, p.N, 1}, plan.Block)
	must(t, err)
	for r, ring := range rings {
		t.Logf("rank %d ring stats %+v", r, ring.Stats())
	}
	return o, lse, int(falls.Load())
}

// check compares o, lse with the local kernel (within 1e-4) and with the
// in-memory ring on the same plan (bit for bit).
func (c engineCase) check(t *testing.T, o, lse []float32) {
	t.Helper()
	wantO := make([]float32, len(o))
	wantL := make([]float32, len(lse))
	must(t, kernels.Attention(c.p, c.q, c.k, c.v, wantO, wantL))
	var maxDiff float64
	for i := range o {
		maxDiff = max(maxDiff, math.Abs(float64(o[i]-wantO[i])))
	}
	for i := range lse {
		maxDiff = max(maxDiff, math.Abs(float64(lse[i]-wantL[i])))
	}
	t.Logf("max |NATS ring - kernels.Attention| = %.3g", maxDiff)
	if maxDiff > 1e-4 || math.IsNaN(maxDiff) {
		t.Fatalf("NATS ring differs from kernels.Attention by %g, want <= 1e-4", maxDiff)
	}
	memO, memL, err := ringattn.RunLocal(context.Background(), c.p, c.plan, c.q, c.k, c.v)
	must(t, err)
	equalF32(t, "o vs in-memory ring", o, memO)
	equalF32(t, "lse vs in-memory ring", lse, memL)
}

func TestTransportRingEngineR4(t *testing.T) {
	e := transporttest.RunServer(t)
	c := newEngineCase(t, 4)
	o, lse, falls := c.runOverNATS(t, e, "job-r4", 30*time.Second, nil)
	c.check(t, o, lse)
	if falls != 0 {
		t.Fatalf("%d fallbacks to the store on a healthy ring, want 0", falls)
	}
}

// TestTransportRingEngineServerRestart restarts the NATS server while rank 1
// sends its step-2 blocks: frames in flight are lost, ranks time out and
// fetch those blocks from the store (which survives on disk), and the
// result is still exact.
func TestTransportRingEngineServerRestart(t *testing.T) {
	e := transporttest.RunServer(t)
	c := newEngineCase(t, 4)
	var once sync.Once
	var restartErr error
	o, lse, falls := c.runOverNATS(t, e, "job-restart", time.Second, func(rank int, r *transport.NATSRing) {
		if rank != 1 {
			return
		}
		transport.SetMutate(r, func(m *nats.Msg) []*nats.Msg {
			if m.Header.Get("Ra-Step") != "2" {
				return []*nats.Msg{m}
			}
			once.Do(func() {
				t.Log("restarting the NATS server mid-ring")
				restartErr = e.Restart()
			})
			return nil // lost with the old server
		})
	})
	must(t, restartErr)
	c.check(t, o, lse)
	if falls == 0 {
		t.Fatal("no rank fell back to the store after the restart")
	}
	t.Logf("%d blocks fetched from the store instead of the ring", falls)
}
