package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestClientPrecision: JobOptions.Precision reaches the spec (fp32 by
// default, bf16 the last valid value) and one past the last valid value
// is refused before the store is opened, naming spec.precision and the
// values it wants.
func TestClientPrecision(t *testing.T) {
	for _, tc := range []struct {
		p    kernels.Precision
		want pb.Precision
	}{{kernels.PrecisionF32, pb.Precision_PRECISION_FP32}, {kernels.PrecisionBF16, pb.Precision_PRECISION_BF16}} {
		if got := (&JobOptions{Precision: tc.p}).spec(pb.JobKind_JOB_KIND_ATTENTION).GetPrecision(); got != tc.want {
			t.Errorf("JobOptions{Precision: %v}.spec precision = %v, want %v", tc.p, got, tc.want)
		}
	}
	e := transporttest.RunServer(t)
	conn := transport.NewConn(transporttest.Connect(t, e), transporttest.Config(e).Subjects(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(ctx, conn, transporttest.Config(e), Options{})
	if err != nil {
		t.Fatal(err)
	}
	spec := (&JobOptions{Precision: kernels.PrecisionBF16}).spec(pb.JobKind_JOB_KIND_ATTENTION)
	spec.B, spec.Hq, spec.Hkv, spec.N, spec.Nk, spec.D = 1, 1, 1, 4, 4, 8
	if err := c.check(spec); err != nil {
		t.Fatalf("bf16: %v", err)
	}
	q := tensor.New(make([]float32, 32), 1, 1, 4, 8)
	_, err = c.SubmitAttention(ctx, q, q, q, false, JobOptions{Precision: kernels.PrecisionBF16 + 1})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || ae.Field != "spec.precision" ||
		!strings.Contains(ae.Message, "want PRECISION_FP32 or PRECISION_BF16") || !errors.Is(err, ErrInvalid) {
		t.Errorf("precision %d: got %v, want INVALID_ARGUMENT on spec.precision", kernels.PrecisionBF16+1, err)
	}
	if c.store != nil {
		t.Error("the store was opened for a job refused locally")
	}
}
