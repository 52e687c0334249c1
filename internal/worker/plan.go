package worker

import (
	"fmt"
	"math"
	"regexp"
	"slices"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// task is a validated assignment in the algorithm's plain Go types.
type task struct {
	job       string
	epoch     uint64
	rank      int
	plan      *shard.Plan
	params    kernels.Params
	kind      pb.JobKind
	dModel    int
	bias      bool
	wantLSE   bool
	allowNaN  bool
	bf16      bool
	bucket    string
	inputRef  string
	outputRef string
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func badAssignment(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidAssignment, fmt.Sprintf(format, args...))
}

// toInt converts a wire int64 to int, naming the field when it does not fit
// in 0..limit.
func toInt(field string, v int64, lo, limit int64) (int, error) {
	if v < lo || v > limit {
		return 0, badAssignment("%s = %d, expected %d..%d", field, v, lo, limit)
	}
	return int(v), nil
}

// newTask validates a and converts it. Every error names the field at
// fault and what was expected.
func newTask(a *pb.Assignment, workerID string) (*task, error) {
	const maxDim = 1 << 40
	t := &task{job: a.GetJobId(), epoch: a.GetEpoch(), rank: int(a.GetRank())}
	switch {
	case !tokenRE.MatchString(t.job):
		return nil, badAssignment("job_id = %q, expected [A-Za-z0-9_-]+", t.job)
	case t.epoch == 0:
		return nil, badAssignment("epoch = 0, expected >= 1")
	case a.GetSize() < 1:
		return nil, badAssignment("size = %d, expected >= 1", a.GetSize())
	case a.GetRank() < 0 || a.GetRank() >= a.GetSize():
		return nil, badAssignment("rank = %d, expected 0..%d", a.GetRank(), a.GetSize()-1)
	case a.GetPlan() == nil:
		return nil, badAssignment("plan is missing")
	case a.GetParams() == nil:
		return nil, badAssignment("params is missing")
	case len(a.GetPlan().GetRanks()) != int(a.GetSize()):
		return nil, badAssignment("plan.ranks has %d entries, expected size = %d", len(a.GetPlan().GetRanks()), a.GetSize())
	}
	if w := a.GetPlan().GetRanks()[t.rank].GetWorkerId(); w != "" && w != workerID {
		return nil, badAssignment("plan.ranks[%d].worker_id = %q, expected this worker %q", t.rank, w, workerID)
	}
	t.bucket, t.inputRef, t.outputRef = a.GetBucket(), a.GetInputRef(), a.GetOutputRef()
	if t.outputRef == "" {
		t.outputRef = t.job
	}
	if t.inputRef == "" {
		return nil, badAssignment("input_ref is empty, expected the store namespace of the inputs")
	}
	for _, f := range []struct{ name, v string }{{"input_ref", t.inputRef}, {"output_ref", t.outputRef}} {
		if !tokenRE.MatchString(f.v) {
			return nil, badAssignment("%s = %q, expected [A-Za-z0-9_-]+", f.name, f.v)
		}
	}
	if t.bucket != "" && !tokenRE.MatchString(t.bucket) {
		return nil, badAssignment("bucket = %q, expected [A-Za-z0-9_-]+", t.bucket)
	}

	kp := a.GetParams()
	t.kind = kp.GetKind()
	var err error
	var b, hq, hkv, d int
	if b, err = toInt("params.b", kp.GetB(), 1, maxDim); err != nil {
		return nil, err
	}
	if hq, err = toInt("params.hq", kp.GetHq(), 1, maxDim); err != nil {
		return nil, err
	}
	if hkv, err = toInt("params.hkv", kp.GetHkv(), 1, maxDim); err != nil {
		return nil, err
	}
	if d, err = toInt("params.d", kp.GetD(), 1, kernels.MaxHeadDim); err != nil {
		return nil, err
	}
	switch t.kind {
	case pb.JobKind_JOB_KIND_ATTENTION:
	case pb.JobKind_JOB_KIND_MHA:
		if t.dModel, err = toInt("params.d_model", kp.GetDModel(), 1, maxDim); err != nil {
			return nil, err
		}
		if hq != hkv {
			return nil, badAssignment("params.hkv = %d, expected hq = %d for an mha job", hkv, hq)
		}
	default:
		return nil, badAssignment("params.kind = %v, expected JOB_KIND_ATTENTION or JOB_KIND_MHA", kp.GetKind())
	}
	scale := kp.GetScale()
	if scale == 0 || math.IsNaN(scale) || math.IsInf(scale, 0) {
		return nil, badAssignment("params.scale = %v, expected a resolved finite non-zero scale", scale)
	}
	switch kp.GetWireDtype() {
	case pb.WireDType_WIRE_DTYPE_UNSPECIFIED, pb.WireDType_WIRE_DTYPE_F32:
	case pb.WireDType_WIRE_DTYPE_BF16:
		t.bf16 = true
	default:
		return nil, badAssignment("params.wire_dtype = %v, expected F32 or BF16", kp.GetWireDtype())
	}
	t.wantLSE, t.allowNaN, t.bias = kp.GetWantLse(), kp.GetAllowNonfinite(), kp.GetMhaBias()

	pp := a.GetPlan()
	n, err := toInt("plan.n", pp.GetN(), 0, maxDim)
	if err != nil {
		return nil, err
	}
	nk, err := toInt("plan.nk", pp.GetNk(), 0, maxDim)
	if err != nil {
		return nil, err
	}
	block, err := toInt("plan.block", pp.GetBlock(), 1, maxDim)
	if err != nil {
		return nil, err
	}
	var mask kernels.Mask
	var smask shard.Mask
	if m := kp.GetMask(); m != nil {
		mask.Causal, mask.Windowed = m.GetCausal(), m.GetWindowed()
		mask.Left, mask.Right = int(m.GetWindowLeft()), int(m.GetWindowRight())
		if m.GetWindowLeft() < -1 || m.GetWindowRight() < -1 || m.GetWindowLeft() > maxDim || m.GetWindowRight() > maxDim {
			return nil, badAssignment("params.mask window (%d, %d), expected each -1 or >= 0", m.GetWindowLeft(), m.GetWindowRight())
		}
		if mask.SeqLens, err = lens("params.mask.seqlens", m.GetSeqlens()); err != nil {
			return nil, err
		}
		if mask.SeqLensK, err = lens("params.mask.seqlens_k", m.GetSeqlensK()); err != nil {
			return nil, err
		}
		smask = shard.Mask{Causal: mask.Causal, Windowed: mask.Windowed, Left: mask.Left, Right: mask.Right,
			SeqLens: mask.SeqLens, SeqLensK: mask.SeqLensK}
	}
	t.params = kernels.Params{Shape: kernels.Shape{B: b, Hq: hq, Hkv: hkv, D: d}, N: n, Nk: nk,
		Scale: float32(scale), Mask: mask}
	if err := t.params.Validate(); err != nil {
		return nil, badAssignment("params: %v", err)
	}
	if t.kind == pb.JobKind_JOB_KIND_MHA && n != nk {
		return nil, badAssignment("plan.nk = %d, expected plan.n = %d for an mha job (self-attention)", nk, n)
	}

	plan, err := planFromPB(pp, b, hq, hkv, d, block, n, nk, smask, t.bf16)
	if err != nil {
		return nil, err
	}
	t.plan = plan
	return t, nil
}

func lens(field string, v []int64) ([]int, error) {
	if len(v) == 0 {
		return nil, nil
	}
	out := make([]int, len(v))
	for i, x := range v {
		if x < 1 || x > 1<<40 {
			return nil, badAssignment("%s[%d] = %d, expected >= 1", field, i, x)
		}
		out[i] = int(x)
	}
	return out, nil
}

// planFromPB rebuilds the shard.Plan the leader made from its wire form and
// checks it with shard.Plan.Validate.
func planFromPB(pp *pb.Plan, b, hq, hkv, d, block, n, nk int, mask shard.Mask, bf16 bool) (*shard.Plan, error) {
	w := len(pp.GetRanks())
	elem := 4
	if bf16 {
		elem = 2
	}
	p := &shard.Plan{
		Strategy:    shard.Strategy(pp.GetStrategy()),
		N:           n,
		Nk:          nk,
		Block:       block,
		QBlockCount: int(pp.GetQBlockCount()),
		KBlockCount: int(pp.GetKBlockCount()),
		Steps:       int(pp.GetSteps()),
		Imbalance:   pp.GetImbalance(),
		Ranks:       make([]shard.Rank, w),
	}
	weights := make([]float64, w)
	planned := map[int]bool{}
	for r, rp := range pp.GetRanks() {
		weights[r] = 1
		rk := shard.Rank{Cost: rp.GetCost(), Bytes: rp.GetBytes()}
		for _, q := range rp.GetQBlocks() {
			rk.QBlocks = append(rk.QBlocks, int(q))
			planned[int(q)] = true
		}
		for _, j := range rp.GetKvBlocks() {
			rk.KVBlocks = append(rk.KVBlocks, int(j))
		}
		p.Ranks[r] = rk
	}
	for q := range planned {
		p.Planned = append(p.Planned, q)
	}
	slices.Sort(p.Planned)
	if p.Strategy == shard.SplitKV {
		p.Reduce = treeReduction(w)
	}
	p.Request = shard.Request{B: b, Hq: hq, Hkv: hkv, D: d, N: n, Nk: nk, Block: block, Mask: mask,
		Ranks: w, Weights: weights, Strategy: p.Strategy, QBlocks: p.Planned, ElemBytes: elem}
	if err := p.Validate(); err != nil {
		return nil, badAssignment("plan: %v", err)
	}
	return p, nil
}

// treeReduction is the split-KV reduction tree of shard.NewPlan for w ranks:
// at level l every rank r with r mod 2^(l+1) == 2^l sends to r - 2^l.
// shard.Plan.Validate checks it is the same tree.
func treeReduction(w int) []shard.ReduceStep {
	var steps []shard.ReduceStep
	for l := 0; 1<<l < w; l++ {
		for r := 1 << l; r < w; r += 1 << (l + 1) {
			steps = append(steps, shard.ReduceStep{Level: l, From: r, To: r - 1<<l})
		}
	}
	return steps
}
