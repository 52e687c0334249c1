package worker

import (
	"errors"
	"math"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// limitJob is an assignment as the leader builds it for req (the plan of
// shard.NewPlan, the params of the spec), or nil when req does not plan.
func limitJob(t testing.TB, req shard.Request, t4 shard.Tensors) *pb.Assignment {
	t.Helper()
	p, err := shard.NewPlan(req)
	if err != nil {
		return nil
	}
	kind := pb.JobKind_JOB_KIND_ATTENTION
	if t4.DModel > 0 {
		kind = pb.JobKind_JOB_KIND_MHA
	}
	return &pb.Assignment{JobId: "j", Epoch: 1, Rank: 0, Size: int32(req.Ranks), Plan: planPB(p, "me"),
		Params: &pb.KernelParams{Kind: kind, B: int64(req.B), Hq: int64(req.Hq), Hkv: int64(req.Hkv), D: int64(req.D),
			DModel: int64(t4.DModel), MhaBias: t4.Bias, WantLse: t4.LSE, Scale: 0.125, Mask: maskPB(req.Mask)}, InputRef: "in-j"}
}

func maskPB(sm shard.Mask) *pb.Mask {
	m := &pb.Mask{Causal: sm.Causal, Windowed: sm.Windowed, WindowLeft: int64(sm.Left), WindowRight: int64(sm.Right)}
	for _, x := range sm.SeqLens {
		m.Seqlens = append(m.Seqlens, int64(x))
	}
	for _, x := range sm.SeqLensK {
		m.SeqlensK = append(m.SeqlensK, int64(x))
	}
	return m
}

// TestWorkerAssignmentSameLimits: the worker accepts exactly the jobs the
// coordinator's check (shard.Limits.Check, the same limits) accepts, at
// each limit and one past it; a refusal names the assignment field. The
// worker used to accept windows and lengths up to 2^40 and refuse larger
// ones the coordinator had accepted, marking itself suspect.
func TestWorkerAssignmentSameLimits(t *testing.T) {
	lim := shard.DefaultLimits()
	base := shard.Request{B: 1, Hq: 2, Hkv: 2, D: 64, N: 4096, Nk: 4096, Block: 1024, Ranks: 2}
	cases := []struct {
		name  string
		edit  func(r *shard.Request, t *shard.Tensors)
		field string // "" when accepted
	}{
		{"plain", func(r *shard.Request, t *shard.Tensors) {}, ""},
		{"window at MaxTokens", func(r *shard.Request, t *shard.Tensors) { r.Mask.Windowed, r.Mask.Left = true, 1<<24 }, ""},
		{"window past MaxTokens", func(r *shard.Request, t *shard.Tensors) { r.Mask.Windowed, r.Mask.Left = true, 1<<24+1 }, "params.mask.window_left"},
		{"window 2^41", func(r *shard.Request, t *shard.Tensors) { r.Mask.Windowed, r.Mask.Right = true, 1<<41 }, "params.mask.window_right"},
		{"MaxD", func(r *shard.Request, t *shard.Tensors) { r.D = 256 }, ""},
		{"MaxD+1", func(r *shard.Request, t *shard.Tensors) { r.D = 257 }, "params.d"},
		{"MaxTokens", func(r *shard.Request, t *shard.Tensors) { r.Nk = 1 << 24 }, ""},
		{"MaxTokens+1", func(r *shard.Request, t *shard.Tensors) { r.Nk = 1<<24 + 1 }, "plan.nk"},
		{"MaxBlocks", func(r *shard.Request, t *shard.Tensors) { r.N, r.Block = 65536, 1 }, ""},
		{"MaxBlocks+1", func(r *shard.Request, t *shard.Tensors) { r.N, r.Block = 65537, 1 }, "plan.block"},
		{"seqlens = n", func(r *shard.Request, t *shard.Tensors) { r.Mask.SeqLens = []int{4000, 96} }, ""},
		{"seqlens = n+1", func(r *shard.Request, t *shard.Tensors) { r.Mask.SeqLens = []int{4000, 97} }, "params.mask.seqlens"},
		{"MaxJobBytes", func(r *shard.Request, t *shard.Tensors) { r.Hq, r.Hkv, r.N, r.Nk, r.D = 1024, 1024, 1<<14, 1<<14, 256 }, ""},
		{"MaxJobBytes+", func(r *shard.Request, t *shard.Tensors) {
			r.Hq, r.Hkv, r.N, r.Nk, r.D = 1024, 1024, 1<<14+1, 1<<14, 256
		}, "params"},
		// Backward: do, dq, dk, dv and lse count too (2^33 + 2^23 + 2^20·Nk values).
		{"backward MaxJobBytes", func(r *shard.Request, t *shard.Tensors) {
			r.Hq, r.Hkv, r.N, r.Nk, r.D, t.Grad = 1024, 1024, 1<<13, 1<<13-8, 256, true
		}, ""},
		{"backward MaxJobBytes+", func(r *shard.Request, t *shard.Tensors) {
			r.Hq, r.Hkv, r.N, r.Nk, r.D, t.Grad = 1024, 1024, 1<<13, 1<<13-7, 256, true
		}, "params"},
		{"mha", func(r *shard.Request, t *shard.Tensors) { t.DModel, t.Bias = 128, true }, ""},
		{"mha d_model+1", func(r *shard.Request, t *shard.Tensors) { t.DModel = 1024*256 + 1 }, "params.d_model"},
	}
	for _, c := range cases {
		req, t4 := base, shard.Tensors{}
		c.edit(&req, &t4)
		checked := lim.Check(&req, t4)
		if (checked == nil) != (c.field == "") {
			t.Fatalf("%s: Limits.Check = %v, the case expects field %q", c.name, checked, c.field)
		}
		// What the planner refuses outright (a window past 2^31) is forged
		// onto the plan of the base job.
		a := limitJob(t, req, t4)
		if a == nil {
			a = limitJob(t, base, shard.Tensors{})
		}
		a.Params.B, a.Params.Hq, a.Params.Hkv, a.Params.D = int64(req.B), int64(req.Hq), int64(req.Hkv), int64(req.D)
		a.Params.DModel, a.Params.MhaBias = int64(t4.DModel), t4.Bias
		if t4.DModel > 0 {
			a.Params.Kind = pb.JobKind_JOB_KIND_MHA
		}
		if t4.Grad {
			a.Params.Mode = pb.JobMode_JOB_MODE_BACKWARD
		}
		a.Plan.N, a.Plan.Nk, a.Plan.Block = int64(req.N), int64(req.Nk), int64(req.Block)
		a.Params.Mask = maskPB(req.Mask)
		tk, err := newTask(a, "me")
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: the worker refuses what the coordinator accepts: %v", c.name, err)
		case c.field == "" && tk.plan == nil:
			t.Errorf("%s: accepted without a plan", c.name)
		case c.field != "" && (!errors.Is(err, ErrInvalidAssignment) || !strings.Contains(err.Error(), c.field+": ")):
			t.Errorf("%s: got %v, want a refusal naming %s", c.name, err, c.field)
		}
	}
}

// TestWorkerAssignmentWrappingLengths: the lengths (1, 2^63-1,
// 2^63-1, 5 sum to 4 mod 2^64) are refused by the assignment check and by
// kernels.Params.Validate, naming seqlens_k.
func TestWorkerAssignmentWrappingLengths(t *testing.T) {
	a := limitJob(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 4, Nk: 4, Block: 2, Ranks: 2,
		Mask: shard.Mask{SeqLens: []int{1, 1, 1, 1}, SeqLensK: []int{1, 1, 1, 1}}}, shard.Tensors{})
	a.Params.Mask.SeqlensK = []int64{1, math.MaxInt64, math.MaxInt64, 5}
	if _, err := newTask(a, "me"); !errors.Is(err, ErrInvalidAssignment) ||
		!strings.Contains(err.Error(), "params.mask.seqlens_k: item 1 = 9223372036854775807 brings the sum past nk = 4") {
		t.Fatalf("wrapping seqlens_k: %v", err)
	}
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 1, Hkv: 1, D: 8}, N: 4, Nk: 4,
		Mask: kernels.Mask{SeqLens: []int{1, 1, 1, 1}, SeqLensK: []int{1, math.MaxInt64, math.MaxInt64, 5}}}
	if err := p.Validate(); !errors.Is(err, kernels.ErrInvalid) || !strings.Contains(err.Error(), "seqlens_k[1]") {
		t.Fatalf("kernels.Params.Validate of wrapping lengths: %v", err)
	}
}

// TestWorkerAssignmentClaimedBlocks: an assignment claiming 2^31-1 key
// blocks is refused by the limits before anything is sized by that count.
func TestWorkerAssignmentClaimedBlocks(t *testing.T) {
	a := limitJob(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 8, Nk: 8, Block: 1, Ranks: 2}, shard.Tensors{})
	a.Plan.Nk, a.Plan.KBlockCount = math.MaxInt32, math.MaxInt32
	if _, err := newTask(a, "me"); !errors.Is(err, ErrInvalidAssignment) || !strings.Contains(err.Error(), "plan.nk: 2147483647: want 1..16777216") {
		t.Fatalf("claimed key blocks: %v", err)
	}
	// Within the token limit but past the block limit.
	a.Plan.Nk, a.Plan.KBlockCount = 1<<24, 1<<24
	if _, err := newTask(a, "me"); !errors.Is(err, ErrInvalidAssignment) || !strings.Contains(err.Error(), "plan.block: ") ||
		!strings.Contains(err.Error(), "Limits.MaxBlocks") {
		t.Fatalf("claimed key blocks past MaxBlocks: %v", err)
	}
}

// FuzzAssignment decodes an assignment from bytes and runs the worker's
// whole check of it (plan and params): it must never panic, and an
// accepted assignment has a valid plan and parameters.
func FuzzAssignment(f *testing.F) {
	seeds := []*pb.Assignment{}
	add := func(a *pb.Assignment) {
		if a != nil {
			seeds = append(seeds, a)
		}
	}
	t := f
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
		add(limitJob(t, shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 300, Nk: 300, Block: 64, Ranks: 3, Strategy: s,
			Mask: shard.Mask{Causal: true, Windowed: true, Left: 40, Right: -1, SeqLens: []int{100, 200}}}, shard.Tensors{LSE: true}))
	}
	add(limitJob(t, shard.Request{B: 2, Hq: 2, Hkv: 2, D: 8, N: 128, Nk: 128, Block: 32, Ranks: 2}, shard.Tensors{DModel: 16, Bias: true}))
	wrap := limitJob(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 4, Nk: 4, Block: 2, Ranks: 2,
		Mask: shard.Mask{SeqLens: []int{1, 1, 1, 1}, SeqLensK: []int{1, 1, 1, 1}}}, shard.Tensors{})
	wrap.Params.Mask.SeqlensK = []int64{1, math.MaxInt64, math.MaxInt64, 5}
	add(wrap)
	bwd := limitJob(t, shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 300, Nk: 300, Block: 64, Ranks: 2,
		Mask: shard.Mask{Causal: true}}, shard.Tensors{Grad: true})
	bwd.Params.Mode, bwd.DoneDq, bwd.DoneDkv, bwd.OLseRef = pb.JobMode_JOB_MODE_BACKWARD, []int32{1}, []int32{0, 4}, "out-j"
	add(bwd)
	claimed := limitJob(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 8, Nk: 8, Block: 1, Ranks: 2}, shard.Tensors{})
	claimed.Plan.Nk, claimed.Plan.KBlockCount = math.MaxInt32, math.MaxInt32
	add(claimed)
	for _, a := range seeds {
		data, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var a pb.Assignment
		if err := proto.Unmarshal(data, &a); err != nil {
			return
		}
		tk, err := newTask(&a, "me")
		if err != nil {
			if !errors.Is(err, ErrInvalidAssignment) {
				t.Fatalf("refusal %v does not wrap ErrInvalidAssignment", err)
			}
			return
		}
		if err := tk.plan.Validate(); err != nil {
			t.Fatalf("accepted plan is invalid: %v", err)
		}
		if err := tk.params.Validate(); err != nil {
			t.Fatalf("accepted params are invalid: %v", err)
		}
	})
}

// TestWorkerConfiguredLimits: a worker started with the coordinators'
// raised limits (Config.Limits, the --max-* flags) accepts the jobs they
// accept; left at the defaults it refuses them naming the field.
func TestWorkerConfiguredLimits(t *testing.T) {
	req := shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 1 << 17, Nk: 1 << 17, Block: 1, Ranks: 2}
	raised := shard.DefaultLimits()
	raised.MaxBlocks = 1 << 17
	a := limitJob(t, req, shard.Tensors{})
	if a == nil {
		t.Fatal("the job does not plan")
	}
	if _, err := newTaskLimits(a, "me", DefaultConfig().Limits); !errors.Is(err, ErrInvalidAssignment) || !strings.Contains(err.Error(), "plan.block") {
		t.Fatalf("default limits: %v, want a refusal naming plan.block", err)
	}
	if _, err := newTaskLimits(a, "me", raised); err != nil {
		t.Fatalf("raised limits: %v", err)
	}
	cfg := DefaultConfig()
	cfg.ID = "w"
	cfg.Limits = shard.Limits{MaxTokens: 5}
	if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "Limits.MaxBatch") {
		t.Fatalf("partial limits: %v, want ErrInvalidConfig naming Limits.MaxBatch", err)
	}
	cfg.Limits = shard.Limits{}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("zero limits (defaults): %v", err)
	}
}

// TestWorkerAssignmentScaleRange: the worker accepts exactly the scales
// the coordinator accepts on submit (transport.SpecToRequest): a normal
// float32, at each end of the range and one step past it. The worker's
// own check used to accept any finite positive scale, so a subnormal one
// (read as 0, "the default", by the kernels) or one past MaxFloat32 (+Inf
// in float32) got through.
func TestWorkerAssignmentScaleRange(t *testing.T) {
	base := limitJob(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 64, Nk: 64, Block: 32, Ranks: 1}, shard.Tensors{})
	for _, c := range []struct {
		scale float64
		ok    bool
	}{
		{0x1p-126, true}, {0x1p-127, false},
		{math.MaxFloat32, true}, {math.Nextafter(math.MaxFloat32, math.Inf(1)), false},
		{0.125, true}, {-0.125, false}, {math.NaN(), false}, {math.Inf(1), false},
	} {
		a := proto.CloneOf(base)
		a.Params.Scale = c.scale
		_, err := newTask(a, "me")
		if (err == nil) != c.ok || (err != nil && (!errors.Is(err, ErrInvalidAssignment) || !strings.Contains(err.Error(), "params.scale: "))) {
			t.Errorf("scale %g: %v, want accepted %v (refusals name params.scale)", c.scale, err, c.ok)
		}
		spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 1, Hkv: 1, D: 8, N: 64, Nk: 64, Block: 32, Scale: c.scale}
		if _, _, serr := transport.SpecToRequest(spec, 1, shard.DefaultLimits()); (serr == nil) != (err == nil) {
			t.Errorf("scale %g: the worker says %v, the coordinator's check %v", c.scale, err, serr)
		}
	}
}
