package transport

import (
	"math"
	"strings"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// ParamsFromSpec is the kernel parameters an assignment of a job with spec
// s carries: the spec's shape, mask, dtype and flags, with the scale
// resolved (ResolveScale), so every rank computes with the same one, and
// the wire dtype resolved by EffectiveWire.
func ParamsFromSpec(s *pb.JobSpec) *pb.KernelParams {
	return &pb.KernelParams{
		Kind: s.GetKind(), B: s.GetB(), Hq: s.GetHq(), Hkv: s.GetHkv(), D: s.GetD(), DModel: s.GetDModel(),
		Mask: s.GetMask(), Scale: ResolveScale(s.GetScale(), s.GetD()), WireDtype: EffectiveWire(s.GetWireDtype(), s.GetPrecision()),
		WantLse: s.GetWantLse(), AllowNonfinite: s.GetAllowNonfinite(), MhaBias: s.GetMhaBias(),
		Mode: s.GetMode(), Precision: s.GetPrecision(),
	}
}

// Job is an assignment's job decoded for a worker: the plan of its epoch
// (whose Request is the job as the leader planned it), the kernels'
// parameters and the job's tensors.
type Job struct {
	Plan    *shard.Plan
	Params  kernels.Params
	Tensors shard.Tensors
	Kind    pb.JobKind
	BF16    bool // tensors travel as bfloat16
}

// JobFromPB decodes an assignment's params and plan, checked as the
// coordinator checked the spec on submit (the same limits, lim): an
// assignment the coordinator could not have sent is refused with a
// *FieldError naming "params.<field>", "plan.<field>" or "size", one it
// could have sent is accepted. Nothing is allocated by a count the
// message claims before that count is checked.
func JobFromPB(kp *pb.KernelParams, pp *pb.Plan, lim shard.Limits) (*Job, error) {
	if kp == nil {
		return nil, fieldError("params", "missing")
	}
	tensors, fe := tensorsOf("params", kp.GetKind(), kp.GetDModel(), kp.GetMhaBias(), kp.GetWantLse(), kp.GetMode())
	if fe != nil {
		return nil, fe
	}
	scale := kp.GetScale()
	if !(scale > 0) || math.IsInf(scale, 0) || !validScale32(scale) {
		return nil, fieldError("params.scale", "%v: want a resolved scale %g..%g", scale, minScale, maxScale)
	}
	prec, fe := precisionOf("params.precision", kp.GetPrecision())
	if fe != nil {
		return nil, fe
	}
	eb, fe := elemBytes("params.wire_dtype", EffectiveWire(kp.GetWireDtype(), kp.GetPrecision()))
	if fe != nil {
		return nil, fe
	}
	if fe := checkWireMask("params.mask", kp.GetMask(), lim); fe != nil {
		return nil, fe
	}
	job := shard.Request{B: int(kp.GetB()), Hq: int(kp.GetHq()), Hkv: int(kp.GetHkv()), D: int(kp.GetD()),
		Mask: MaskFromPB(kp.GetMask()), ElemBytes: eb}
	plan, err := PlanFromPB(pp, job, tensors, lim)
	if err != nil {
		return nil, err
	}
	req := plan.Request
	params := kernels.Params{Shape: kernels.Shape{B: req.B, Hq: req.Hq, Hkv: req.Hkv, D: req.D}, N: req.N, Nk: req.Nk,
		Scale: float32(scale), Mask: KernelMask(req.Mask), Precision: prec}
	if err := params.Validate(); err != nil {
		return nil, fieldError("params", "%s", strings.TrimPrefix(err.Error(), kernels.ErrInvalid.Error()+": "))
	}
	return &Job{Plan: plan, Params: params, Tensors: tensors, Kind: kp.GetKind(), BF16: eb == 2}, nil
}
