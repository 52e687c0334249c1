package transport_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// precisionSpec is a small attention spec with precision p and wire dt.
func precisionSpec(p pb.Precision, dt pb.WireDType) *pb.JobSpec {
	return &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 2, Hkv: 2, D: 16, N: 256, Nk: 256,
		Block: 64, Strategy: "contiguous", Precision: p, WireDtype: dt}
}

// TestTransportPrecision: a spec's precision reaches the kernels' params
// through SpecToRequest, ParamsFromSpec and JobFromPB; bf16 with the wire
// dtype left unspecified sends bf16 on the ring, an explicit f32 wire
// stays f32; PRECISION_BF16 (the last valid value) is accepted and one
// past it is refused naming the field and the expected values.
func TestTransportPrecision(t *testing.T) {
	lim := shard.DefaultLimits()
	for _, tc := range []struct {
		p        pb.Precision
		dt       pb.WireDType
		want     kernels.Precision
		wireBF16 bool
	}{
		{pb.Precision_PRECISION_FP32, pb.WireDType_WIRE_DTYPE_UNSPECIFIED, kernels.PrecisionF32, false},
		{pb.Precision_PRECISION_FP32, pb.WireDType_WIRE_DTYPE_BF16, kernels.PrecisionF32, true},
		{pb.Precision_PRECISION_BF16, pb.WireDType_WIRE_DTYPE_UNSPECIFIED, kernels.PrecisionBF16, true},
		{pb.Precision_PRECISION_BF16, pb.WireDType_WIRE_DTYPE_F32, kernels.PrecisionBF16, false},
		{pb.Precision_PRECISION_BF16, pb.WireDType_WIRE_DTYPE_BF16, kernels.PrecisionBF16, true},
	} {
		spec := precisionSpec(tc.p, tc.dt)
		req, _, err := transport.SpecToRequest(spec, 2, lim)
		if err != nil {
			t.Fatalf("%v/%v: SpecToRequest: %v", tc.p, tc.dt, err)
		}
		if eb := map[bool]int{false: 4, true: 2}[tc.wireBF16]; req.ElemBytes != eb {
			t.Errorf("%v/%v: ElemBytes = %d, want %d", tc.p, tc.dt, req.ElemBytes, eb)
		}
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatal(err)
		}
		kp := transport.ParamsFromSpec(spec)
		if kp.GetPrecision() != tc.p {
			t.Errorf("%v/%v: ParamsFromSpec precision = %v", tc.p, tc.dt, kp.GetPrecision())
		}
		job, err := transport.JobFromPB(kp, transport.PlanToPB(p, []string{"w"}), lim)
		if err != nil {
			t.Fatalf("%v/%v: JobFromPB: %v", tc.p, tc.dt, err)
		}
		if job.Params.Precision != tc.want || job.BF16 != tc.wireBF16 {
			t.Errorf("%v/%v: job precision %v, bf16 wire %v; want %v, %v", tc.p, tc.dt, job.Params.Precision, job.BF16, tc.want, tc.wireBF16)
		}
		if got, err := transport.PrecisionFromPB(tc.p); err != nil || got != tc.want {
			t.Errorf("PrecisionFromPB(%v) = %v, %v", tc.p, got, err)
		}
	}

	past := pb.Precision_PRECISION_BF16 + 1
	spec := precisionSpec(past, 0)
	_, _, err := transport.SpecToRequest(spec, 2, lim)
	var fe *transport.FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.precision" || !errors.Is(err, transport.ErrInvalidMessage) ||
		fe.Code() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT ||
		!strings.Contains(fe.Msg, "PRECISION_FP32") || !strings.Contains(fe.Msg, "PRECISION_BF16") {
		t.Errorf("SpecToRequest(precision %d) = %v, want a FieldError on spec.precision naming both values", past, err)
	}
	if _, err := transport.PrecisionFromPB(-1); !errors.As(err, &fe) || fe.Field != "spec.precision" {
		t.Errorf("PrecisionFromPB(-1) = %v", err)
	}
	// An assignment with an unknown precision is refused by the worker.
	good := precisionSpec(pb.Precision_PRECISION_BF16, 0)
	req, _, err := transport.SpecToRequest(good, 2, lim)
	if err != nil {
		t.Fatal(err)
	}
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	kp := transport.ParamsFromSpec(good)
	kp.Precision = past
	if _, err := transport.JobFromPB(kp, transport.PlanToPB(p, []string{"w"}), lim); !errors.As(err, &fe) || fe.Field != "params.precision" {
		t.Errorf("JobFromPB(precision %d) = %v, want a FieldError on params.precision", past, err)
	}
}
