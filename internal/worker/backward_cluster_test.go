package worker

import (
	"context"
	"math"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// gradJob is an attention job with a backward pass and its inputs.
type gradJob struct {
	*attnJob
	do     []float32
	o, lse []float32 // uploaded for a BACKWARD job; nil for FORWARD_BACKWARD
}

// newGradJob is a causal GQA job with a ragged last block (n = 700, block
// 64) of the given mode.
func newGradJob(seed uint64, mode pb.JobMode) *gradJob {
	const b, hq, hkv, n, d, block = 1, 4, 2, 700, 16, 64
	j := &gradJob{attnJob: newAttnJob(seed, b, hq, hkv, n, n, d, block, true)}
	j.spec.Mode, j.spec.WantLse = mode, false
	j.do = testrand.New(seed+100).Slice(b*hq*n*d, testrand.Normal)
	if mode == pb.JobMode_JOB_MODE_BACKWARD {
		p := kernels.Params{Shape: kernels.Shape{B: b, Hq: hq, Hkv: hkv, D: d}, N: n, Nk: n,
			Scale: float32(1 / math.Sqrt(d)), Mask: kernels.Mask{Causal: true}}
		j.o, j.lse = make([]float32, len(j.q)), make([]float32, b*hq*n)
		if err := kernels.Attention(&p, j.q, j.k, j.v, j.o, j.lse); err != nil {
			panic(err)
		}
	}
	return j
}

// submitGrad uploads do (and o, lse when given) under ref, then the rest
// as submit does, and submits the job.
func (c *testCluster) submitGrad(j *gradJob, ref string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := j.spec
	qs := transport.Shape{int(s.B), int(s.Hq), int(s.N), int(s.D)}
	ups := []struct {
		name string
		x    []float32
		sh   transport.Shape
	}{{transport.TensorDO, j.do, qs}}
	if j.o != nil {
		ups = append(ups, struct {
			name string
			x    []float32
			sh   transport.Shape
		}{transport.TensorO, j.o, qs}, struct {
			name string
			x    []float32
			sh   transport.Shape
		}{transport.TensorLSE, j.lse, transport.Shape{int(s.B), int(s.Hq), int(s.N), 1}})
	}
	for _, in := range ups {
		if _, err := c.store.PutTensor(ctx, ref, in.name, in.x, in.sh, int(s.Block), transport.F32); err != nil {
			c.t.Fatalf("upload %s: %v", in.name, err)
		}
	}
	return c.submit(j.attnJob, ref)
}

// checkGrads fetches dq, dk, dv of job id and compares them with the
// float64 reference backward: |got - ref| <= 2e-4 · max(1, max|ref|).
func (c *testCluster) checkGrads(id string, j *gradJob) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := j.spec
	qs := transport.Shape{int(s.B), int(s.Hq), int(s.N), int(s.D)}
	ks := transport.Shape{int(s.B), int(s.Hkv), int(s.Nk), int(s.D)}
	wdq, wdk, wdv := j.ref.Backward(j.q, j.k, j.v, j.do)
	for _, g := range []struct {
		name string
		sh   transport.Shape
		want []float64
	}{{transport.TensorDQ, qs, wdq}, {transport.TensorDK, ks, wdk}, {transport.TensorDV, ks, wdv}} {
		got, err := c.store.GetTensor(ctx, id, g.name, g.sh, int(s.Block))
		if err != nil {
			c.t.Fatalf("fetching %s: %v", g.name, err)
		}
		tol := 2e-4 * max(1, attnref.MaxAbs(g.want))
		if d := attnref.MaxAbsDiff(got, g.want); !(d <= tol) {
			c.t.Fatalf("%s differs from the float64 reference by %g, want <= %g", g.name, d, tol)
		} else {
			c.t.Logf("max |%s - ref| = %.3g (tolerance %.3g)", g.name, d, tol)
		}
	}
}

// TestWorkerClusterBackwardExact runs a FORWARD_BACKWARD job (forward
// epochs write o and lse, then backward epochs read them) and a BACKWARD
// job (o and lse uploaded) over three workers: dq, dk, dv match the
// float64 reference backward, and the status shows the phase and outputs.
func TestWorkerClusterBackwardExact(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	for _, tc := range []struct {
		mode    pb.JobMode
		outputs []string
	}{
		{pb.JobMode_JOB_MODE_FORWARD_BACKWARD, []string{"o", "lse", "dq", "dk", "dv"}},
		{pb.JobMode_JOB_MODE_BACKWARD, []string{"dq", "dk", "dv"}},
	} {
		j := newGradJob(3, tc.mode)
		id := c.submitGrad(j, "in-"+tc.mode.String()[9:])
		st := c.wait(id, 90*time.Second)
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("%v job %v: %s", tc.mode, st.GetState(), st.GetReason())
		}
		if st.GetPhase() != "backward" || !slices.Equal(st.GetOutputs(), tc.outputs) {
			t.Fatalf("%v job status phase %q outputs %v, want backward, %v", tc.mode, st.GetPhase(), st.GetOutputs(), tc.outputs)
		}
		if want := int64(11 + 11); st.GetBlocksTotal() != want || st.GetBlocksDone() != want {
			t.Fatalf("%v job: %d of %d blocks, want %d of %d (11 dq + 11 dk/dv)", tc.mode, st.GetBlocksDone(), st.GetBlocksTotal(), want, want)
		}
		c.checkGrads(id, j)
		if tc.mode == pb.JobMode_JOB_MODE_FORWARD_BACKWARD {
			if st.GetEpoch() < 2 {
				t.Fatalf("forward+backward job finished in epoch %d, want >= 2 (a forward, then a backward epoch)", st.GetEpoch())
			}
			c.check(id, j.attnJob) // o and lse of the forward phase
		}
	}
}

// TestWorkerKilledMidBackward kills one of three workers abruptly while it
// holds rank 1 of a backward epoch at ring step 1: the leader re-plans
// (epoch 2, every query block: no dK/dV was written) on the two others and
// the gradients are exact. Every dk/dv block was written by the re-planned
// epoch, complete: nothing of the abandoned epoch reached the store.
func TestWorkerKilledMidBackward(t *testing.T) {
	c := newTestCluster(t, 1500*time.Millisecond)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	held := make(chan string, 8)
	c.setStepHook(holdAt(func(_ *testWorker, epoch uint64, rank int) bool { return epoch == 1 && rank == 1 }, held))
	j := newGradJob(4, pb.JobMode_JOB_MODE_BACKWARD)
	id := c.submitGrad(j, "in-bkill")
	var victim string
	select {
	case victim = <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("rank 1 never reached ring step 1")
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
	if st.GetEpoch() < 2 || slices.Contains(st.GetWorkers(), victim) {
		t.Fatalf("finished in epoch %d on %v, want a re-plan without %s", st.GetEpoch(), st.GetWorkers(), victim)
	}
	c.checkGrads(id, j)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// dk and dv of a block are one complete write of one epoch: the
	// surviving ranks of epoch 1 wrote theirs (and reported them, so the
	// re-plan lists them done), the victim's were written by a later one.
	var late int
	for b := range 11 {
		dk, err1 := c.store.BlockInfo(ctx, id, transport.TensorDK, b)
		dv, err2 := c.store.BlockInfo(ctx, id, transport.TensorDV, b)
		if err1 != nil || err2 != nil || dk.Epoch != dv.Epoch || dk.Epoch < 1 || dk.Epoch > st.GetEpoch() {
			t.Fatalf("dk/dv block %d: %+v %v / %+v %v: want one write of one epoch in 1..%d", b, dk, err1, dv, err2, st.GetEpoch())
		}
		if dk.Epoch >= 2 {
			late++
		}
	}
	if late == 0 {
		t.Fatalf("no dk/dv block written after epoch 1, want the victim's blocks re-planned")
	}
	t.Logf("%d of 11 dk/dv blocks written after the re-plan", late)
}

// TestWorkerBackwardRedoDQOnly: the stored dq of query block 0 is
// overwritten after its rank wrote it (before the last report, so before
// the leader checks the store). The check finds its CRC differs from the
// reported one, redoes that unit alone, and, every dK/dV being written,
// re-plans only query block 0 with every key block done: epoch 2 rewrites
// dq block 0 and nothing else, so every dk/dv block stays the one
// complete write of epoch 1, and the gradients are exact.
func TestWorkerBackwardRedoDQOnly(t *testing.T) {
	c := newTestCluster(t, 3*time.Second)
	ids := []string{"w0", "w1", "w2"}
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
	var tampered atomic.Bool
	c.setStepHook(func(_ *testWorker, ctx context.Context, job string, epoch uint64, _ int, p ringattn.Progress) {
		if epoch != 1 || !p.Done || tampered.Load() {
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
	j := newGradJob(5, pb.JobMode_JOB_MODE_BACKWARD)
	id := c.submitGrad(j, "in-redo")
	st := c.wait(id, 90*time.Second)
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || !tampered.Load() {
		t.Fatalf("job %v (%s), tampered %v", st.GetState(), st.GetReason(), tampered.Load())
	}
	if st.GetEpoch() != 2 {
		t.Fatalf("finished in epoch %d, want 2 (one dQ-only re-plan)", st.GetEpoch())
	}
	c.checkGrads(id, j)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for b := range 11 {
		want := uint64(1)
		if b == 0 {
			want = 2
		}
		for _, c2 := range []struct {
			tensor string
			want   uint64
		}{{transport.TensorDQ, want}, {transport.TensorDK, 1}, {transport.TensorDV, 1}} {
			bi, err := c.store.BlockInfo(ctx, id, c2.tensor, b)
			if err != nil || bi.Epoch != c2.want {
				t.Fatalf("%s block %d: %+v, %v: want written in epoch %d", c2.tensor, b, bi, err, c2.want)
			}
		}
	}
}
