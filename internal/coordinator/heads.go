package coordinator

import (
	"slices"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Head-group plans (shard.Plan.HeadGroups, issue 20) on the cluster. A
// plan with G > 1 head groups lists units g·q_block_count+b in its ranks'
// q_blocks; every planned block has all G units, and each output block is
// written whole (the store holds every head of a block) by one writer: the
// rank owning block b of head group b mod G, which gathers the other
// groups' heads over the ring (ringattn's gather sink). So a job's done
// set stays in blocks — a block is done when its writer reports it — and
// output verification and fetching are unchanged. Backward passes do the
// same for dQ and dK/dV blocks (their done lists become units of every
// group, doneUnits).

// headGroups is a plan's number of head groups (1 without).
func headGroups(p *pb.Plan) int32 { return max(1, p.GetHeadGroups()) }

// writtenBlocks returns the output blocks rank writes in plan: its
// q_blocks, or with head groups the blocks it is the writer of.
func writtenBlocks(p *pb.Plan, rank int32) []int32 {
	if rank < 0 || int(rank) >= len(p.GetRanks()) {
		return nil
	}
	qb := p.GetRanks()[rank].GetQBlocks()
	g, n := headGroups(p), p.GetQBlockCount()
	if g == 1 || n <= 0 {
		return qb
	}
	var out []int32
	for _, u := range qb {
		if gu, b := u/n, u%n; gu == b%g {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out
}

// writerRank is the RankPlan whose q_blocks are what rank writes (for
// checking a report's checksums).
func writerRank(p *pb.Plan, rank int32) *pb.RankPlan {
	if headGroups(p) == 1 {
		return p.GetRanks()[rank]
	}
	return &pb.RankPlan{QBlocks: writtenBlocks(p, rank)}
}

// headsAllowed reports whether a job's epochs may split the heads:
// attention jobs (forward and backward passes) with a float32 wire (the
// gathers of output and gradient heads travel as frames in the ring's
// encoding; a bf16 wire would round them). Layer jobs project whole rows,
// so they keep all heads on every rank.
func headsAllowed(s *pb.JobSpec) bool {
	return s.GetKind() != pb.JobKind_JOB_KIND_MHA &&
		transport.EffectiveWire(s.GetWireDtype(), s.GetPrecision()) != pb.WireDType_WIRE_DTYPE_BF16
}

// doneUnits expands a backward epoch's done blocks to the units of every
// head group of plan (the blocks themselves without head groups): a block
// written whole is done in every group.
func doneUnits(done []int32, plan *shard.Plan, n int) []int32 {
	g := plan.Groups()
	if g == 1 || len(done) == 0 {
		return done
	}
	out := make([]int32, 0, g*len(done))
	for gi := range g {
		for _, b := range done {
			out = append(out, int32(gi*n)+b)
		}
	}
	return out
}

// planHeads sets the head groups of an epoch's request: none where
// headsAllowed says no; for a re-plan of a job whose plan has G > 1 head
// groups, G again over the unfinished blocks' units of every group (when
// there are ranks for every group; W a multiple of G for a sequence
// strategy), else none; for a first plan, the planner's choice. It returns
// the ranks to use (w or fewer).
func planHeads(j *cpb.Job, req *shard.Request, w int) int {
	switch {
	case !headsAllowed(j.Spec):
		req.HeadGroups = 1
		if req.Strategy == shard.Heads {
			req.Strategy = shard.Auto
		}
		return w
	case req.QBlocks == nil:
		return w // the planner chooses (Auto or heads), or the strategy asked for: 1
	}
	g := int(headGroups(j.GetPlan()))
	if g == 1 || w < g {
		req.HeadGroups = 1
		if req.Strategy == shard.Heads {
			req.Strategy = shard.Auto
		}
		return w
	}
	if req.Strategy != shard.Auto && req.Strategy != shard.Heads {
		w -= w % g
	}
	n := int(qBlocks(j.Spec))
	units := make([]int, 0, g*len(req.QBlocks))
	for gi := range g {
		for _, b := range req.QBlocks {
			units = append(units, gi*n+b)
		}
	}
	req.HeadGroups, req.QBlocks, req.Ranks = g, units, w
	return w
}
