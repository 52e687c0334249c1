package worker

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// bwdJob is a causal GQA backward job with a ragged last block, its
// inputs (o and lse from the forward kernel) uploaded under "in-<id>".
type bwdJob struct {
	p                   kernels.Params
	q, k, v, o, lse, do []float32
	plan                *shard.Plan
	dq, dk, dv          []float32 // RunLocalBackward on plan
	qs, ks              transport.Shape
}

func (e *protoEnv) bwdJob(id string, seed uint64) *bwdJob {
	e.t.Helper()
	const b, hq, hkv, n, d, block = 1, 4, 2, 200, 16, 64
	r := testrand.New(seed)
	j := &bwdJob{p: kernels.Params{Shape: kernels.Shape{B: b, Hq: hq, Hkv: hkv, D: d}, N: n, Nk: n, Scale: 0.25,
		Mask: kernels.Mask{Causal: true}},
		qs: transport.Shape{b, hq, n, d}, ks: transport.Shape{b, hkv, n, d}}
	j.q, j.k, j.v = r.Slice(b*hq*n*d, testrand.Normal), r.Slice(b*hkv*n*d, testrand.Normal), r.Slice(b*hkv*n*d, testrand.Normal)
	j.do = r.Slice(b*hq*n*d, testrand.Normal)
	j.o, j.lse = make([]float32, len(j.q)), make([]float32, b*hq*n)
	if err := kernels.Attention(&j.p, j.q, j.k, j.v, j.o, j.lse); err != nil {
		e.t.Fatal(err)
	}
	var err error
	if j.plan, err = shard.NewPlan(shard.Request{B: b, Hq: hq, Hkv: hkv, D: d, N: n, Nk: n, Block: block, Ranks: 1,
		Mask: shard.Mask{Causal: true}}); err != nil {
		e.t.Fatal(err)
	}
	ctx := context.Background()
	for _, in := range []struct {
		name string
		x    []float32
		sh   transport.Shape
	}{{"q", j.q, j.qs}, {"k", j.k, j.ks}, {"v", j.v, j.ks}, {"do", j.do, j.qs}, {"o", j.o, j.qs}, {"lse", j.lse, transport.Shape{b, hq, n, 1}}} {
		if _, err := e.store.PutTensor(ctx, "in-"+id, in.name, in.x, in.sh, block, transport.F32); err != nil {
			e.t.Fatal(err)
		}
	}
	if j.dq, j.dk, j.dv, err = ringattn.RunLocalBackward(ctx, &j.p, j.plan, j.q, j.k, j.v, j.o, j.lse, j.do); err != nil {
		e.t.Fatal(err)
	}
	return j
}

func (j *bwdJob) assignment(id string, epoch uint64, plan *shard.Plan, doneDQ, doneDKV []int32) *pb.Assignment {
	p := j.p
	return &pb.Assignment{JobId: id, Epoch: epoch, Rank: 0, Size: int32(len(plan.Ranks)), Plan: planPB(plan, "pw"),
		Params: &pb.KernelParams{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: int64(p.B), Hq: int64(p.Hq), Hkv: int64(p.Hkv),
			D: int64(p.D), Scale: float64(p.Scale), Mask: &pb.Mask{Causal: true}, Mode: pb.JobMode_JOB_MODE_BACKWARD},
		InputRef: "in-" + id, OutputRef: id, DoneDq: doneDQ, DoneDkv: doneDKV}
}

// waitReport waits for the n-th report (1-based) and returns its ShardDone.
func (e *protoEnv) waitReport(n int) *pb.ShardDone {
	e.t.Helper()
	checkFor(e.t, 30*time.Second, 10*time.Millisecond, func() error {
		if got := e.lead.reportCount(); got < n {
			return fmt.Errorf("%d reports", got)
		}
		return nil
	})
	e.lead.mu.Lock()
	rep := e.lead.reports[n-1]
	e.lead.mu.Unlock()
	if rep.GetDone() == nil {
		e.t.Fatalf("report %d: %v, want ShardDone", n, rep)
	}
	return rep.GetDone()
}

// TestWorkerBackwardRank: a BACKWARD assignment reads q, k, v, do, o, lse
// from the store, writes dq, dk, dv bit-identical to the in-memory
// backward of the same plan, and reports the checksums of the stored
// blocks. A dQ-only epoch (one query block, every key block done) writes
// that block alone, tagged with its epoch, and reports no dK/dV.
func TestWorkerBackwardRank(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	j := e.bwdJob("bwd", 7)
	if ack := e.assign(j.assignment("bwd", 1, j.plan, nil, nil)); !ack.Accepted {
		t.Fatalf("backward assignment rejected: %s", ack.Reason)
	}
	done := e.waitReport(1)
	ctx := context.Background()
	get := func(tensor string, sh transport.Shape) []float32 {
		t.Helper()
		x, err := e.store.GetTensor(ctx, "bwd", tensor, sh, j.plan.Block)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	for _, c := range []struct {
		name      string
		got, want []float32
	}{{"dq", get("dq", j.qs), j.dq}, {"dk", get("dk", j.ks), j.dk}, {"dv", get("dv", j.ks), j.dv}} {
		for i := range c.want {
			if c.got[i] != c.want[i] {
				t.Fatalf("%s[%d] = %v, want %v (in-memory backward)", c.name, i, c.got[i], c.want[i])
			}
		}
	}
	if len(done.DqBlocks) != 4 || len(done.DkvBlocks) != 4 || len(done.Blocks) != 0 {
		t.Fatalf("ShardDone %v, want 4 dq and 4 dk/dv checksums, no output blocks", done)
	}
	for b := range 4 {
		blk := func(tensor string) []float32 {
			x, err := e.store.GetBlock(ctx, "bwd", tensor, b)
			if err != nil {
				t.Fatal(err)
			}
			return x
		}
		if g := done.DqBlocks[b]; g.Block != int32(b) || g.Crc32C != crcOf(blk("dq")) {
			t.Fatalf("dq checksum %v, stored block %d has %08x", g, b, crcOf(blk("dq")))
		}
		if g := done.DkvBlocks[b]; g.Block != int32(b) || g.Crc32C != crcOf(blk("dk")) || g.Crc32CDv != crcOf(blk("dv")) {
			t.Fatalf("dk/dv checksum %v, stored block %d has %08x/%08x", g, b, crcOf(blk("dk")), crcOf(blk("dv")))
		}
	}
	// Epoch 2: dQ of query block 2 only.
	p2, err := shard.NewPlan(shard.Request{B: j.p.B, Hq: j.p.Hq, Hkv: j.p.Hkv, D: j.p.D, N: j.p.N, Nk: j.p.Nk,
		Block: j.plan.Block, Ranks: 1, Mask: shard.Mask{Causal: true}, QBlocks: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	if ack := e.assign(j.assignment("bwd", 2, p2, []int32{0, 1, 3}, []int32{0, 1, 2, 3})); !ack.Accepted {
		t.Fatalf("dQ-only assignment rejected: %s", ack.Reason)
	}
	done = e.waitReport(2)
	if len(done.DqBlocks) != 1 || done.DqBlocks[0].Block != 2 || len(done.DkvBlocks) != 0 {
		t.Fatalf("dQ-only ShardDone %v, want dq block 2 alone", done)
	}
	for b := range 4 {
		want := uint64(1)
		if b == 2 {
			want = 2
		}
		bi, err := e.store.BlockInfo(ctx, "bwd", "dq", b)
		if err != nil || bi.Epoch != want {
			t.Fatalf("dq block %d: %+v, %v, want epoch %d", b, bi, err, want)
		}
	}
}

// TestWorkerBackwardAssignmentRejections: the Done lists and the mode are
// checked like the rest of an assignment (bounded, distinct, in range, the
// fencing rule), each error naming the field.
func TestWorkerBackwardAssignmentRejections(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	j := e.bwdJob("bwdr", 8)
	p2, err := shard.NewPlan(shard.Request{B: j.p.B, Hq: j.p.Hq, Hkv: j.p.Hkv, D: j.p.D, N: j.p.N, Nk: j.p.Nk,
		Block: j.plan.Block, Ranks: 1, Mask: shard.Mask{Causal: true}, QBlocks: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		a    *pb.Assignment
		want string
	}{
		{j.assignment("bwdr", 1, j.plan, []int32{0, 0}, nil), "done_dq[1] = 0 is listed twice"},
		{j.assignment("bwdr", 1, j.plan, []int32{4}, nil), "done_dq[0] = 4, expected a block in 0..3"},
		{j.assignment("bwdr", 1, j.plan, nil, []int32{-1}), "done_dkv[0] = -1"},
		{j.assignment("bwdr", 1, j.plan, []int32{0, 1, 2, 3, 0}, nil), "done_dq has 5 blocks, expected at most 4"},
		{j.assignment("bwdr", 1, p2, nil, []int32{0, 1, 2}), "plan covers 1 of 4 query blocks but done_dkv lists 3 of 4"},
		{func() *pb.Assignment {
			a := j.assignment("bwdr", 1, j.plan, nil, nil)
			a.Params.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
			return a
		}(), "params.mode = JOB_MODE_FORWARD_BACKWARD"},
		{func() *pb.Assignment {
			a := j.assignment("bwdr", 1, j.plan, []int32{1}, nil)
			a.Params.Mode = pb.JobMode_JOB_MODE_FORWARD
			return a
		}(), "on a forward assignment"},
		{func() *pb.Assignment {
			a := j.assignment("bwdr", 1, j.plan, nil, nil)
			a.OLseRef = "a.b"
			return a
		}(), "o_lse_ref"},
		{func() *pb.Assignment {
			a := j.assignment("bwdr", 1, j.plan, nil, nil)
			a.Params.Mode = 7
			return a
		}(), "params.mode = 7"},
	} {
		if ack := e.assign(c.a); ack.Accepted || !strings.Contains(ack.Reason, c.want) {
			t.Errorf("assignment %v: %+v, want rejected naming %q", c.a.Params, ack, c.want)
		}
	}
	// At the limit: every block listed in both (nothing to write) is valid.
	all := []int32{0, 1, 2, 3}
	if ack := e.assign(j.assignment("bwdr", 2, p2, all, all)); !ack.Accepted {
		t.Fatalf("Done lists at their limit rejected: %s", ack.Reason)
	}
	done := e.waitReport(1)
	if len(done.DqBlocks) != 0 || len(done.DkvBlocks) != 0 {
		t.Fatalf("ShardDone %v with every block done, want nothing written", done)
	}
}

// panicGradSink panics on every write.
type panicGradSink struct{}

func (panicGradSink) PutDQ(context.Context, uint64, int, []float32) error { panic("dq sink bug") }
func (panicGradSink) PutDKV(context.Context, uint64, int, []float32, []float32) error {
	panic("dkv sink bug")
}

// TestWorkerBackwardPanicContained: a panic in a backward rank (injected
// after ring step 1) fails the shard non-fatally (the leader re-plans) and
// the worker runs the next backward job; a panicking gradient sink
// returns an "internal error" instead of taking the rank's goroutine down.
func TestWorkerBackwardPanicContained(t *testing.T) {
	e := newProtoEnv(t, 0, func(c *Config) { c.PanicFault = &Fault{Job: "boom", Rank: -1, Step: 1} })
	j := e.bwdJob("boom", 9)
	if ack := e.assign(j.assignment("boom", 1, j.plan, nil, nil)); !ack.Accepted {
		t.Fatalf("rejected: %s", ack.Reason)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		rs := e.lead.reportsFor("boom")
		if len(rs) == 0 {
			return fmt.Errorf("no report for boom")
		}
		if f := rs[0].GetFailed(); f == nil || f.GetFatal() || !strings.HasPrefix(f.GetReason(), "internal error") {
			t.Fatalf("report %v: want FAILED, not fatal, reason \"internal error ...\"", rs[0])
		}
		return nil
	})
	fine := e.bwdJob("fine", 10)
	if ack := e.assign(fine.assignment("fine", 1, fine.plan, nil, nil)); !ack.Accepted {
		t.Fatalf("next job rejected: %s", ack.Reason)
	}
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		if rs := e.lead.reportsFor("fine"); len(rs) == 0 || rs[0].GetDone() == nil {
			return fmt.Errorf("reports for fine: %v", rs)
		}
		return nil
	})
	before := counterValue(t, e.w.met.panics)
	g := guardedGradSink{sink: panicGradSink{}, w: e.w, prog: &progress{}}
	if err := g.PutDQ(context.Background(), 1, 0, nil); err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("PutDQ of a panicking sink: %v, want an internal error", err)
	}
	if err := g.PutDKV(context.Background(), 1, 0, nil, nil); err == nil || !strings.Contains(err.Error(), "internal error") {
		t.Fatalf("PutDKV of a panicking sink: %v, want an internal error", err)
	}
	if got := counterValue(t, e.w.met.panics); got != before+2 {
		t.Fatalf("panics_total = %v, want %v", got, before+2)
	}
	if n, _ := g.prog.counts(); n != 0 {
		t.Fatalf("failed writes counted as progress: %d", n)
	}
}
