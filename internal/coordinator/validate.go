package coordinator

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
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

// api is e as transport's API error (what ServeAPI sends).
func (e *apiError) api() *transport.APIError {
	return &transport.APIError{Code: e.code, Field: e.field, Message: e.msg, RetryAfter: e.retryAfter}
}

// validName checks an id, key or store namespace by transport's one name
// rule (it becomes part of NATS subjects and object names).
func validName(field, v string, required bool) *apiError {
	if v == "" {
		if required {
			return invalidField(field, "empty")
		}
		return nil
	}
	if transport.ValidateName(field, v) != nil {
		if len(v) > 128 {
			return invalidField(field, "%d bytes: want 1..128 characters of [A-Za-z0-9_-]", len(v))
		}
		return invalidField(field, "%q: want 1..128 characters of [A-Za-z0-9_-]", v)
	}
	return nil
}

// validateSpec checks a submitted spec per DESIGN §5, naming the first
// field at fault and the expected value. Kind, mode, scale, dtype, mask,
// shape and size go through transport.SpecToRequest, the one codec and
// rule set the CLI, the SDK and the workers apply too; what is checked
// here besides is what only the API has (names, deadline, parallelism).
func validateSpec(spec *pb.JobSpec, l Limits, now time.Time) *apiError {
	if _, err := specRequest(spec, 1, l); err != nil {
		return err
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
	return nil
}

// specRequest is the planner's request for spec over ranks ranks, decoded
// and checked by transport.SpecToRequest; its *FieldError becomes a
// client error on the field it names (RESOURCE_EXHAUSTED for a limit).
func specRequest(spec *pb.JobSpec, ranks int, l Limits) (shard.Request, *apiError) {
	req, _, err := transport.SpecToRequest(spec, ranks, l.Limits)
	if err == nil {
		return req, nil
	}
	var fe *transport.FieldError
	if !errors.As(err, &fe) {
		return shard.Request{}, invalidField("spec", "%v", err)
	}
	if fe.Code() == pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED {
		return shard.Request{}, &apiError{code: fe.Code(), field: fe.Field, msg: fe.Msg, wrap: ErrLimit}
	}
	return shard.Request{}, invalidField(fe.Field, "%s", fe.Msg)
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
	case errors.Is(err, ErrTenantQuota):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, msg: strings.TrimPrefix(err.Error(), "coordinator: limit exceeded: tenant quota: "), wrap: err}
	case errors.Is(err, ErrLimit):
		return &apiError{code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, msg: err.Error(), wrap: err}
	default:
		return &apiError{code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, msg: err.Error(), wrap: err}
	}
}
