package coordinator

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func gradSums(blocks ...int32) []*pb.GradChecksum {
	var out []*pb.GradChecksum
	for _, b := range blocks {
		out = append(out, &pb.GradChecksum{Block: b, Crc32C: uint32(100 + b), Crc32CDv: uint32(200 + b)})
	}
	return out
}

// TestFSMBackwardPhases walks a FORWARD_BACKWARD job through the FSM: its
// forward epoch counts query blocks; a backward epoch is refused until
// they are all done, then turns the blocks into gradient units (3 dq + 3
// dk/dv) keeping the forward's checksums; backward reports record units
// and checksums, refuse output checksums and blocks out of range; a
// forward epoch can no longer start; a redo of a unit drops its checksum;
// and the record survives a snapshot.
func TestFSMBackwardPhases(t *testing.T) {
	f := newFSM(nil)
	spec := testSpec("fb")
	spec.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	r := applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j", Spec: spec})
	wantOK(t, r)
	if r.Job.BlocksTotal != 3 {
		t.Fatalf("forward+backward job: %d blocks, want 3 (the forward's query blocks)", r.Job.BlocksTotal)
	}
	start := func(idx, epoch uint64, mode pb.JobMode, plan *pb.Plan, dq, dkv []int32) *Result {
		return applyT(t, f, idx, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j", Epoch: epoch, Plan: plan,
			Mode: mode, DoneDq: dq, DoneDkv: dkv})
	}
	done := func(idx, epoch uint64, rank int32, m *cpb.ShardDone) *Result {
		m.JobId, m.Epoch, m.Rank = "j", epoch, rank
		return applyT(t, f, idx, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, m)
	}
	plan := testPlan([]int32{0, 1}, []int32{2})
	wantErr(t, start(2, 1, pb.JobMode_JOB_MODE_BACKWARD, plan, nil, nil), ErrBadCommand)
	wantOK(t, start(3, 1, pb.JobMode_JOB_MODE_FORWARD, plan, nil, nil))
	wantErr(t, done(4, 1, 0, &cpb.ShardDone{DqBlocks: gradSums(0)}), ErrBadCommand)
	wantOK(t, done(5, 1, 0, &cpb.ShardDone{Blocks: []*pb.BlockChecksum{{Block: 0, Crc32CO: 1}, {Block: 1, Crc32CO: 2}}}))
	wantErr(t, start(6, 2, pb.JobMode_JOB_MODE_BACKWARD, plan, nil, nil), ErrBadCommand) // block 2 not done
	wantOK(t, done(7, 1, 1, &cpb.ShardDone{Blocks: []*pb.BlockChecksum{{Block: 2, Crc32CO: 3}}}))
	wantErr(t, start(8, 2, pb.JobMode_JOB_MODE_BACKWARD, plan, []int32{3}, nil), ErrBadCommand) // done_dq out of range
	r = start(9, 2, pb.JobMode_JOB_MODE_BACKWARD, plan, nil, nil)
	wantOK(t, r)
	if r.Job.BlocksTotal != 6 || len(r.Job.DoneBlocks) != 0 || len(r.Job.Checksums) != 3 || r.Job.EpochMode != pb.JobMode_JOB_MODE_BACKWARD {
		t.Fatalf("backward phase started: %v, want 6 units, none done, the 3 forward checksums kept", r.Job)
	}
	wantErr(t, done(10, 2, 0, &cpb.ShardDone{Blocks: []*pb.BlockChecksum{{Block: 0}}}), ErrBadCommand)
	wantErr(t, done(11, 2, 0, &cpb.ShardDone{DkvBlocks: gradSums(3)}), ErrBadCommand)
	r = done(12, 2, 0, &cpb.ShardDone{DqBlocks: gradSums(0, 1), DkvBlocks: gradSums(0, 1)})
	wantOK(t, r)
	if !slices.Equal(r.Job.DoneBlocks, []int32{0, 1, 3, 4}) || len(r.Job.DqChecksums) != 2 || r.Job.DkvChecksums[1].GetCrc32CDv() != 201 {
		t.Fatalf("after rank 0: units %v, dq %v, dkv %v", r.Job.DoneBlocks, r.Job.DqChecksums, r.Job.DkvChecksums)
	}
	// Epoch 3 (re-plan): a forward epoch is refused now.
	wantErr(t, start(13, 3, pb.JobMode_JOB_MODE_FORWARD, plan, nil, nil), ErrBadCommand)
	r = start(14, 3, pb.JobMode_JOB_MODE_BACKWARD, plan, []int32{0, 1}, []int32{0, 1})
	wantOK(t, r)
	if !slices.Equal(r.Job.EpochDoneDq, []int32{0, 1}) || !slices.Equal(r.Job.DoneBlocks, []int32{0, 1, 3, 4}) {
		t.Fatalf("epoch 3: %v", r.Job)
	}
	// A redo of unit 4 (dk/dv of key block 1) drops it and its checksum.
	r = applyT(t, f, 15, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 3, Blocks: []int32{4}})
	wantOK(t, r)
	if !slices.Equal(r.Job.DoneBlocks, []int32{0, 1, 3}) || len(r.Job.DkvChecksums) != 1 || r.Job.DkvChecksums[0].GetBlock() != 0 {
		t.Fatalf("after the redo: units %v, dkv %v", r.Job.DoneBlocks, r.Job.DkvChecksums)
	}
	var buf bytes.Buffer
	if err := f.st.WriteSnapshot(&buf, 0); err != nil {
		t.Fatal(err)
	}
	back, err := ReadState(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(f.st) {
		t.Fatal("snapshot round trip changed the backward job")
	}
}

// TestFSMBackwardJob: a BACKWARD job's blocks are units from the start,
// and it never runs a forward epoch.
func TestFSMBackwardJob(t *testing.T) {
	f := newFSM(nil)
	spec := testSpec("b")
	spec.Mode = pb.JobMode_JOB_MODE_BACKWARD
	spec.Nk = 450 // 5 key blocks
	r := applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j", Spec: spec})
	wantOK(t, r)
	if r.Job.BlocksTotal != 8 {
		t.Fatalf("backward job: %d blocks, want 3 dq + 5 dk/dv", r.Job.BlocksTotal)
	}
	wantErr(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j", Epoch: 1,
		Plan: testPlan([]int32{0, 1, 2})}), ErrBadCommand)
	wantErr(t, applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j", Epoch: 1,
		Plan: testPlan([]int32{0, 1, 2}), Mode: 5}), ErrBadCommand)
	wantOK(t, applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j", Epoch: 1,
		Plan: testPlan([]int32{0, 1, 2}), Mode: pb.JobMode_JOB_MODE_BACKWARD, DoneDkv: []int32{4}}))
	// A forward job never runs a backward epoch.
	wantOK(t, applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "fwd", Spec: testSpec("f")}))
	wantErr(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "fwd", Epoch: 1,
		Plan: testPlan([]int32{0, 1, 2}), Mode: pb.JobMode_JOB_MODE_BACKWARD}), ErrBadCommand)
}

// TestCoordinatorBackwardReplanRule: the next epoch's pass, Done lists
// and query blocks follow the fencing rule: some dk/dv missing -> every
// query block, the written units done; none missing -> only the missing
// dq blocks, every key block done.
func TestCoordinatorBackwardReplanRule(t *testing.T) {
	spec := testSpec("")
	spec.Mode = pb.JobMode_JOB_MODE_BACKWARD
	job := func(epoch uint64, units ...int32) *cpb.Job {
		j := &cpb.Job{Spec: spec, Epoch: epoch, BlocksTotal: 6, DoneBlocks: units}
		if epoch > 0 {
			j.EpochMode = pb.JobMode_JOB_MODE_BACKWARD
		}
		return j
	}
	for _, c := range []struct {
		name          string
		j             *cpb.Job
		dq, dkv       []int32
		plan          []int
		planAllBlocks bool
	}{
		{"first epoch", job(0), nil, nil, nil, true},
		{"dq and some dk/dv done", job(1, 0, 2, 3, 5), []int32{0, 2}, []int32{0, 2}, nil, true},
		{"every dk/dv done", job(1, 1, 3, 4, 5), []int32{1}, []int32{0, 1, 2}, []int{0, 2}, false},
		{"nothing done", job(2), nil, nil, nil, true},
	} {
		mode, dq, dkv, plan := nextPass(c.j, []int{1, 2})
		if mode != pb.JobMode_JOB_MODE_BACKWARD || !slices.Equal(dq, c.dq) || !slices.Equal(dkv, c.dkv) ||
			(plan == nil) != c.planAllBlocks || !slices.Equal(plan, c.plan) {
			t.Errorf("%s: %v dq %v dkv %v plan %v (nil: all), want dq %v dkv %v plan %v", c.name, mode, dq, dkv, plan, c.dq, c.dkv, c.plan)
		}
	}
	// A forward+backward job: forward until its forward blocks are done.
	fb := proto.CloneOf(spec)
	fb.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	if mode, _, _, plan := nextPass(&cpb.Job{Spec: fb, Epoch: 1, BlocksTotal: 3, DoneBlocks: []int32{0}}, []int{1, 2}); mode != pb.JobMode_JOB_MODE_FORWARD || !slices.Equal(plan, []int{1, 2}) {
		t.Errorf("forward phase, 1 of 3 done: %v %v, want FORWARD over [1 2]", mode, plan)
	}
	if mode, dq, dkv, plan := nextPass(&cpb.Job{Spec: fb, Epoch: 1, BlocksTotal: 3, DoneBlocks: []int32{0, 1, 2}}, nil); mode != pb.JobMode_JOB_MODE_BACKWARD || dq != nil || dkv != nil || plan != nil {
		t.Errorf("forward phase done: %v %v %v %v, want BACKWARD over every block, nothing done", mode, dq, dkv, plan)
	}
}

// TestCoordinatorGradChecksums: a done report's gradient checksums must
// fit the epoch (each refusal names the field).
func TestCoordinatorGradChecksums(t *testing.T) {
	spec := testSpec("")
	spec.Mode = pb.JobMode_JOB_MODE_BACKWARD
	j := &cpb.Job{Spec: spec, Epoch: 2, EpochMode: pb.JobMode_JOB_MODE_BACKWARD, Plan: testPlan([]int32{0}, []int32{2}),
		EpochDoneDq: []int32{1}, EpochDoneDkv: []int32{1}}
	for _, c := range []struct {
		d     *pb.ShardDone
		field string
		msg   string
	}{
		{&pb.ShardDone{DqBlocks: gradSums(0, 2), DkvBlocks: gradSums(0, 2)}, "", ""},
		{&pb.ShardDone{DqBlocks: gradSums(1)}, "dq_blocks", "block 1 is not planned"},
		{&pb.ShardDone{DqBlocks: gradSums(0, 0)}, "dq_blocks", "listed twice"},
		{&pb.ShardDone{DkvBlocks: gradSums(1)}, "dkv_blocks", "block 1 was done before epoch 2"},
		{&pb.ShardDone{DkvBlocks: gradSums(3)}, "dkv_blocks", "block 3 outside [0,3)"},
		{&pb.ShardDone{DkvBlocks: gradSums(0, 2, 0, 2)}, "dkv_blocks", "4 checksums for 3 blocks"},
		{&pb.ShardDone{Blocks: []*pb.BlockChecksum{{Block: 0}}}, "blocks", "output checksums for a backward epoch"},
	} {
		field, err := checkGradChecksums(j, c.d)
		if field != c.field || (c.msg == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.msg)) {
			t.Errorf("%v: %s %v, want %q %q", c.d, field, err, c.field, c.msg)
		}
	}
	fwd := &cpb.Job{Spec: testSpec(""), Epoch: 1, Plan: testPlan([]int32{0, 1, 2})}
	if field, err := checkGradChecksums(fwd, &pb.ShardDone{DqBlocks: gradSums(0)}); field != "dq_blocks" || err == nil {
		t.Errorf("gradients in a forward epoch: %s %v, want refused", field, err)
	}
}

// TestValidateBackwardSpec: the mode is checked at submit, and a backward
// job's gradient tensors count against MaxJobBytes.
func TestValidateBackwardSpec(t *testing.T) {
	l := DefaultConfig().Limits
	now := time.Now()
	mk := func(mode pb.JobMode) *pb.JobSpec {
		s := testSpec("k")
		s.Mode = mode
		return s
	}
	if e := validateSpec(mk(pb.JobMode_JOB_MODE_FORWARD_BACKWARD), l, now); e != nil {
		t.Fatalf("forward+backward spec: %v", e)
	}
	mha := mk(pb.JobMode_JOB_MODE_BACKWARD)
	mha.Kind, mha.DModel = pb.JobKind_JOB_KIND_MHA, 64
	for _, c := range []struct {
		spec  *pb.JobSpec
		field string
	}{{mk(7), "spec.mode"}, {mha, "spec.mode"}} {
		if e := validateSpec(c.spec, l, now); e == nil || e.field != c.field {
			t.Errorf("spec %v: %v, want refused naming %s", c.spec, e, c.field)
		}
	}
	// B=1, Hq=4, Hkv=2, D=16, N=Nk=300: q, o, do, dq 4·4·N·16, k, v, dk,
	// dv 4·2·N·16 and lse 4·N float32.
	l.MaxJobBytes = 4 * (4*4*300*16 + 4*2*300*16 + 4*300)
	if e := validateSpec(mk(pb.JobMode_JOB_MODE_BACKWARD), l, now); e != nil {
		t.Fatalf("backward job at MaxJobBytes: %v", e)
	}
	l.MaxJobBytes--
	if e := validateSpec(mk(pb.JobMode_JOB_MODE_BACKWARD), l, now); e == nil || !strings.Contains(e.msg, "bytes") {
		t.Fatalf("backward job one byte past MaxJobBytes: %v, want refused", e)
	}
	if e := validateSpec(mk(pb.JobMode_JOB_MODE_FORWARD), l, now); e != nil {
		t.Fatalf("the forward of the same shape: %v", e)
	}
}

// TestCoordinatorStatusBackwardKind: the status page's kind names a
// backward job's mode and, while it runs, its pass; forward jobs read as
// before.
func TestCoordinatorStatusBackwardKind(t *testing.T) {
	now := time.Now()
	fb := testSpec("")
	fb.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	for _, c := range []struct {
		st   *pb.JobStatus
		want string
	}{
		{&pb.JobStatus{Spec: testSpec(""), State: pb.JobState_JOB_STATE_RUNNING}, "attention"},
		{&pb.JobStatus{Spec: fb, State: pb.JobState_JOB_STATE_RUNNING, Phase: "forward"}, "attention forward_backward, forward pass"},
		{&pb.JobStatus{Spec: fb, State: pb.JobState_JOB_STATE_SUCCEEDED, Phase: "backward"}, "attention forward_backward"},
	} {
		if got := statusJobOf(c.st, 0, now).Kind; got != c.want {
			t.Errorf("kind %q, want %q", got, c.want)
		}
	}
}
