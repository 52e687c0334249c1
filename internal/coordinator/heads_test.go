package coordinator

import (
	"slices"
	"testing"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// headPlan is testSpec's job (3 blocks, Hkv 2) in 2 head groups of pure
// head parallelism: rank g owns units g*3+0..2.
func headPlan() *pb.Plan {
	p := &pb.Plan{Strategy: string(shard.Heads), N: 300, Nk: 300, Block: 100, QBlockCount: 3, KBlockCount: 3, Steps: 1, HeadGroups: 2}
	for g := range int32(2) {
		u := []int32{3 * g, 3*g + 1, 3*g + 2}
		p.Ranks = append(p.Ranks, &pb.RankPlan{QBlocks: u, KvBlocks: u, WorkerId: "w" + string(rune('0'+g))})
	}
	return p
}

// TestHeadsWrittenBlocks: the writer of block b is the owner of block b
// in head group b mod G.
func TestHeadsWrittenBlocks(t *testing.T) {
	p := headPlan()
	if got := writtenBlocks(p, 0); !slices.Equal(got, []int32{0, 2}) {
		t.Fatalf("rank 0 writes %v, want [0 2]", got)
	}
	if got := writtenBlocks(p, 1); !slices.Equal(got, []int32{1}) {
		t.Fatalf("rank 1 writes %v, want [1]", got)
	}
	if err := checkChecksums(writerRank(p, 1), []*pb.BlockChecksum{{Block: 1}}); err != nil {
		t.Fatalf("writer's checksum refused: %v", err)
	}
	if err := checkChecksums(writerRank(p, 1), []*pb.BlockChecksum{{Block: 0}}); err == nil {
		t.Fatalf("rank 1 reported block 0, which rank 0 writes: accepted")
	}
	seq := testPlan([]int32{0, 1}, []int32{2})
	if got := writtenBlocks(seq, 0); !slices.Equal(got, []int32{0, 1}) {
		t.Fatalf("a plan without head groups: rank 0 writes %v", got)
	}
}

// TestHeadsFSMDoneBlocks: a head plan's block is done when its writer
// reports it; the plan's head groups survive the log (v4) and a snapshot.
func TestHeadsFSMDoneBlocks(t *testing.T) {
	f := newFSM(nil)
	wantOK(t, applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec(""), UnixMs: 10}))
	r := applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 1, Plan: headPlan(),
		Mode: pb.JobMode_JOB_MODE_FORWARD})
	wantOK(t, r)
	if r.Job.Plan.GetHeadGroups() != 2 {
		t.Fatalf("plan after the log: head_groups %d, want 2", r.Job.Plan.GetHeadGroups())
	}
	r = applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 1, WorkerId: "w1",
		Blocks: []*pb.BlockChecksum{{Block: 1, Crc32CO: 7}}})
	wantOK(t, r)
	if !slices.Equal(r.Job.DoneBlocks, []int32{1}) {
		t.Fatalf("after rank 1: done %v, want [1]", r.Job.DoneBlocks)
	}
	r = applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 0, WorkerId: "w0",
		Blocks: []*pb.BlockChecksum{{Block: 0, Crc32CO: 5}, {Block: 2, Crc32CO: 6}}})
	wantOK(t, r)
	if !slices.Equal(r.Job.DoneBlocks, []int32{0, 1, 2}) || r.Job.BlocksTotal != 3 {
		t.Fatalf("after both: done %v of %d, want all 3", r.Job.DoneBlocks, r.Job.BlocksTotal)
	}
	if err := checkJob(r.Job); err != nil {
		t.Fatalf("snapshot check of a head plan's job: %v", err)
	}
	back := startEpochFromLog(startEpochToLog(&cpb.StartEpoch{Plan: headPlan()}))
	if back.Plan.GetHeadGroups() != 2 || LogVersion != 4 {
		t.Fatalf("log round trip: head_groups %d, LogVersion %d", back.Plan.GetHeadGroups(), LogVersion)
	}
	// Units past G blocks, or head groups in a backward epoch, are refused.
	bad := headPlan()
	bad.Ranks[1].QBlocks = []int32{6}
	wantOK(t, applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "b", Spec: testSpec(""), UnixMs: 10}))
	wantErr(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "b", Epoch: 1, Plan: bad,
		Mode: pb.JobMode_JOB_MODE_FORWARD}), ErrBadCommand)
}

// TestHeadsReplanUnits: a re-plan keeps the job's head groups over the
// unfinished blocks of every group, or drops them when the workers are
// too few; layer and bf16-wire jobs never split heads; a backward epoch's
// done blocks become units of every group.
func TestHeadsReplanUnits(t *testing.T) {
	j := &cpb.Job{Spec: testSpec(""), Plan: headPlan()}
	req := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 300, Nk: 300, Block: 100, Ranks: 3, QBlocks: []int{2}}
	if w := planHeads(j, &req, 3); w != 3 || req.HeadGroups != 2 || !slices.Equal(req.QBlocks, []int{2, 5}) {
		t.Fatalf("re-plan on 3 workers: w %d, %d groups, units %v; want 3, 2, [2 5]", w, req.HeadGroups, req.QBlocks)
	}
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	if wire := transport.PlanToPB(p, []string{"a", "b", "c"}); wire.GetHeadGroups() != 2 {
		t.Fatalf("wire plan head_groups %d", wire.GetHeadGroups())
	}
	req = shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 300, Nk: 300, Block: 100, Ranks: 1, QBlocks: []int{2}, Strategy: shard.Heads}
	if w := planHeads(j, &req, 1); w != 1 || req.HeadGroups != 1 || req.Strategy != shard.Auto || !slices.Equal(req.QBlocks, []int{2}) {
		t.Fatalf("re-plan on 1 worker: w %d, %d groups, %s, %v", w, req.HeadGroups, req.Strategy, req.QBlocks)
	}
	req = shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 300, Nk: 300, Block: 100, Ranks: 3, QBlocks: []int{2}, Strategy: shard.Zigzag}
	if w := planHeads(j, &req, 3); w != 2 || req.Ranks != 2 || req.HeadGroups != 2 {
		t.Fatalf("zigzag re-plan on 3 workers: w %d, ranks %d, %d groups; want 2 ranks in 2 groups", w, req.Ranks, req.HeadGroups)
	}
	for _, s := range []*pb.JobSpec{
		{Kind: pb.JobKind_JOB_KIND_MHA, Mode: pb.JobMode_JOB_MODE_FORWARD},
		{Kind: pb.JobKind_JOB_KIND_MHA, Mode: pb.JobMode_JOB_MODE_FORWARD_BACKWARD},
		{Precision: pb.Precision_PRECISION_BF16},
	} {
		req := shard.Request{Strategy: shard.Heads}
		if planHeads(&cpb.Job{Spec: s}, &req, 4); req.HeadGroups != 1 || req.Strategy != shard.Auto {
			t.Fatalf("%v: %d head groups, strategy %q", s, req.HeadGroups, req.Strategy)
		}
	}
	done := doneUnits([]int32{1, 2}, p, 3)
	if !slices.Equal(done, []int32{1, 2, 4, 5}) {
		t.Fatalf("done blocks 1, 2 in 2 groups of 3 blocks: units %v", done)
	}
	fresh := shard.Request{}
	if planHeads(&cpb.Job{Spec: testSpec("")}, &fresh, 4); fresh.HeadGroups != 0 {
		t.Fatalf("first plan of a forward job: head groups %d, want the planner's choice (0)", fresh.HeadGroups)
	}
}
