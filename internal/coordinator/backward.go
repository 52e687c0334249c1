package coordinator

import (
	"slices"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Backward jobs (JobSpec.mode BACKWARD or FORWARD_BACKWARD).
//
// A FORWARD_BACKWARD job runs forward epochs first, exactly as a forward
// job with want_lse (o and lse go to the job's output namespace); once
// every forward block is done and checked in the store, its next epoch is
// a backward one reading o and lse from there. A BACKWARD job (o and lse
// uploaded with the inputs) runs backward epochs only.
//
// In the backward phase the job's blocks are "gradient units": unit b <
// QB is the dq of query block b, unit QB + j the dk and dv of key block j
// (QB, KB = the query and key block counts; BlocksTotal = QB + KB).
// DoneBlocks holds the units written complete (reported in a ShardDone of
// their epoch), Job.dq_checksums and dkv_checksums their checksums.
//
// Re-plan rule (ringattn DESIGN §7, fencing): dK/dV of a key block needs
// every query block, and only complete gradients are ever written. So if
// some dk/dv unit is not done, the next epoch plans ALL query blocks with
// the done units listed in done_dq/done_dkv (not written again);
// otherwise it plans only the query blocks whose dq is not done, with
// every key block in done_dkv. The lists are fixed in StartEpoch, so every
// rank of an epoch (and every re-issue by a new leader) gets the same
// ones. A partial dK/dV of an abandoned epoch never leaves its ring.

// qBlocks and kBlocks are a spec's query and key block counts.
func qBlocks(s *pb.JobSpec) int64 { return BlockCount(s) }

func kBlocks(s *pb.JobSpec) int64 {
	return BlockCount(&pb.JobSpec{N: s.GetNk(), Block: s.GetBlock()})
}

// blocksTotal is a new job's BlocksTotal: its query blocks, or its
// gradient units for a BACKWARD job (a FORWARD_BACKWARD job switches to
// units when its backward phase starts).
func blocksTotal(s *pb.JobSpec) int64 {
	if s.GetMode() == pb.JobMode_JOB_MODE_BACKWARD {
		return qBlocks(s) + kBlocks(s)
	}
	return qBlocks(s)
}

// inBackward reports whether j's current epoch is a backward one.
func inBackward(j *cpb.Job) bool { return j.GetEpochMode() == pb.JobMode_JOB_MODE_BACKWARD }

// forwardOfFB reports whether j is a FORWARD_BACKWARD job still in its
// forward phase.
func forwardOfFB(j *cpb.Job) bool {
	return j.GetSpec().GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD && !inBackward(j)
}

// phaseName is JobStatus.phase: "" for forward jobs.
func phaseName(j *cpb.Job) string {
	switch {
	case j.GetSpec().GetMode() == pb.JobMode_JOB_MODE_FORWARD:
		return ""
	case inBackward(j) || j.GetSpec().GetMode() == pb.JobMode_JOB_MODE_BACKWARD:
		return "backward"
	}
	return "forward"
}

// nextPass decides the pass of j's next epoch and, for a backward one,
// the Done lists and the query blocks to plan by the re-plan rule (nil:
// all). qblocks is what a forward re-plan would plan.
func nextPass(j *cpb.Job, qblocks []int) (mode pb.JobMode, doneDQ, doneDKV []int32, plan []int) {
	switch j.GetSpec().GetMode() {
	case pb.JobMode_JOB_MODE_FORWARD:
		return pb.JobMode_JOB_MODE_FORWARD, nil, nil, qblocks
	case pb.JobMode_JOB_MODE_FORWARD_BACKWARD:
		if !inBackward(j) && (j.Epoch == 0 || int64(len(j.DoneBlocks)) != j.BlocksTotal) {
			return pb.JobMode_JOB_MODE_FORWARD, nil, nil, qblocks
		}
	}
	qb := int32(qBlocks(j.Spec))
	if inBackward(j) {
		for _, u := range j.DoneBlocks {
			if u < qb {
				doneDQ = append(doneDQ, u)
			} else {
				doneDKV = append(doneDKV, u-qb)
			}
		}
	}
	if int64(len(doneDKV)) == kBlocks(j.Spec) {
		plan = []int{}
		for b := range qb {
			if _, done := slices.BinarySearch(doneDQ, b); !done {
				plan = append(plan, int(b))
			}
		}
	}
	return pb.JobMode_JOB_MODE_BACKWARD, doneDQ, doneDKV, plan
}

// outputNames are the tensors a succeeded job's status lists. A layer
// (mha) job lists y only: its forward+backward gradients are per-unit
// shares (gradShares) that pkg/client FetchMHAGrads reduces, not tensors a
// reader fetches whole; the leader checks them before the job succeeds
// all the same (checkGradUnit).
func outputNames(s *pb.JobSpec) []string {
	switch {
	case s.GetKind() == pb.JobKind_JOB_KIND_MHA:
		return []string{"y"}
	case s.GetMode() == pb.JobMode_JOB_MODE_BACKWARD:
		return []string{transport.TensorDQ, transport.TensorDK, transport.TensorDV}
	case s.GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD:
		return []string{transport.TensorO, transport.TensorLSE, transport.TensorDQ, transport.TensorDK, transport.TensorDV}
	case s.GetWantLse():
		return []string{transport.TensorO, transport.TensorLSE}
	}
	return []string{transport.TensorO}
}

// Shares of a layer (mha) job's gradients: with every complete dq (dk,
// dv) block the worker writes, under the same block index and before the
// block itself, the unit's share of the layer's gradients (the names and
// formulas of internal/worker mha_grad.go); pkg/client FetchMHAGrads adds
// dxq and dxkv block by block and sums the weight and bias shares over the
// blocks. No checksum of a share is reported, so the leader checks that
// each one is stored with its size.
const (
	tensorDXQ  = "dxq"
	tensorDXKV = "dxkv"
	tensorDWQ  = "dwq"
	tensorDWK  = "dwk"
	tensorDWV  = "dwv"
	tensorDWO  = "dwo"
	tensorDBQ  = "dbq"
	tensorDBK  = "dbk"
	tensorDBV  = "dbv"
	tensorDBO  = "dbo"
)

// blockRows is the row count of query (= key) block b of a self-attention
// spec: its block length, less for the last block.
func blockRows(s *pb.JobSpec, b int64) int64 {
	blockLen := s.GetBlock()
	if blockLen <= 0 {
		blockLen = shard.DefaultBlock
	}
	return max(0, min(blockLen, s.GetN()-b*blockLen))
}

// gradShare is one share tensor of a gradient unit and its float32 value
// count.
type gradShare struct {
	name  string
	elems int64
}

// gradShares returns the shares a layer job's gradient unit stores at
// block index block (query block for a dq unit, key block for a dk/dv
// unit): for dq, dxq [B, n, d_model], dwq [H·D, d_model], dwo [d_model,
// H·D] and with biases dbq [H·D], dbo [d_model]; for dk/dv, dxkv [B, n,
// d_model], dwk, dwv [H·D, d_model] and with biases dbk, dbv [H·D] (n: the
// block's rows, the last block ragged). nil for an attention job.
func gradShares(s *pb.JobSpec, dq bool, block int32) []gradShare {
	if s.GetKind() != pb.JobKind_JOB_KIND_MHA {
		return nil
	}
	dm, hd := s.GetDModel(), s.GetHq()*s.GetD()
	x := s.GetB() * blockRows(s, int64(block)) * dm
	var out []gradShare
	if dq {
		out = []gradShare{{tensorDXQ, x}, {tensorDWQ, hd * dm}, {tensorDWO, dm * hd}}
		if s.GetMhaBias() {
			out = append(out, gradShare{tensorDBQ, hd}, gradShare{tensorDBO, dm})
		}
		return out
	}
	out = []gradShare{{tensorDXKV, x}, {tensorDWK, hd * dm}, {tensorDWV, hd * dm}}
	if s.GetMhaBias() {
		out = append(out, gradShare{tensorDBK, hd}, gradShare{tensorDBV, hd})
	}
	return out
}

// gradUnit is what a unit of a backward phase stores: its tensors, store
// block and the checksums reported for them (found false when none).
func gradUnit(j *cpb.Job, u int32) (tensors []string, block int32, crcs []uint32, found bool) {
	qb := int32(qBlocks(j.Spec))
	if u < qb {
		i, ok := slices.BinarySearchFunc(j.DqChecksums, u, cmpGrad)
		if ok {
			crcs = []uint32{j.DqChecksums[i].GetCrc32C()}
		}
		return []string{transport.TensorDQ}, u, crcs, ok
	}
	i, ok := slices.BinarySearchFunc(j.DkvChecksums, u-qb, cmpGrad)
	if ok {
		crcs = []uint32{j.DkvChecksums[i].GetCrc32C(), j.DkvChecksums[i].GetCrc32CDv()}
	}
	return []string{transport.TensorDK, transport.TensorDV}, u - qb, crcs, ok
}

func cmpGrad(x *pb.GradChecksum, b int32) int {
	switch {
	case x.GetBlock() < b:
		return -1
	case x.GetBlock() > b:
		return 1
	}
	return 0
}

// upsertGrad records c in the sorted set xs (replacing the block's entry).
func upsertGrad(xs []*pb.GradChecksum, c *pb.GradChecksum) []*pb.GradChecksum {
	i, found := slices.BinarySearchFunc(xs, c.GetBlock(), cmpGrad)
	if found {
		xs[i] = c
		return xs
	}
	return slices.Insert(xs, i, c)
}

// deleteGrad removes block b from the sorted set xs.
func deleteGrad(xs []*pb.GradChecksum, b int32) []*pb.GradChecksum {
	if i, found := slices.BinarySearchFunc(xs, b, cmpGrad); found {
		return slices.Delete(xs, i, i+1)
	}
	return xs
}
