package transport_test

import (
	"errors"
	"testing"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestTransportSpecMode: SpecToRequest and JobFromPB carry the job mode:
// a backward mode counts the gradient tensors (Tensors.Grad), is refused
// for mha jobs and an unknown mode is refused, each naming the mode field;
// ParamsFromSpec passes the mode on.
func TestTransportSpecMode(t *testing.T) {
	lim := shard.DefaultLimits()
	spec := func(mode pb.JobMode, kind pb.JobKind) *pb.JobSpec {
		s := &pb.JobSpec{Kind: kind, B: 1, Hq: 2, Hkv: 2, N: 256, Nk: 256, D: 16, Block: 64, Mode: mode}
		if kind == pb.JobKind_JOB_KIND_MHA {
			s.DModel = 32
		}
		return s
	}
	for _, mode := range []pb.JobMode{pb.JobMode_JOB_MODE_BACKWARD, pb.JobMode_JOB_MODE_FORWARD_BACKWARD} {
		_, tn, err := transport.SpecToRequest(spec(mode, pb.JobKind_JOB_KIND_ATTENTION), 2, lim)
		if err != nil || !tn.Grad {
			t.Fatalf("%v: tensors %+v, %v: want Grad", mode, tn, err)
		}
		if kp := transport.ParamsFromSpec(spec(mode, pb.JobKind_JOB_KIND_ATTENTION)); kp.GetMode() != mode {
			t.Fatalf("ParamsFromSpec mode %v, want %v", kp.GetMode(), mode)
		}
	}
	if _, tn, err := transport.SpecToRequest(spec(pb.JobMode_JOB_MODE_FORWARD, pb.JobKind_JOB_KIND_ATTENTION), 2, lim); err != nil || tn.Grad {
		t.Fatalf("forward: tensors %+v, %v: want no Grad", tn, err)
	}
	for _, s := range []*pb.JobSpec{spec(pb.JobMode_JOB_MODE_BACKWARD, pb.JobKind_JOB_KIND_MHA), spec(9, pb.JobKind_JOB_KIND_ATTENTION)} {
		_, _, err := transport.SpecToRequest(s, 2, lim)
		var fe *transport.FieldError
		if !errors.As(err, &fe) || fe.Field != "spec.mode" {
			t.Errorf("spec %v: %v, want a FieldError naming spec.mode", s, err)
		}
	}
	// An mha job computes its gradients as forward+backward (the backward
	// needs the job's own o and lse); a backward-only mha job and an mha
	// job asking for lse are refused on submit, but an mha assignment may
	// carry want_lse (the forward pass of a forward+backward job writes it).
	if _, tn, err := transport.SpecToRequest(spec(pb.JobMode_JOB_MODE_FORWARD_BACKWARD, pb.JobKind_JOB_KIND_MHA), 2, lim); err != nil || !tn.Grad {
		t.Fatalf("mha forward+backward: tensors %+v, %v: want accepted with Grad", tn, err)
	}
	lse := spec(pb.JobMode_JOB_MODE_FORWARD, pb.JobKind_JOB_KIND_MHA)
	lse.WantLse = true
	if _, _, err := transport.SpecToRequest(lse, 2, lim); err == nil {
		t.Error("mha spec with want_lse accepted on submit")
	}
	mhaPlan, err := shard.NewPlan(shard.Request{B: 1, Hq: 2, Hkv: 2, D: 16, N: 256, Nk: 256, Block: 64, Ranks: 2})
	if err != nil {
		t.Fatal(err)
	}
	mkp := transport.ParamsFromSpec(spec(pb.JobMode_JOB_MODE_FORWARD, pb.JobKind_JOB_KIND_MHA))
	mkp.WantLse = true
	if _, err := transport.JobFromPB(mkp, transport.PlanToPB(mhaPlan, []string{"a", "b"}), lim); err != nil {
		t.Errorf("mha assignment with want_lse: %v, want accepted", err)
	}
	plan, err := shard.NewPlan(shard.Request{B: 1, Hq: 2, Hkv: 2, D: 16, N: 256, Nk: 256, Block: 64, Ranks: 2})
	if err != nil {
		t.Fatal(err)
	}
	kp := transport.ParamsFromSpec(spec(pb.JobMode_JOB_MODE_BACKWARD, pb.JobKind_JOB_KIND_ATTENTION))
	job, err := transport.JobFromPB(kp, transport.PlanToPB(plan, []string{"a", "b"}), lim)
	if err != nil || !job.Tensors.Grad {
		t.Fatalf("JobFromPB of a backward assignment: %+v, %v: want Grad", job, err)
	}
	kp.Mode = 9
	if _, err := transport.JobFromPB(kp, transport.PlanToPB(plan, []string{"a", "b"}), lim); err == nil {
		t.Fatal("JobFromPB accepted mode 9")
	}
}
