package worker

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"

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
	// Backward ranks (mode BACKWARD): o and lse are read from oLSERef;
	// doneDQ and doneDKV are the blocks an earlier epoch wrote.
	mode            pb.JobMode
	oLSERef         string
	doneDQ, doneDKV []int
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func badAssignment(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidAssignment, fmt.Sprintf(format, args...))
}

// newTask validates a against the default job limits (newTaskLimits).
func newTask(a *pb.Assignment, workerID string) (*task, error) {
	return newTaskLimits(a, workerID, shard.DefaultLimits())
}

// newTaskLimits validates a and converts it. The job's shape, mask and size
// go through lim.Check, the rule set the coordinator applied on submit, so
// an assignment the coordinator could not have sent (with the same limits)
// is refused and one it could have sent is accepted. Every error names the
// field at fault and what was expected; nothing is allocated by a count the
// assignment claims before that count is checked.
func newTaskLimits(a *pb.Assignment, workerID string, lim shard.Limits) (*task, error) {
	t := &task{job: a.GetJobId(), epoch: a.GetEpoch(), rank: int(a.GetRank())}
	switch {
	case !tokenRE.MatchString(t.job):
		return nil, badAssignment("job_id = %.64q, expected [A-Za-z0-9_-]+", t.job)
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
		return nil, badAssignment("plan.ranks[%d].worker_id = %.64q, expected this worker %q", t.rank, w, workerID)
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
			return nil, badAssignment("%s = %.64q, expected [A-Za-z0-9_-]+", f.name, f.v)
		}
	}
	if t.bucket != "" && !tokenRE.MatchString(t.bucket) {
		return nil, badAssignment("bucket = %.64q, expected [A-Za-z0-9_-]+", t.bucket)
	}

	kp, pp := a.GetParams(), a.GetPlan()
	t.kind = kp.GetKind()
	t.wantLSE, t.allowNaN, t.bias = kp.GetWantLse(), kp.GetAllowNonfinite(), kp.GetMhaBias()
	tensors := shard.Tensors{LSE: t.wantLSE}
	t.mode = kp.GetMode()
	switch t.mode {
	case pb.JobMode_JOB_MODE_FORWARD:
		if len(a.GetDoneDq()) != 0 || len(a.GetDoneDkv()) != 0 || a.GetOLseRef() != "" {
			return nil, badAssignment("done_dq, done_dkv and o_lse_ref are set on a forward assignment, expected them empty")
		}
	case pb.JobMode_JOB_MODE_BACKWARD:
		if t.kind != pb.JobKind_JOB_KIND_ATTENTION {
			return nil, badAssignment("params.mode = JOB_MODE_BACKWARD with kind %v, expected JOB_KIND_ATTENTION", t.kind)
		}
		tensors.Grad = true
		t.oLSERef = a.GetOLseRef()
		if t.oLSERef == "" {
			t.oLSERef = t.inputRef
		}
		if !tokenRE.MatchString(t.oLSERef) {
			return nil, badAssignment("o_lse_ref = %.64q, expected [A-Za-z0-9_-]+", t.oLSERef)
		}
	default:
		return nil, badAssignment("params.mode = %v, expected JOB_MODE_FORWARD or JOB_MODE_BACKWARD (a forward+backward job is assigned pass by pass)", kp.GetMode())
	}
	// What only the wire spec has, as the coordinator's validateSpec checks it.
	switch t.kind {
	case pb.JobKind_JOB_KIND_ATTENTION:
		if kp.GetDModel() != 0 {
			return nil, badAssignment("params.d_model = %d, expected 0 for an attention job", kp.GetDModel())
		}
		if t.bias {
			return nil, badAssignment("params.mha_bias = true, expected false for an attention job")
		}
	case pb.JobKind_JOB_KIND_MHA:
		if kp.GetDModel() < 1 {
			return nil, badAssignment("params.d_model = %d, expected >= 1 for an mha job", kp.GetDModel())
		}
		if t.wantLSE {
			return nil, badAssignment("params.want_lse = true, expected false for an mha job")
		}
		tensors = shard.Tensors{DModel: int(kp.GetDModel()), Bias: t.bias}
	default:
		return nil, badAssignment("params.kind = %v, expected JOB_KIND_ATTENTION or JOB_KIND_MHA", kp.GetKind())
	}
	scale := kp.GetScale()
	if !(scale > 0) || math.IsInf(scale, 0) {
		return nil, badAssignment("params.scale = %v, expected a resolved finite scale > 0", scale)
	}
	switch kp.GetWireDtype() {
	case pb.WireDType_WIRE_DTYPE_UNSPECIFIED, pb.WireDType_WIRE_DTYPE_F32:
	case pb.WireDType_WIRE_DTYPE_BF16:
		t.bf16 = true
	default:
		return nil, badAssignment("params.wire_dtype = %v, expected F32 or BF16", kp.GetWireDtype())
	}
	m := kp.GetMask()
	if m != nil && !m.GetWindowed() && (m.GetWindowLeft() != 0 || m.GetWindowRight() != 0) {
		return nil, badAssignment("params.mask.windowed = false with window (%d, %d), expected no window", m.GetWindowLeft(), m.GetWindowRight())
	}
	if m != nil && (int64(len(m.GetSeqlens())) > lim.MaxDocs || int64(len(m.GetSeqlensK())) > lim.MaxDocs) {
		return nil, badAssignment("params.mask.seqlens: %d/%d documents, expected at most %d (limits.MaxDocs)",
			len(m.GetSeqlens()), len(m.GetSeqlensK()), lim.MaxDocs)
	}
	elem := 4
	if t.bf16 {
		elem = 2
	}
	// The request the leader planned, from the wire (int is 64 bits wide
	// here, so no value is cut; Check bounds them all).
	req := shard.Request{B: int(kp.GetB()), Hq: int(kp.GetHq()), Hkv: int(kp.GetHkv()), D: int(kp.GetD()),
		N: int(pp.GetN()), Nk: int(pp.GetNk()), Block: int(pp.GetBlock()), Ranks: len(pp.GetRanks()),
		Strategy: shard.Strategy(pp.GetStrategy()), ElemBytes: elem}
	if pp.GetBlock() == 0 {
		return nil, badAssignment("plan.block = 0, expected the planned block length >= 1")
	}
	var mask kernels.Mask
	if m != nil {
		req.Mask = shard.Mask{Causal: m.GetCausal(), Windowed: m.GetWindowed(), Left: int(m.GetWindowLeft()), Right: int(m.GetWindowRight()),
			SeqLens: ints(m.GetSeqlens()), SeqLensK: ints(m.GetSeqlensK())}
		mask = kernels.Mask{Causal: req.Mask.Causal, Windowed: req.Mask.Windowed, Left: req.Mask.Left, Right: req.Mask.Right,
			SeqLens: req.Mask.SeqLens, SeqLensK: req.Mask.SeqLensK}
	}
	if err := lim.Check(&req, tensors); err != nil {
		return nil, badAssignment("%s", limitField(err))
	}
	if req.Strategy == shard.Auto {
		return nil, badAssignment("plan.strategy is empty, expected a concrete strategy")
	}
	t.dModel = tensors.DModel
	t.params = kernels.Params{Shape: kernels.Shape{B: req.B, Hq: req.Hq, Hkv: req.Hkv, D: req.D}, N: req.N, Nk: req.Nk,
		Scale: float32(scale), Mask: mask}
	if err := t.params.Validate(); err != nil {
		return nil, badAssignment("params: %v", strings.TrimPrefix(err.Error(), kernels.ErrInvalid.Error()+": "))
	}
	plan, err := planFromPB(pp, req)
	if err != nil {
		return nil, err
	}
	t.plan = plan
	if t.mode == pb.JobMode_JOB_MODE_BACKWARD {
		if t.doneDQ, err = doneList("done_dq", a.GetDoneDq(), plan.QBlockCount); err != nil {
			return nil, err
		}
		if t.doneDKV, err = doneList("done_dkv", a.GetDoneDkv(), plan.KBlockCount); err != nil {
			return nil, err
		}
		// The fencing rule (ringattn DESIGN §7): dK/dV need every query block.
		if len(plan.Planned) != plan.QBlockCount && len(t.doneDKV) != plan.KBlockCount {
			return nil, badAssignment("plan covers %d of %d query blocks but done_dkv lists %d of %d key blocks, expected a plan over all query blocks or every key block in done_dkv",
				len(plan.Planned), plan.QBlockCount, len(t.doneDKV), plan.KBlockCount)
		}
	}
	return t, nil
}

// doneList checks a Done list of a backward assignment: at most count
// distinct blocks, each in 0..count-1 (checked before anything is
// allocated by its length).
func doneList(field string, v []int32, count int) ([]int, error) {
	if len(v) > count {
		return nil, badAssignment("%s has %d blocks, expected at most %d", field, len(v), count)
	}
	seen := make([]bool, count)
	out := make([]int, len(v))
	for i, b := range v {
		if b < 0 || int(b) >= count {
			return nil, badAssignment("%s[%d] = %d, expected a block in 0..%d", field, i, b, count-1)
		}
		if seen[b] {
			return nil, badAssignment("%s[%d] = %d is listed twice, expected distinct blocks", field, i, b)
		}
		seen[b] = true
		out[i] = int(b)
	}
	return out, nil
}

// limitField renders an error of shard.Limits.Check with the assignment
// field it names: plan.n, plan.nk, plan.block, plan.strategy, size, or
// params.<field> for the rest.
func limitField(err error) string {
	var fe *shard.FieldError
	if !errors.As(err, &fe) {
		return err.Error()
	}
	field := "params"
	switch fe.Field {
	case "":
	case "n", "nk", "block", "strategy":
		field = "plan." + fe.Field
	case "ranks":
		field = "size"
	default:
		field += "." + fe.Field
	}
	return field + ": " + fe.Msg
}

// ints converts wire lengths; nil stays nil (no documents).
func ints(v []int64) []int {
	if len(v) == 0 {
		return nil
	}
	out := make([]int, len(v))
	for i, x := range v {
		out[i] = int(x)
	}
	return out
}

// planFromPB rebuilds the shard.Plan the leader made for req from its wire
// form and checks it with shard.Plan.Validate. What it allocates is bounded
// by the entries the plan lists (req was checked against the limits).
func planFromPB(pp *pb.Plan, req shard.Request) (*shard.Plan, error) {
	w := len(pp.GetRanks())
	p := &shard.Plan{
		Strategy:    req.Strategy,
		N:           req.N,
		Nk:          req.Nk,
		Block:       req.Block,
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
	req.Weights, req.QBlocks = weights, p.Planned
	p.Request = req
	if err := p.Validate(); err != nil {
		return nil, badAssignment("plan: %v", strings.TrimPrefix(err.Error(), shard.ErrInvalid.Error()+": "))
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
