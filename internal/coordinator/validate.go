package coordinator

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// apiError is an error for a client: a code, the field at fault and a
// message that names the expected value.
type apiError struct {
	code  pb.ErrorCode
	field string
	msg   string
	wrap  error
	// retryAfter: the client should wait this long before retrying
	// (BUSY, a full queue).
	retryAfter time.Duration
}

func (e *apiError) Error() string {
	if e.field != "" {
		return e.field + ": " + e.msg
	}
	return e.msg
}

func (e *apiError) Unwrap() error { return e.wrap }

func invalidField(field, format string, args ...any) *apiError {
	return &apiError{code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, field: field, msg: fmt.Sprintf(format, args...), wrap: ErrInvalid}
}

func (e *apiError) proto() *pb.Error {
	return &pb.Error{Code: e.code, Field: e.field, Message: e.Error(), RetryAfterMs: e.retryAfter.Milliseconds()}
}

// validName checks an id, key or store namespace: it becomes part of NATS
// subjects and object names.
func validName(field, v string, required bool) *apiError {
	if v == "" {
		if required {
			return invalidField(field, "empty")
		}
		return nil
	}
	if len(v) > 128 {
		return invalidField(field, "%d bytes: want at most 128", len(v))
	}
	if i := strings.IndexFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}); i >= 0 {
		return invalidField(field, "%q has %q at byte %d: want only letters, digits, '-' and '_'", v, v[i], i)
	}
	return nil
}

// validateSpec checks a submitted spec per DESIGN §5, naming the first
// field at fault and the expected value. The job's shape, mask and size go
// through shard.Limits.Check, the one rule set the CLI, the SDK and the
// workers apply too; what is checked here besides is what only the wire
// spec has (kind, dtype, scale, names, deadline, parallelism).
func validateSpec(spec *pb.JobSpec, l Limits, now time.Time) *apiError {
	if spec == nil {
		return invalidField("spec", "missing")
	}
	tensors := shard.Tensors{LSE: spec.WantLse}
	switch spec.Mode {
	case pb.JobMode_JOB_MODE_FORWARD:
	case pb.JobMode_JOB_MODE_BACKWARD, pb.JobMode_JOB_MODE_FORWARD_BACKWARD:
		if spec.Kind != pb.JobKind_JOB_KIND_ATTENTION {
			return invalidField("spec.mode", "%v: backward passes are for attention jobs only", spec.Mode)
		}
		tensors.Grad = true
	default:
		return invalidField("spec.mode", "%v: want JOB_MODE_FORWARD, JOB_MODE_BACKWARD or JOB_MODE_FORWARD_BACKWARD", spec.Mode)
	}
	switch spec.Kind {
	case pb.JobKind_JOB_KIND_ATTENTION:
		if spec.DModel != 0 {
			return invalidField("spec.d_model", "%d: attention jobs want 0 (d_model is for mha)", spec.DModel)
		}
		if spec.MhaBias {
			return invalidField("spec.mha_bias", "true: biases are for mha jobs only")
		}
	case pb.JobKind_JOB_KIND_MHA:
		if spec.WantLse {
			return invalidField("spec.want_lse", "true: lse is an output of attention jobs only")
		}
		if spec.DModel < 1 {
			return invalidField("spec.d_model", "%d: an mha job wants d_model >= 1", spec.DModel)
		}
		tensors = shard.Tensors{DModel: int(spec.DModel), Bias: spec.MhaBias}
	default:
		return invalidField("spec.kind", "%v: want JOB_KIND_ATTENTION or JOB_KIND_MHA", spec.Kind)
	}
	if math.IsNaN(spec.Scale) || math.IsInf(spec.Scale, 0) || spec.Scale < 0 {
		return invalidField("spec.scale", "%v: want a finite number > 0 (or 0 for 1/sqrt(d))", spec.Scale)
	}
	switch spec.WireDtype {
	case pb.WireDType_WIRE_DTYPE_UNSPECIFIED, pb.WireDType_WIRE_DTYPE_F32, pb.WireDType_WIRE_DTYPE_BF16:
	default:
		return invalidField("spec.wire_dtype", "%v: want WIRE_DTYPE_F32 or WIRE_DTYPE_BF16", spec.WireDtype)
	}
	if spec.Parallelism < 0 || spec.Parallelism > 4096 {
		return invalidField("spec.parallelism", "%d: want 0..4096 ranks (0 = as many as useful)", spec.Parallelism)
	}
	if spec.DeadlineUnixMs < 0 || (spec.DeadlineUnixMs > 0 && spec.DeadlineUnixMs <= now.UnixMilli()) {
		return invalidField("spec.deadline_unix_ms", "%d: want a time in the future (or 0 for none)", spec.DeadlineUnixMs)
	}
	if e := validName("spec.idempotency_key", spec.IdempotencyKey, false); e != nil {
		return e
	}
	if e := validName("spec.input_ref", spec.InputRef, false); e != nil {
		return e
	}
	if spec.InputRef == "" && spec.IdempotencyKey == "" {
		return invalidField("spec.input_ref", "empty: want the store namespace the inputs were uploaded under (or an idempotency_key naming it)")
	}
	if m := spec.Mask; m != nil && !m.Windowed && (m.WindowLeft != 0 || m.WindowRight != 0) {
		return invalidField("spec.mask.windowed", "false with window (%d, %d): set windowed to use a window", m.WindowLeft, m.WindowRight)
	}
	// Count the documents before planRequest copies them.
	if m := spec.Mask; m != nil && (int64(len(m.Seqlens)) > l.MaxDocs || int64(len(m.SeqlensK)) > l.MaxDocs) {
		field := "spec.mask.seqlens"
		if int64(len(m.Seqlens)) <= l.MaxDocs {
			field = "spec.mask.seqlens_k"
		}
		return invalidField(field, "%d/%d documents: want at most %d (Limits.MaxDocs)", len(m.Seqlens), len(m.SeqlensK), l.MaxDocs)
	}
	req := planRequest(spec, 1, nil, nil)
	return limitError(l.Check(&req, tensors))
}

// limitError translates an error of shard.Limits.Check to a client error
// on the spec field it names: INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for a
// job above Limits.MaxJobBytes.
func limitError(err error) *apiError {
	if err == nil {
		return nil
	}
	var fe *shard.FieldError
	if !errors.As(err, &fe) {
		return invalidField("spec", "%v", err)
	}
	field := "spec"
	if fe.Field != "" {
		field += "." + fe.Field
	}
	if errors.Is(fe, shard.ErrLimit) {
		return &apiError{code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, field: field, msg: fe.Msg, wrap: ErrLimit}
	}
	return invalidField(field, "%s", fe.Msg)
}

// planRequest is the shard.Request of a job over ranks workers.
func planRequest(spec *pb.JobSpec, ranks int, weights []float64, qblocks []int) shard.Request {
	req := shard.Request{
		B: int(spec.B), Hq: int(spec.Hq), Hkv: int(spec.Hkv), D: int(spec.D),
		N: int(spec.N), Nk: int(spec.Nk), Block: int(spec.Block),
		Ranks: ranks, Weights: weights, Strategy: shard.Strategy(spec.Strategy),
		QBlocks: qblocks, ElemBytes: 4,
	}
	if spec.WireDtype == pb.WireDType_WIRE_DTYPE_BF16 {
		req.ElemBytes = 2
	}
	if m := spec.Mask; m != nil {
		req.Mask = shard.Mask{Causal: m.Causal, Windowed: m.Windowed, Left: int(m.WindowLeft), Right: int(m.WindowRight)}
		for _, x := range m.Seqlens {
			req.Mask.SeqLens = append(req.Mask.SeqLens, int(x))
		}
		for _, x := range m.SeqlensK {
			req.Mask.SeqLensK = append(req.Mask.SeqLensK, int(x))
		}
	}
	return req
}

// apiErrorOf translates an internal error to a client error.
func apiErrorOf(err error) *apiError {
	var ae *apiError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, ErrNotFound):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_NOT_FOUND, field: "job_id", msg: err.Error(), wrap: err}
	case errors.Is(err, ErrIdempotencyConflict):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, field: "spec.idempotency_key", msg: err.Error(), wrap: err}
	case errors.Is(err, ErrFinished):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION, field: "job_id", msg: err.Error(), wrap: err}
	case errors.Is(err, ErrNotLeader):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_NOT_LEADER, msg: err.Error(), wrap: err}
	case errors.Is(err, ErrQueueFull):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, msg: strings.TrimPrefix(err.Error(), "coordinator: limit exceeded: "), wrap: err, retryAfter: queueRetryAfter}
	case errors.Is(err, ErrLimit):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, msg: err.Error(), wrap: err}
	default:
		return &apiError{code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, msg: err.Error(), wrap: err}
	}
}
