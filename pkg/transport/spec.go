package transport

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The one codec between the wire (package pb) and the planner's and
// kernels' plain Go types: job specs, masks and plans. Every decoder
// bounds what it reads before it allocates by it and names the wire field
// at fault in a *FieldError.

// DefaultBlock is the block length in tokens of a job whose spec leaves
// block 0.
const DefaultBlock = shard.DefaultBlock

// DefaultScale is the softmax scale of a job with head dimension d whose
// spec leaves scale 0: 1/sqrt(d), as kernels.Params.EffectiveScale.
func DefaultScale(d int64) float64 { return 1 / math.Sqrt(float64(d)) }

// The kernels compute in float32: a scale must be a normal float32, or it
// would round to 0 (which the kernels read as "the default") or overflow.
const (
	minScale = 0x1p-126 // math.SmallestNonzeroFloat32 is subnormal; the smallest normal
	maxScale = math.MaxFloat32
)

// validScale32 reports whether s > 0 survives the kernels' float32.
func validScale32(s float64) bool { return s >= minScale && s <= maxScale }

// ResolveScale returns scale, or DefaultScale(d) when it is 0.
func ResolveScale(scale float64, d int64) float64 {
	if scale == 0 {
		return DefaultScale(d)
	}
	return scale
}

// ErrInvalidMessage is matched (errors.Is) by every *FieldError: a wire
// message that does not decode into a valid value.
var ErrInvalidMessage = errors.New("transport: invalid message")

// FieldError is a wire message refused by a decoder of this package: the
// field at fault (a path of the message's proto field names, e.g.
// "spec.mask.seqlens" or "plan.ranks[3].q_blocks") and what was expected.
// Err is shard.ErrLimit for a value beyond a configured limit (a client
// hears RESOURCE_EXHAUSTED), else nil.
type FieldError struct {
	Field string
	Msg   string
	Err   error
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// Is makes every FieldError match ErrInvalidMessage.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidMessage }

// Code is the API error code a client hears for e.
func (e *FieldError) Code() pb.ErrorCode {
	if errors.Is(e.Err, shard.ErrLimit) {
		return pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED
	}
	return pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
}

func fieldError(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// limitError renames an error of shard.Limits.Check or shard.Plan.Validate
// to the wire field it concerns: rename maps the planner's field name
// ("" for none) to the wire's.
func limitError(err error, rename func(string) string) *FieldError {
	if err == nil {
		return nil
	}
	var fe *shard.FieldError
	if !errors.As(err, &fe) {
		return &FieldError{Field: rename(""), Msg: strings.TrimPrefix(err.Error(), shard.ErrInvalid.Error()+": ")}
	}
	out := &FieldError{Field: rename(fe.Field), Msg: fe.Msg}
	if errors.Is(fe.Err, shard.ErrLimit) {
		out.Err = shard.ErrLimit
	}
	return out
}

// MaskFromPB converts a wire mask (nil: no mask) for the planner, without
// checking it (shard.Limits.Check does; callers bound the document counts
// first, as SpecToRequest does).
func MaskFromPB(m *pb.Mask) shard.Mask {
	if m == nil {
		return shard.Mask{}
	}
	return shard.Mask{
		Causal: m.GetCausal(), Windowed: m.GetWindowed(),
		Left: int(m.GetWindowLeft()), Right: int(m.GetWindowRight()),
		SeqLens: ints(m.GetSeqlens()), SeqLensK: ints(m.GetSeqlensK()),
	}
}

// MaskToPB is MaskFromPB's inverse; the zero mask is nil.
func MaskToPB(m shard.Mask) *pb.Mask {
	if !m.Causal && !m.Windowed && m.Left == 0 && m.Right == 0 && len(m.SeqLens) == 0 && len(m.SeqLensK) == 0 {
		return nil
	}
	return &pb.Mask{
		Causal: m.Causal, Windowed: m.Windowed,
		WindowLeft: int64(m.Left), WindowRight: int64(m.Right),
		Seqlens: int64s(m.SeqLens), SeqlensK: int64s(m.SeqLensK),
	}
}

// KernelMask returns m: the planner's and the kernels' masks are both
// pkg/mask's Mask. It stays for its callers.
func KernelMask(m shard.Mask) kernels.Mask { return m }

// ShardMask returns m (see KernelMask).
func ShardMask(m kernels.Mask) shard.Mask { return m }

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

func int64s(v []int) []int64 {
	if len(v) == 0 {
		return nil
	}
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

// checkWireMask checks what only the wire form of a mask can get wrong,
// before it is converted: a window without windowed, and more documents
// than lim.MaxDocs (counted before they are copied). field is the mask's
// path, e.g. "spec.mask".
func checkWireMask(field string, m *pb.Mask, lim shard.Limits) *FieldError {
	if m == nil {
		return nil
	}
	if !m.GetWindowed() && (m.GetWindowLeft() != 0 || m.GetWindowRight() != 0) {
		return fieldError(field+".windowed", "false with window (%d, %d): set windowed to use a window", m.GetWindowLeft(), m.GetWindowRight())
	}
	if n, nk := int64(len(m.GetSeqlens())), int64(len(m.GetSeqlensK())); n > lim.MaxDocs || nk > lim.MaxDocs {
		f := field + ".seqlens"
		if n <= lim.MaxDocs {
			f = field + ".seqlens_k"
		}
		return &FieldError{Field: f, Msg: fmt.Sprintf("%d/%d documents: want at most %d (Limits.MaxDocs)", n, nk, lim.MaxDocs), Err: shard.ErrLimit}
	}
	return nil
}

// tensorsOf checks the kind-specific fields of a job (as a spec or an
// assignment's params carries them; prefix is "spec" or "params") and
// returns its tensors. An mha assignment may ask for lse (want_lse): the
// forward pass of a forward+backward layer job also writes its attention's
// o and lse, which its backward pass reads; SpecToRequest refuses it in a
// spec, where an mha job's output is y.
func tensorsOf(prefix string, kind pb.JobKind, dModel int64, bias, wantLSE bool, mode pb.JobMode) (shard.Tensors, *FieldError) {
	switch mode {
	case pb.JobMode_JOB_MODE_FORWARD, pb.JobMode_JOB_MODE_BACKWARD, pb.JobMode_JOB_MODE_FORWARD_BACKWARD:
	default:
		return shard.Tensors{}, fieldError(prefix+".mode", "%v: want JOB_MODE_FORWARD, JOB_MODE_BACKWARD or JOB_MODE_FORWARD_BACKWARD", mode)
	}
	switch kind {
	case pb.JobKind_JOB_KIND_ATTENTION:
		if dModel != 0 {
			return shard.Tensors{}, fieldError(prefix+".d_model", "%d: attention jobs want 0 (d_model is for mha)", dModel)
		}
		if bias {
			return shard.Tensors{}, fieldError(prefix+".mha_bias", "true: biases are for mha jobs only")
		}
		return shard.Tensors{LSE: wantLSE, Grad: mode != pb.JobMode_JOB_MODE_FORWARD}, nil
	case pb.JobKind_JOB_KIND_MHA:
		if dModel < 1 {
			return shard.Tensors{}, fieldError(prefix+".d_model", "%d: an mha job wants d_model >= 1", dModel)
		}
		return shard.Tensors{DModel: int(dModel), Bias: bias, LSE: wantLSE, Grad: mode != pb.JobMode_JOB_MODE_FORWARD}, nil
	}
	return shard.Tensors{}, fieldError(prefix+".kind", "%v: want JOB_KIND_ATTENTION or JOB_KIND_MHA", kind)
}

// elemBytes is the wire size of one element of dtype, or a FieldError
// naming field.
func elemBytes(field string, dt pb.WireDType) (int, *FieldError) {
	switch dt {
	case pb.WireDType_WIRE_DTYPE_UNSPECIFIED, pb.WireDType_WIRE_DTYPE_F32:
		return 4, nil
	case pb.WireDType_WIRE_DTYPE_BF16:
		return 2, nil
	}
	return 0, fieldError(field, "%v: want WIRE_DTYPE_F32 or WIRE_DTYPE_BF16", dt)
}

// precisionOf decodes a wire precision, or a FieldError naming field.
func precisionOf(field string, p pb.Precision) (kernels.Precision, *FieldError) {
	switch p {
	case pb.Precision_PRECISION_FP32:
		return kernels.PrecisionF32, nil
	case pb.Precision_PRECISION_BF16:
		return kernels.PrecisionBF16, nil
	}
	return 0, fieldError(field, "%v: want PRECISION_FP32 or PRECISION_BF16", p)
}

// PrecisionFromPB decodes a wire precision for the kernels; an unknown
// value is a *FieldError naming "spec.precision".
func PrecisionFromPB(p pb.Precision) (kernels.Precision, error) {
	k, fe := precisionOf("spec.precision", p)
	if fe != nil {
		return 0, fe
	}
	return k, nil
}

// EffectiveWire is the wire dtype of a job's key/value blocks: dt, except
// that a bf16 job (precision PRECISION_BF16) that leaves dt UNSPECIFIED
// sends bf16, since its kernels round K and V to bf16 on arrival anyway
// (bit-identical results, half the bytes). An explicit WIRE_DTYPE_F32
// stays f32.
func EffectiveWire(dt pb.WireDType, p pb.Precision) pb.WireDType {
	if dt == pb.WireDType_WIRE_DTYPE_UNSPECIFIED && p == pb.Precision_PRECISION_BF16 {
		return pb.WireDType_WIRE_DTYPE_BF16
	}
	return dt
}

// SpecToRequest decodes a submitted job spec into the planner's request
// over ranks ranks and the job's tensors, checked against lim (the rules
// the CLI, the SDK, the coordinator and the workers all apply): kind and
// its fields, scale, precision, wire dtype, mask, shape, block, strategy and size.
// Errors are *FieldError naming "spec.<field>". It does not check what
// only the API has (names, deadline, parallelism). The caller sets
// Weights and QBlocks on the request when it plans an epoch.
func SpecToRequest(spec *pb.JobSpec, ranks int, lim shard.Limits) (shard.Request, shard.Tensors, error) {
	if spec == nil {
		return shard.Request{}, shard.Tensors{}, fieldError("spec", "missing")
	}
	tensors, fe := tensorsOf("spec", spec.GetKind(), spec.GetDModel(), spec.GetMhaBias(), spec.GetWantLse(), spec.GetMode())
	if fe != nil {
		return shard.Request{}, shard.Tensors{}, fe
	}
	if spec.GetKind() == pb.JobKind_JOB_KIND_MHA {
		// A layer's backward needs its attention's o and lse, which only
		// its own forward pass writes: gradients come from FORWARD_BACKWARD.
		switch {
		case spec.GetWantLse():
			return shard.Request{}, shard.Tensors{}, fieldError("spec.want_lse", "true: an mha job outputs y, want false")
		case spec.GetMode() == pb.JobMode_JOB_MODE_BACKWARD:
			return shard.Request{}, shard.Tensors{}, fieldError("spec.mode",
				"%v: an mha job's backward pass runs after its own forward, want JOB_MODE_FORWARD_BACKWARD (or JOB_MODE_FORWARD)", spec.GetMode())
		}
	}
	if s := spec.GetScale(); math.IsNaN(s) || math.IsInf(s, 0) || s < 0 || (s != 0 && !validScale32(s)) {
		return shard.Request{}, shard.Tensors{}, fieldError("spec.scale", "%v: want %g..%g (or 0 for 1/sqrt(d))", s, minScale, maxScale)
	}
	if _, fe := precisionOf("spec.precision", spec.GetPrecision()); fe != nil {
		return shard.Request{}, shard.Tensors{}, fe
	}
	eb, fe := elemBytes("spec.wire_dtype", EffectiveWire(spec.GetWireDtype(), spec.GetPrecision()))
	if fe != nil {
		return shard.Request{}, shard.Tensors{}, fe
	}
	if fe := checkWireMask("spec.mask", spec.GetMask(), lim); fe != nil {
		return shard.Request{}, shard.Tensors{}, fe
	}
	req := shard.Request{
		B: int(spec.GetB()), Hq: int(spec.GetHq()), Hkv: int(spec.GetHkv()), D: int(spec.GetD()),
		N: int(spec.GetN()), Nk: int(spec.GetNk()), Block: int(spec.GetBlock()),
		Mask: MaskFromPB(spec.GetMask()), Ranks: ranks,
		Strategy: shard.Strategy(spec.GetStrategy()), ElemBytes: eb,
	}
	if fe := limitError(lim.Check(&req, tensors), specField); fe != nil {
		return shard.Request{}, shard.Tensors{}, fe
	}
	return req, tensors, nil
}

// specField names a planner field in a JobSpec.
func specField(f string) string {
	switch f {
	case "":
		return "spec"
	case "ranks":
		return "spec.parallelism"
	}
	return "spec." + f
}

// PlanToPB encodes a plan for the wire (the raft log and assignments);
// rank i runs on workers[i % len(workers)] (no worker ids when workers is
// empty).
func PlanToPB(sp *shard.Plan, workers []string) *pb.Plan {
	p := &pb.Plan{
		Strategy: string(sp.Strategy), N: int64(sp.N), Nk: int64(sp.Nk), Block: int64(sp.Block),
		QBlockCount: int32(sp.QBlockCount), KBlockCount: int32(sp.KBlockCount), Steps: int32(sp.Steps),
		Imbalance: sp.Imbalance, HeadGroups: int32(sp.HeadGroups),
	}
	for i, rk := range sp.Ranks {
		rp := &pb.RankPlan{Cost: rk.Cost, Bytes: rk.Bytes}
		if len(workers) > 0 {
			rp.WorkerId = workers[i%len(workers)]
		}
		for _, b := range rk.QBlocks {
			rp.QBlocks = append(rp.QBlocks, int32(b))
		}
		for _, b := range rk.KVBlocks {
			rp.KvBlocks = append(rp.KvBlocks, int32(b))
		}
		p.Ranks = append(p.Ranks, rp)
	}
	return p
}

// PlanFromPB decodes a wire plan for job, the request the plan was made
// for as the assignment's params give it (shape, mask, element size; its
// N, Nk, Block, Ranks and Strategy are taken from pp), whose tensors are
// tensors. It checks the request against lim, then rebuilds the plan (equal weights; the split-KV
// reduction tree) and checks it with shard.Plan.Validate, so a plan the
// coordinator could not have made is refused with a *FieldError naming
// "plan.<field>" (or "size" for the rank count, "params.<field>" for the
// job's shape), never a panic. What it allocates is bounded by the entries
// pp lists.
func PlanFromPB(pp *pb.Plan, job shard.Request, tensors shard.Tensors, lim shard.Limits) (*shard.Plan, error) {
	if pp == nil {
		return nil, fieldError("plan", "missing")
	}
	req := job
	req.N, req.Nk, req.Block = int(pp.GetN()), int(pp.GetNk()), int(pp.GetBlock())
	req.Ranks, req.Strategy = len(pp.GetRanks()), shard.Strategy(pp.GetStrategy())
	req.Weights, req.QBlocks = nil, nil
	req.HeadGroups = int(pp.GetHeadGroups())
	if g := pp.GetHeadGroups(); g < 0 || g > int32(max(1, req.Hkv)) {
		return nil, fieldError("plan.head_groups", "%d: want 0..hkv = %d", g, req.Hkv)
	}
	if pp.GetBlock() == 0 {
		return nil, fieldError("plan.block", "0: want the planned block length >= 1")
	}
	if fe := limitError(lim.Check(&req, tensors), planField); fe != nil {
		return nil, fe
	}
	if req.Strategy == shard.Auto {
		return nil, fieldError("plan.strategy", "empty: want a concrete strategy")
	}
	p := planOf(pp, req)
	if err := p.Validate(); err != nil {
		return nil, limitError(err, func(string) string { return "plan" })
	}
	return p, nil
}

// planField names a planner field in an assignment: the plan's own
// fields, its rank count (size), and the job's (params.<field>).
func planField(f string) string {
	switch f {
	case "":
		return "params"
	case "n", "nk", "block", "strategy":
		return "plan." + f
	case "ranks":
		return "size"
	}
	return "params." + f
}

// planOf rebuilds the shard.Plan pp encodes for req (checked).
func planOf(pp *pb.Plan, req shard.Request) *shard.Plan {
	w := len(pp.GetRanks())
	p := &shard.Plan{
		Strategy: req.Strategy, N: req.N, Nk: req.Nk, Block: req.Block,
		QBlockCount: int(pp.GetQBlockCount()), KBlockCount: int(pp.GetKBlockCount()),
		Steps: int(pp.GetSteps()), Imbalance: pp.GetImbalance(),
		Ranks: make([]shard.Rank, w), HeadGroups: req.HeadGroups,
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
	return p
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
