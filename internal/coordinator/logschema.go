package coordinator

import (
	"fmt"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The log's edge. The Raft log and snapshots hold raft.proto's Log*
// messages, which import nothing of the wire schema; State works on
// state.proto's records, which carry wire types. Every conversion between
// the two is here, field by field, so a wire change is a log change only
// when it is made here on purpose (TestFSMLogSchema* fail when a wire
// field is not carried).

// LogVersion is the log format this build writes in Command.version; it
// reads entries of any version up to it (0, before the field, is 1).
//
//	1: the log messages were the wire messages (raft.proto imported
//	   api.proto and control.proto).
//	2: the log's own Log* messages, with v1's field numbers.
//	3: jobs have an owner (LogSubmit.owner, LogJob.owner; "" in older
//	   entries reads as transport.DefaultTenant) and submits carry the
//	   per-tenant active-jobs limit. A v2 build must not read a v3 entry:
//	   it would drop the owner and show the job to the default tenant.
//	4: plans may split the heads (LogPlan.head_groups, issue 20): ranks'
//	   q_blocks then hold units g*q_block_count+b, and a block is done when
//	   its writer reports it. A v3 build must not read a v4 entry: it would
//	   drop head_groups and refuse (or misread) the units.
const LogVersion = 4

// ownerOf is the owner an entry or record names: "" (written before v3)
// is the default tenant.
func ownerOf(owner string) string {
	if owner == "" {
		return transport.DefaultTenant
	}
	return owner
}

// logVersionOf is an entry's format version.
func logVersionOf(cmd *cpb.Command) uint32 { return max(cmd.GetVersion(), 1) }

func submitToLog(c *cpb.Submit) *cpb.LogSubmit {
	return &cpb.LogSubmit{JobId: c.GetJobId(), Spec: specToLog(c.GetSpec()), UnixMs: c.GetUnixMs(), MaxQueued: c.GetMaxQueued(),
		Owner: c.GetOwner(), MaxActivePerTenant: c.GetMaxActivePerTenant()}
}

func submitFromLog(c *cpb.LogSubmit) *cpb.Submit {
	return &cpb.Submit{JobId: c.GetJobId(), Spec: specFromLog(c.GetSpec()), UnixMs: c.GetUnixMs(), MaxQueued: c.GetMaxQueued(),
		Owner: ownerOf(c.GetOwner()), MaxActivePerTenant: c.GetMaxActivePerTenant()}
}

func startEpochToLog(c *cpb.StartEpoch) *cpb.LogStartEpoch {
	return &cpb.LogStartEpoch{JobId: c.GetJobId(), Epoch: c.GetEpoch(), Plan: planToLog(c.GetPlan()), UnixMs: c.GetUnixMs(),
		Mode: cpb.LogJobMode(c.GetMode()), DoneDq: c.GetDoneDq(), DoneDkv: c.GetDoneDkv()}
}

func startEpochFromLog(c *cpb.LogStartEpoch) *cpb.StartEpoch {
	return &cpb.StartEpoch{JobId: c.GetJobId(), Epoch: c.GetEpoch(), Plan: planFromLog(c.GetPlan()), UnixMs: c.GetUnixMs(),
		Mode: pb.JobMode(c.GetMode()), DoneDq: c.GetDoneDq(), DoneDkv: c.GetDoneDkv()}
}

func shardDoneToLog(c *cpb.ShardDone) *cpb.LogShardDone {
	return &cpb.LogShardDone{JobId: c.GetJobId(), Epoch: c.GetEpoch(), Rank: c.GetRank(), WorkerId: c.GetWorkerId(),
		Blocks: sumsToLog(c.GetBlocks()), UnixMs: c.GetUnixMs(),
		DqBlocks: gradsToLog(c.GetDqBlocks()), DkvBlocks: gradsToLog(c.GetDkvBlocks())}
}

func shardDoneFromLog(c *cpb.LogShardDone) *cpb.ShardDone {
	return &cpb.ShardDone{JobId: c.GetJobId(), Epoch: c.GetEpoch(), Rank: c.GetRank(), WorkerId: c.GetWorkerId(),
		Blocks: sumsFromLog(c.GetBlocks()), UnixMs: c.GetUnixMs(),
		DqBlocks: gradsFromLog(c.GetDqBlocks()), DkvBlocks: gradsFromLog(c.GetDkvBlocks())}
}

// jobToLog is a job's snapshot record.
func jobToLog(j *cpb.Job) *cpb.LogJob {
	return &cpb.LogJob{
		Id: j.GetId(), Spec: specToLog(j.GetSpec()), State: cpb.LogJobState(j.GetState()), Epoch: j.GetEpoch(),
		Reason: j.GetReason(), Plan: planToLog(j.GetPlan()), BlocksTotal: j.GetBlocksTotal(),
		DoneBlocks: j.GetDoneBlocks(), DoneRanks: j.GetDoneRanks(), Checksums: sumsToLog(j.GetChecksums()),
		CreatedUnixMs: j.GetCreatedUnixMs(), StartedUnixMs: j.GetStartedUnixMs(), FinishedUnixMs: j.GetFinishedUnixMs(),
		ExpiredUnixMs: j.GetExpiredUnixMs(), Seq: j.GetSeq(), Redos: j.GetRedos(),
		EpochMode: cpb.LogJobMode(j.GetEpochMode()), EpochDoneDq: j.GetEpochDoneDq(), EpochDoneDkv: j.GetEpochDoneDkv(),
		DqChecksums: gradsToLog(j.GetDqChecksums()), DkvChecksums: gradsToLog(j.GetDkvChecksums()),
		Owner: j.GetOwner(),
	}
}

// jobFromLog is the job of a snapshot record.
func jobFromLog(j *cpb.LogJob) *cpb.Job {
	return &cpb.Job{
		Id: j.GetId(), Spec: specFromLog(j.GetSpec()), State: pb.JobState(j.GetState()), Epoch: j.GetEpoch(),
		Reason: j.GetReason(), Plan: planFromLog(j.GetPlan()), BlocksTotal: j.GetBlocksTotal(),
		DoneBlocks: j.GetDoneBlocks(), DoneRanks: j.GetDoneRanks(), Checksums: sumsFromLog(j.GetChecksums()),
		CreatedUnixMs: j.GetCreatedUnixMs(), StartedUnixMs: j.GetStartedUnixMs(), FinishedUnixMs: j.GetFinishedUnixMs(),
		ExpiredUnixMs: j.GetExpiredUnixMs(), Seq: j.GetSeq(), Redos: j.GetRedos(),
		EpochMode: pb.JobMode(j.GetEpochMode()), EpochDoneDq: j.GetEpochDoneDq(), EpochDoneDkv: j.GetEpochDoneDkv(),
		DqChecksums: gradsFromLog(j.GetDqChecksums()), DkvChecksums: gradsFromLog(j.GetDkvChecksums()),
		Owner: ownerOf(j.GetOwner()),
	}
}

// The enums keep the values the wire had when the log was split; a value
// is carried as its number (an unknown one stays unknown both ways, and
// Apply refuses what it cannot use).

func specToLog(s *pb.JobSpec) *cpb.LogJobSpec {
	if s == nil {
		return nil
	}
	return &cpb.LogJobSpec{
		Kind: cpb.LogJobKind(s.GetKind()), B: s.GetB(), Hq: s.GetHq(), Hkv: s.GetHkv(), N: s.GetN(), Nk: s.GetNk(),
		D: s.GetD(), DModel: s.GetDModel(), Mask: maskToLog(s.GetMask()), Scale: s.GetScale(),
		WireDtype: cpb.LogWireDType(s.GetWireDtype()), Block: s.GetBlock(), Strategy: s.GetStrategy(),
		Parallelism: s.GetParallelism(), Priority: s.GetPriority(), DeadlineUnixMs: s.GetDeadlineUnixMs(),
		IdempotencyKey: s.GetIdempotencyKey(), AllowNonfinite: s.GetAllowNonfinite(), WantLse: s.GetWantLse(),
		MhaBias: s.GetMhaBias(), InputRef: s.GetInputRef(), Mode: cpb.LogJobMode(s.GetMode()),
		Precision: cpb.LogPrecision(s.GetPrecision()),
	}
}

func specFromLog(s *cpb.LogJobSpec) *pb.JobSpec {
	if s == nil {
		return nil
	}
	return &pb.JobSpec{
		Kind: pb.JobKind(s.GetKind()), B: s.GetB(), Hq: s.GetHq(), Hkv: s.GetHkv(), N: s.GetN(), Nk: s.GetNk(),
		D: s.GetD(), DModel: s.GetDModel(), Mask: maskFromLog(s.GetMask()), Scale: s.GetScale(),
		WireDtype: pb.WireDType(s.GetWireDtype()), Block: s.GetBlock(), Strategy: s.GetStrategy(),
		Parallelism: s.GetParallelism(), Priority: s.GetPriority(), DeadlineUnixMs: s.GetDeadlineUnixMs(),
		IdempotencyKey: s.GetIdempotencyKey(), AllowNonfinite: s.GetAllowNonfinite(), WantLse: s.GetWantLse(),
		MhaBias: s.GetMhaBias(), InputRef: s.GetInputRef(), Mode: pb.JobMode(s.GetMode()),
		Precision: pb.Precision(s.GetPrecision()),
	}
}

func maskToLog(m *pb.Mask) *cpb.LogMask {
	if m == nil {
		return nil
	}
	return &cpb.LogMask{Causal: m.GetCausal(), Windowed: m.GetWindowed(), WindowLeft: m.GetWindowLeft(),
		WindowRight: m.GetWindowRight(), Seqlens: m.GetSeqlens(), SeqlensK: m.GetSeqlensK()}
}

func maskFromLog(m *cpb.LogMask) *pb.Mask {
	if m == nil {
		return nil
	}
	return &pb.Mask{Causal: m.GetCausal(), Windowed: m.GetWindowed(), WindowLeft: m.GetWindowLeft(),
		WindowRight: m.GetWindowRight(), Seqlens: m.GetSeqlens(), SeqlensK: m.GetSeqlensK()}
}

func planToLog(p *pb.Plan) *cpb.LogPlan {
	if p == nil {
		return nil
	}
	out := &cpb.LogPlan{Strategy: p.GetStrategy(), N: p.GetN(), Nk: p.GetNk(), Block: p.GetBlock(),
		QBlockCount: p.GetQBlockCount(), KBlockCount: p.GetKBlockCount(), Steps: p.GetSteps(), Imbalance: p.GetImbalance(),
		HeadGroups: p.GetHeadGroups()}
	for _, rk := range p.GetRanks() {
		out.Ranks = append(out.Ranks, &cpb.LogRankPlan{QBlocks: rk.GetQBlocks(), KvBlocks: rk.GetKvBlocks(),
			Cost: rk.GetCost(), Bytes: rk.GetBytes(), WorkerId: rk.GetWorkerId()})
	}
	return out
}

func planFromLog(p *cpb.LogPlan) *pb.Plan {
	if p == nil {
		return nil
	}
	out := &pb.Plan{Strategy: p.GetStrategy(), N: p.GetN(), Nk: p.GetNk(), Block: p.GetBlock(),
		QBlockCount: p.GetQBlockCount(), KBlockCount: p.GetKBlockCount(), Steps: p.GetSteps(), Imbalance: p.GetImbalance(),
		HeadGroups: p.GetHeadGroups()}
	for _, rk := range p.GetRanks() {
		out.Ranks = append(out.Ranks, &pb.RankPlan{QBlocks: rk.GetQBlocks(), KvBlocks: rk.GetKvBlocks(),
			Cost: rk.GetCost(), Bytes: rk.GetBytes(), WorkerId: rk.GetWorkerId()})
	}
	return out
}

func sumsToLog(xs []*pb.BlockChecksum) []*cpb.LogBlockChecksum {
	var out []*cpb.LogBlockChecksum
	for _, x := range xs {
		out = append(out, &cpb.LogBlockChecksum{Block: x.GetBlock(), Crc32CO: x.GetCrc32CO(), Crc32CLse: x.GetCrc32CLse()})
	}
	return out
}

func sumsFromLog(xs []*cpb.LogBlockChecksum) []*pb.BlockChecksum {
	var out []*pb.BlockChecksum
	for _, x := range xs {
		out = append(out, &pb.BlockChecksum{Block: x.GetBlock(), Crc32CO: x.GetCrc32CO(), Crc32CLse: x.GetCrc32CLse()})
	}
	return out
}

func gradsToLog(xs []*pb.GradChecksum) []*cpb.LogGradChecksum {
	var out []*cpb.LogGradChecksum
	for _, x := range xs {
		out = append(out, &cpb.LogGradChecksum{Block: x.GetBlock(), Crc32C: x.GetCrc32C(), Crc32CDv: x.GetCrc32CDv()})
	}
	return out
}

func gradsFromLog(xs []*cpb.LogGradChecksum) []*pb.GradChecksum {
	var out []*pb.GradChecksum
	for _, x := range xs {
		out = append(out, &pb.GradChecksum{Block: x.GetBlock(), Crc32C: x.GetCrc32C(), Crc32CDv: x.GetCrc32CDv()})
	}
	return out
}

// errLogVersion: an entry written by a newer build.
func errLogVersion(v uint32) error {
	return fmt.Errorf("log format version %d: this build reads 1..%d (upgrade it)", v, LogVersion)
}
