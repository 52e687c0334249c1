package transport_test

import (
	"errors"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// assignedSpec is a job spec and the params and plan the leader would
// send for it.
func assignedSpec(t testing.TB) (*pb.JobSpec, *pb.KernelParams, *pb.Plan) {
	t.Helper()
	spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 4, Hkv: 2, D: 16, N: 640, Nk: 640,
		Block: 64, Strategy: "zigzag", Mask: &pb.Mask{Causal: true}, WireDtype: pb.WireDType_WIRE_DTYPE_BF16}
	req, _, err := transport.SpecToRequest(spec, 4, shard.DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	return spec, transport.ParamsFromSpec(spec), transport.PlanToPB(p, []string{"w"})
}

func TestTransportJobFromPB(t *testing.T) {
	lim := shard.DefaultLimits()
	_, kp, pp := assignedSpec(t)
	if want := 0.25; kp.Scale != want {
		t.Errorf("ParamsFromSpec scale = %v, want the resolved 1/sqrt(16) = %v", kp.Scale, want)
	}
	job, err := transport.JobFromPB(kp, pp, lim)
	if err != nil {
		t.Fatal(err)
	}
	if !job.BF16 || job.Params.Scale != 0.25 || !job.Params.Mask.Causal || job.Params.N != 640 ||
		job.Plan.Strategy != shard.Zigzag || len(job.Plan.Ranks) != 4 {
		t.Errorf("job = %+v", job)
	}
	bad := map[string]struct {
		edit  func(kp *pb.KernelParams, pp *pb.Plan)
		field string
	}{
		"no params":       {nil, "params"},
		"kind":            {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Kind = 0 }, "params.kind"},
		"scale 0":         {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Scale = 0 }, "params.scale"},
		"scale inf":       {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Scale = math.Inf(1) }, "params.scale"},
		"scale float32 0": {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Scale = 1e-50 }, "params.scale"},
		"scale overflow":  {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Scale = 1e300 }, "params.scale"},
		"dtype":           {func(kp *pb.KernelParams, _ *pb.Plan) { kp.WireDtype = 5 }, "params.wire_dtype"},
		"hkv":             {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Hkv = 3 }, "params.hkv"},
		"docs":            {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Mask = &pb.Mask{Seqlens: make([]int64, lim.MaxDocs+1)} }, "params.mask.seqlens"},
		"doc sum":         {func(kp *pb.KernelParams, _ *pb.Plan) { kp.Mask = &pb.Mask{Seqlens: []int64{1, 2}} }, "params.mask.seqlens"},
		"plan n":          {func(_ *pb.KernelParams, pp *pb.Plan) { pp.N = 0 }, "plan.n"},
		"plan ranks":      {func(_ *pb.KernelParams, pp *pb.Plan) { pp.Ranks[2].QBlocks = pp.Ranks[0].QBlocks }, "plan"},
	}
	for name, tc := range bad {
		k, p := proto.CloneOf(kp), proto.CloneOf(pp)
		if tc.edit == nil {
			k = nil
		} else {
			tc.edit(k, p)
		}
		_, err := transport.JobFromPB(k, p, lim)
		var fe *transport.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: JobFromPB = %v, want a *FieldError on %s", name, err, tc.field)
		}
	}
}

// TestTransportScaleFloat32: a scale that float32 rounds to 0 would make
// the kernels use the default scale silently (and one past MaxFloat32
// overflows); the smallest normal float32 and MaxFloat32 are accepted.
func TestTransportScaleFloat32(t *testing.T) {
	lim := shard.DefaultLimits()
	spec, kp, pp := assignedSpec(t)
	for _, tc := range []struct {
		scale float64
		ok    bool
	}{
		{0x1p-126, true}, {0x1p-127, false}, {1e-50, false},
		{math.MaxFloat32, true}, {math.Nextafter(math.MaxFloat32, math.Inf(1)) * 2, false},
	} {
		s := proto.CloneOf(spec)
		s.Scale = tc.scale
		_, _, err := transport.SpecToRequest(s, 1, lim)
		if (err == nil) != tc.ok {
			t.Errorf("SpecToRequest(scale %g) = %v, want ok=%v", tc.scale, err, tc.ok)
		}
		k := proto.CloneOf(kp)
		k.Scale = tc.scale
		_, err = transport.JobFromPB(k, pp, lim)
		if (err == nil) != tc.ok {
			t.Errorf("JobFromPB(scale %g) = %v, want ok=%v", tc.scale, err, tc.ok)
		}
	}
}

// FuzzJobFromPB feeds JobFromPB arbitrary params and plans: a *FieldError
// or a job whose plan validates, never a panic.
func FuzzJobFromPB(f *testing.F) {
	_, kp, pp := assignedSpec(f)
	kb, _ := proto.Marshal(kp)
	pb2, _ := proto.Marshal(pp)
	f.Add(kb, pb2)
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, kb, pbytes []byte) {
		var k pb.KernelParams
		var p pb.Plan
		if proto.Unmarshal(kb, &k) != nil || proto.Unmarshal(pbytes, &p) != nil {
			return
		}
		job, err := transport.JobFromPB(&k, &p, shard.DefaultLimits())
		if err != nil {
			var fe *transport.FieldError
			if !errors.As(err, &fe) || fe.Field == "" {
				t.Fatalf("JobFromPB error %v: want a *FieldError naming a field", err)
			}
			return
		}
		if err := job.Plan.Validate(); err != nil {
			t.Fatal(err)
		}
		if err := job.Params.Validate(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzSpecToRequest feeds SpecToRequest arbitrary specs (what a client
// submits): a *FieldError or a request shard.NewPlan accepts.
func FuzzSpecToRequest(f *testing.F) {
	spec, _, _ := assignedSpec(f)
	b, _ := proto.Marshal(spec)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s pb.JobSpec
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		req, _, err := transport.SpecToRequest(&s, 2, shard.DefaultLimits())
		if err != nil {
			var fe *transport.FieldError
			if !errors.As(err, &fe) || fe.Field == "" {
				t.Fatalf("SpecToRequest error %v: want a *FieldError naming a field", err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("SpecToRequest accepted a request that does not validate: %v", err)
		}
	})
}
