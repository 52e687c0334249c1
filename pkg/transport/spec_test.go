package transport_test

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// codecJob is a job every strategy can plan over 4 ranks.
func codecJob(strategy shard.Strategy) shard.Request {
	return shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 640, Nk: 640, Block: 64, Ranks: 4,
		Strategy: strategy, ElemBytes: 4, Mask: shard.Mask{Causal: true}}
}

func TestTransportPlanRoundTrip(t *testing.T) {
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
		t.Run(string(s), func(t *testing.T) {
			job := codecJob(s)
			want, err := shard.NewPlan(job)
			if err != nil {
				t.Fatal(err)
			}
			wire := transport.PlanToPB(want, []string{"w1", "w2"})
			if got := wire.Ranks[3].WorkerId; got != "w2" {
				t.Errorf("rank 3 worker = %q, want w2 (workers cycle)", got)
			}
			// Through the bytes, as an assignment travels.
			b, err := proto.Marshal(wire)
			if err != nil {
				t.Fatal(err)
			}
			var back pb.Plan
			if err := proto.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			got, err := transport.PlanFromPB(&back, shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, ElemBytes: 4,
				Mask: shard.Mask{Causal: true}}, shard.Tensors{}, shard.DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			if got.Strategy != want.Strategy || got.N != want.N || got.Nk != want.Nk || got.Block != want.Block ||
				got.QBlockCount != want.QBlockCount || got.KBlockCount != want.KBlockCount || got.Steps != want.Steps ||
				got.Imbalance != want.Imbalance {
				t.Errorf("plan header = %+v, want %+v", got, want)
			}
			if !reflect.DeepEqual(got.Ranks, want.Ranks) {
				t.Errorf("ranks = %+v, want %+v", got.Ranks, want.Ranks)
			}
			if !reflect.DeepEqual(got.Planned, want.Planned) {
				t.Errorf("planned = %v, want %v", got.Planned, want.Planned)
			}
			if !reflect.DeepEqual(got.Reduce, want.Reduce) {
				t.Errorf("reduce = %v, want %v", got.Reduce, want.Reduce)
			}
			if !proto.Equal(transport.PlanToPB(got, []string{"w1", "w2"}), wire) {
				t.Error("PlanToPB(PlanFromPB(p)) differs from p")
			}
		})
	}
}

// hostilePlans are wire plans PlanFromPB must refuse, each with the field
// it must name.
func hostilePlans(t *testing.T) map[string]struct {
	plan  *pb.Plan
	field string
} {
	t.Helper()
	good, err := shard.NewPlan(codecJob(shard.Zigzag))
	if err != nil {
		t.Fatal(err)
	}
	mut := func(f func(p *pb.Plan)) *pb.Plan {
		p := transport.PlanToPB(good, nil)
		f(p)
		return p
	}
	return map[string]struct {
		plan  *pb.Plan
		field string
	}{
		"nil":                {nil, "plan"},
		"block 0":            {mut(func(p *pb.Plan) { p.Block = 0 }), "plan.block"},
		"negative n":         {mut(func(p *pb.Plan) { p.N = -1 }), "plan.n"},
		"huge n":             {mut(func(p *pb.Plan) { p.N = math.MaxInt64 }), "plan.n"},
		"unknown strategy":   {mut(func(p *pb.Plan) { p.Strategy = "diagonal" }), "plan.strategy"},
		"no strategy":        {mut(func(p *pb.Plan) { p.Strategy = "" }), "plan.strategy"},
		"no ranks":           {mut(func(p *pb.Plan) { p.Ranks = nil }), "size"},
		"block out of range": {mut(func(p *pb.Plan) { p.Ranks[1].QBlocks[0] = 1 << 30 }), "plan"},
		"negative block":     {mut(func(p *pb.Plan) { p.Ranks[0].KvBlocks[0] = -5 }), "plan"},
		"block twice":        {mut(func(p *pb.Plan) { p.Ranks[1].QBlocks[0] = p.Ranks[0].QBlocks[0] }), "plan"},
		"steps lie":          {mut(func(p *pb.Plan) { p.Steps = 1 << 20 }), "plan"},
		"counts lie":         {mut(func(p *pb.Plan) { p.QBlockCount = -3 }), "plan"},
	}
}

func TestTransportPlanFromPBRefusesHostile(t *testing.T) {
	job := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, ElemBytes: 4, Mask: shard.Mask{Causal: true}}
	for name, tc := range hostilePlans(t) {
		t.Run(name, func(t *testing.T) {
			p, err := transport.PlanFromPB(tc.plan, job, shard.Tensors{}, shard.DefaultLimits())
			var fe *transport.FieldError
			if !errors.As(err, &fe) || !errors.Is(err, transport.ErrInvalidMessage) {
				t.Fatalf("PlanFromPB = %v, %v; want a *FieldError", p, err)
			}
			if fe.Field != tc.field {
				t.Errorf("field = %q (%v), want %q", fe.Field, err, tc.field)
			}
			t.Log(err)
		})
	}
}

func TestTransportSpecToRequest(t *testing.T) {
	lim := shard.DefaultLimits()
	spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 4, Hkv: 2, D: 16, N: 640, Nk: 640,
		WireDtype: pb.WireDType_WIRE_DTYPE_BF16, Strategy: "zigzag", WantLse: true,
		Mask: &pb.Mask{Causal: true, Seqlens: []int64{320, 320}}}
	req, tensors, err := transport.SpecToRequest(spec, 3, lim)
	if err != nil {
		t.Fatal(err)
	}
	want := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 640, Nk: 640, Ranks: 3, Strategy: shard.Zigzag, ElemBytes: 2,
		Mask: shard.Mask{Causal: true, SeqLens: []int{320, 320}}}
	if !reflect.DeepEqual(req, want) || tensors != (shard.Tensors{LSE: true}) {
		t.Errorf("SpecToRequest = %+v, %+v; want %+v, LSE", req, tensors, want)
	}
	if !proto.Equal(transport.MaskToPB(req.Mask), spec.Mask) {
		t.Errorf("MaskToPB(MaskFromPB(m)) = %v, want %v", transport.MaskToPB(req.Mask), spec.Mask)
	}
	if transport.MaskToPB(shard.Mask{}) != nil {
		t.Error("MaskToPB(zero mask) is not nil")
	}
	km := transport.KernelMask(req.Mask)
	if !reflect.DeepEqual(transport.ShardMask(km), req.Mask) || !km.Causal || len(km.SeqLens) != 2 {
		t.Errorf("KernelMask/ShardMask round trip: %+v", km)
	}
	_ = kernels.Mask{}

	bad := map[string]struct {
		edit  func(s *pb.JobSpec)
		field string
		limit bool
	}{
		"kind":          {func(s *pb.JobSpec) { s.Kind = 7 }, "spec.kind", false},
		"scale nan":     {func(s *pb.JobSpec) { s.Scale = math.NaN() }, "spec.scale", false},
		"dtype":         {func(s *pb.JobSpec) { s.WireDtype = 9 }, "spec.wire_dtype", false},
		"mha lse":       {func(s *pb.JobSpec) { s.Kind = pb.JobKind_JOB_KIND_MHA; s.DModel = 64 }, "spec.want_lse", false},
		"window":        {func(s *pb.JobSpec) { s.Mask.WindowLeft = 3 }, "spec.mask.windowed", false},
		"d":             {func(s *pb.JobSpec) { s.D = 0 }, "spec.d", false},
		"strategy":      {func(s *pb.JobSpec) { s.Strategy = "diagonal" }, "spec.strategy", false},
		"docs at limit": {func(s *pb.JobSpec) { s.Mask.SeqlensK = make([]int64, lim.MaxDocs+1) }, "spec.mask.seqlens_k", true},
		"tokens":        {func(s *pb.JobSpec) { s.N = lim.MaxTokens + 1 }, "spec.n", false},
	}
	for name, tc := range bad {
		s := proto.CloneOf(spec)
		tc.edit(s)
		_, _, err := transport.SpecToRequest(s, 1, lim)
		var fe *transport.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: SpecToRequest = %v, want a *FieldError on %s", name, err, tc.field)
			continue
		}
		if got := fe.Code() == pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED; got != tc.limit {
			t.Errorf("%s: code %v, want limit=%v", name, fe.Code(), tc.limit)
		}
		if strings.Contains(err.Error(), "shard:") {
			t.Errorf("%s: %q has an internal package prefix", name, err)
		}
	}
	if _, _, err := transport.SpecToRequest(nil, 1, lim); err == nil {
		t.Error("SpecToRequest(nil) succeeded")
	}
}

func TestTransportDefaults(t *testing.T) {
	if transport.DefaultBlock != shard.DefaultBlock {
		t.Errorf("DefaultBlock = %d, want shard's %d", transport.DefaultBlock, shard.DefaultBlock)
	}
	p := kernels.Params{Shape: kernels.Shape{D: 64}}
	if got, want := transport.ResolveScale(0, 64), float64(p.EffectiveScale()); float32(got) != float32(want) {
		t.Errorf("ResolveScale(0, 64) = %v, want the kernels' %v", got, want)
	}
	if got := transport.ResolveScale(0.5, 64); got != 0.5 {
		t.Errorf("ResolveScale(0.5, 64) = %v", got)
	}
}

// FuzzPlanFromPB feeds PlanFromPB arbitrary wire plans: it must refuse
// them with a *FieldError or return a plan that validates, never panic.
func FuzzPlanFromPB(f *testing.F) {
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
		p, err := shard.NewPlan(codecJob(s))
		if err != nil {
			f.Fatal(err)
		}
		b, err := proto.Marshal(transport.PlanToPB(p, []string{"w"}))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte("\x22\x08\xff\xff\xff\xff\xff\xff\xff\x7f"))
	job := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, ElemBytes: 4, Mask: shard.Mask{Causal: true}}
	f.Fuzz(func(t *testing.T, b []byte) {
		var pp pb.Plan
		if proto.Unmarshal(b, &pp) != nil {
			return
		}
		p, err := transport.PlanFromPB(&pp, job, shard.Tensors{}, shard.DefaultLimits())
		if err != nil {
			var fe *transport.FieldError
			if !errors.As(err, &fe) || fe.Field == "" {
				t.Fatalf("PlanFromPB error %v: want a *FieldError naming a field", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("PlanFromPB returned a plan that does not validate: %v", err)
		}
	})
}
