package testenv

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestSystemBackwardWorkerKilled SIGKILLs a worker process in the middle
// of the backward pass of a forward+backward job (causal GQA, ragged last
// block): the leader re-plans by the fencing rule (every query block while
// some dK/dV block is unwritten, the written ones listed done) over the
// two others, and dQ, dK, dV match the single-process kernels within
// 2e-4 · max(1, max|ref|).
func TestSystemBackwardWorkerKilled(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	ctx := testCtx(t)
	const b, hq, hkv, n, d, block = 1, 8, 2, 3000, 64, 512
	r := testrand.New(21)
	q := tensor.New(r.Slice(b*hq*n*d, testrand.Normal), b, hq, n, d)
	k := tensor.New(r.Slice(b*hkv*n*d, testrand.Normal), b, hkv, n, d)
	v := tensor.New(r.Slice(b*hkv*n*d, testrand.Normal), b, hkv, n, d)
	do := tensor.New(r.Slice(b*hq*n*d, testrand.Normal), b, hq, n, d)
	cl := c.Client()
	st, err := cl.SubmitAttentionBackward(ctx, q, k, v, do, nil, nil, client.JobOptions{Causal: true, Block: block})
	if err != nil {
		t.Fatal(err)
	}
	id := st.GetId()
	// Wait for the backward phase, then for the victim (rank 1) to fold a
	// ring step of it.
	var victim *localcluster.Proc
	var base float64
	var bst *pb.JobStatus
	err = localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		s, err := cl.Get(ctx, id)
		if err != nil {
			return err
		}
		if client.Finished(s.GetState()) {
			return localcluster.Permanent(fmt.Errorf("job %s %v (%s) before its backward pass was caught running", id, s.GetState(), s.GetReason()))
		}
		if s.GetState() != pb.JobState_JOB_STATE_RUNNING || s.GetPhase() != "backward" || len(s.GetWorkers()) < 2 {
			return fmt.Errorf("job %s is %v in phase %q", id, s.GetState(), s.GetPhase())
		}
		if w := c.Worker(s.GetWorkers()[1]); victim != w {
			victim, bst = w, s
			if base, err = c.Metric(ctx, w, "ringattn_worker_ring_step_seconds_count"); err != nil {
				return err
			}
		}
		steps, err := c.Metric(ctx, victim, "ringattn_worker_ring_step_seconds_count")
		if err != nil {
			return err
		}
		if steps <= base {
			return fmt.Errorf("%s: no backward ring step yet", victim.Name)
		}
		return nil
	}, "job "+id+" mid-backward")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s (rank 1 of backward epoch %d, %d/%d gradient blocks done)", victim.Name, bst.GetEpoch(), bst.GetBlocksDone(), bst.GetBlocksTotal())
	fin, err := cl.Watch(ctx, id, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fin.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v: %s", fin.GetState(), fin.GetReason())
	}
	t.Logf("FAULT worker SIGKILLed mid-backward: job finished in epoch %d on %v, %v after the kill",
		fin.GetEpoch(), fin.GetWorkers(), round(time.Since(at)))
	if fin.GetEpoch() <= bst.GetEpoch() || slices.Contains(fin.GetWorkers(), victim.Name) {
		t.Errorf("job finished in epoch %d on %v: want a re-plan without %s", fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	}
	res, err := cl.FetchGrads(ctx, fin)
	if err != nil {
		t.Fatal(err)
	}
	p := kernels.Params{Shape: kernels.Shape{B: b, Hq: hq, Hkv: hkv, D: d}, N: n, Nk: n,
		Scale: float32(1 / math.Sqrt(d)), Mask: kernels.Mask{Causal: true}, Threads: 2}
	o, lse := make([]float32, len(q.Data)), make([]float32, b*hq*n)
	if err := kernels.Attention(&p, q.Data, k.Data, v.Data, o, lse); err != nil {
		t.Fatal(err)
	}
	dq, dk, dv := make([]float32, len(q.Data)), make([]float32, len(k.Data)), make([]float32, len(v.Data))
	if err := kernels.AttentionBackward(&p, q.Data, k.Data, v.Data, o, lse, do.Data, dq, dk, dv); err != nil {
		t.Fatal(err)
	}
	for _, g := range []struct {
		name      string
		got, want []float32
	}{{"dq", res.DQ.Data, dq}, {"dk", res.DK.Data, dk}, {"dv", res.DV.Data, dv}} {
		var m, diff float64
		for i, w := range g.want {
			m = math.Max(m, math.Abs(float64(w)))
			diff = math.Max(diff, math.Abs(float64(g.got[i])-float64(w)))
		}
		if tol := 2e-4 * math.Max(1, m); !(diff <= tol) {
			t.Fatalf("%s differs from the single-process kernels by %g, want <= %g", g.name, diff, tol)
		}
		t.Logf("max |%s - kernels| = %.3g", g.name, diff)
	}
}
