package coordinator

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// planAccepted plans an accepted spec on 1..8 ranks (as the leader would,
// bounded in time) and fails on any error.
func planAccepted(t *testing.T, spec *pb.JobSpec) {
	t.Helper()
	for w := 1; w <= 8; w++ {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		req, ae := specRequest(spec, w, DefaultConfig().Limits)
		if ae != nil {
			cancel()
			t.Fatalf("accepted spec %v refused on %d ranks: %v", spec, w, ae)
		}
		p, err := shard.NewPlanContext(ctx, req)
		cancel()
		if err != nil {
			t.Fatalf("accepted spec %v does not plan on %d ranks: %v", spec, w, err)
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("plan of accepted spec %v on %d ranks: %v", spec, w, err)
		}
	}
}

func int64s(p []byte) []int64 {
	if len(p) == 0 {
		return nil
	}
	out := make([]int64, 0, len(p)/8+1)
	for ; len(p) >= 8; p = p[8:] {
		out = append(out, int64(binary.LittleEndian.Uint64(p)))
	}
	if len(p) > 0 {
		out = append(out, int64(p[0]))
	}
	return out
}

func le64(xs ...int64) []byte {
	out := make([]byte, 0, 8*len(xs))
	for _, x := range xs {
		out = binary.LittleEndian.AppendUint64(out, uint64(x))
	}
	return out
}

// FuzzValidateSpec sends specs of fuzzed extreme integers (int64 extremes,
// negatives, long and wrapping seqlens lists) through validateSpec; it must
// never panic, every refusal names a spec field, and every accepted spec
// plans without error on 1..8 ranks.
func FuzzValidateSpec(f *testing.F) {
	const M, m = math.MaxInt64, math.MinInt64
	// The crafted job: seqlens_k wrapping around 2^64 to nk = 4.
	f.Add(uint8(1), int64(1), int64(1), int64(1), int64(8), int64(4), int64(4), int64(0), int64(2), false, false, int64(0), int64(0),
		le64(1, 1, 1, 1), le64(1, M, M, 5), uint8(0))
	f.Add(uint8(1), int64(2), int64(4), int64(2), int64(32), int64(300), int64(500), int64(0), int64(16), true, true, int64(7), int64(-1),
		le64(100, 200), le64(250, 250), uint8(2))
	f.Add(uint8(2), int64(1), int64(4), int64(4), int64(16), int64(256), int64(256), int64(64), int64(32), false, true, int64(0), int64(0),
		[]byte(nil), []byte(nil), uint8(1))
	f.Add(uint8(1), int64(M), int64(m), int64(-1), int64(0), int64(M), int64(m), int64(M), int64(m), true, true, int64(m), int64(M),
		le64(m, M), []byte{0xff}, uint8(255))
	f.Add(uint8(1), int64(1), int64(1), int64(1), int64(8), int64(65536), int64(65536), int64(0), int64(1), false, true, int64(0), int64(0),
		[]byte(nil), []byte(nil), uint8(1))
	f.Add(uint8(1), int64(1), int64(1), int64(1), int64(8), int64(65537), int64(65537), int64(0), int64(1), false, true, int64(0), int64(0),
		[]byte(nil), []byte(nil), uint8(1))
	lim := DefaultConfig().Limits
	lim.MaxTokens = 1 << 20 // keeps each accepted plan in milliseconds
	now := time.Unix(1e9, 0)
	f.Fuzz(func(t *testing.T, kind uint8, b, hq, hkv, d, n, nk, dModel, block int64, windowed, causal bool, left, right int64,
		lens, lensK []byte, flags uint8) {
		spec := &pb.JobSpec{Kind: pb.JobKind(kind % 4), B: b, Hq: hq, Hkv: hkv, D: d, N: n, Nk: nk, DModel: dModel, Block: block,
			Mask:     &pb.Mask{Causal: causal, Windowed: windowed, WindowLeft: left, WindowRight: right, Seqlens: int64s(lens), SeqlensK: int64s(lensK)},
			WantLse:  flags&1 != 0,
			MhaBias:  flags&2 != 0,
			Strategy: []string{"", "contiguous", "zigzag", "striped", "splitkv"}[int(flags>>2)%5],
			InputRef: "in-fuzz",
		}
		if flags&0x80 != 0 {
			spec.WireDtype = pb.WireDType_WIRE_DTYPE_BF16
		}
		ae := validateSpec(spec, lim, now)
		if ae != nil {
			if !strings.HasPrefix(ae.field, "spec") || ae.msg == "" {
				t.Fatalf("refusal %v names no spec field", ae)
			}
			if ae.code != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT && ae.code != pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED {
				t.Fatalf("refusal %v has code %v", ae, ae.code)
			}
			return
		}
		planAccepted(t, spec)
	})
}

// TestCoordinatorValidateLimits checks each job limit at its value and one
// past it through validateSpec, and the crafted spec.
func TestCoordinatorValidateLimits(t *testing.T) {
	lim := DefaultConfig().Limits
	now := time.Now()
	base := func() *pb.JobSpec {
		return &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 2, Hkv: 2, N: 4096, Nk: 4096, D: 64, Block: 1024,
			Mask: &pb.Mask{}, IdempotencyKey: "k", InputRef: "in-k"}
	}
	ones := func(n int) []int64 {
		s := make([]int64, n)
		for i := range s {
			s[i] = 1
		}
		return s
	}
	cases := []struct {
		name       string
		at, past   func(s *pb.JobSpec)
		field, msg string
		code       pb.ErrorCode
	}{
		{"MaxBlocks", func(s *pb.JobSpec) { s.N, s.Nk, s.Block = 65536, 65536, 1 }, func(s *pb.JobSpec) { s.N, s.Nk, s.Block = 65537, 65537, 1 },
			"spec.block", "want at most 65536 blocks per sequence (Limits.MaxBlocks)", 0},
		{"MaxTokens", func(s *pb.JobSpec) { s.N = 1 << 24 }, func(s *pb.JobSpec) { s.N = 1<<24 + 1 }, "spec.n", "16777217: want 1..16777216", 0},
		{"MaxD", func(s *pb.JobSpec) { s.D = 256 }, func(s *pb.JobSpec) { s.D = 257 }, "spec.d", "257: want 1..256", 0},
		{"MaxDocs", func(s *pb.JobSpec) { s.N, s.Nk, s.Mask.Seqlens = 65536, 65536, ones(65536) },
			func(s *pb.JobSpec) { s.N, s.Nk, s.Mask.Seqlens = 65537, 65537, ones(65537) }, "spec.mask.seqlens", "want at most 65536 (Limits.MaxDocs)",
			pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED},
		{"MaxJobBytes", func(s *pb.JobSpec) { s.Hq, s.Hkv, s.N, s.Nk, s.D = 1024, 1024, 1<<14, 1<<14, 256 },
			func(s *pb.JobSpec) { s.Hq, s.Hkv, s.N, s.Nk, s.D = 1024, 1024, 1<<14+1, 1<<14, 256 }, "spec", "(Limits.MaxJobBytes)",
			pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED},
		{"seqlens sum", func(s *pb.JobSpec) { s.Mask.Seqlens = []int64{4000, 96} }, func(s *pb.JobSpec) { s.Mask.Seqlens = []int64{4000, 97} },
			"spec.mask.seqlens", "item 1 = 97 brings the sum past n = 4096", 0},
		{"window", func(s *pb.JobSpec) { s.Mask.Windowed, s.Mask.WindowLeft = true, 1<<24 },
			func(s *pb.JobSpec) { s.Mask.Windowed, s.Mask.WindowLeft = true, 1<<24+1 }, "spec.mask.window_left", "want -1 for unbounded or 0..16777216", 0},
		{"int64 window", func(s *pb.JobSpec) { s.Mask.Windowed, s.Mask.WindowRight = true, -1 },
			func(s *pb.JobSpec) { s.Mask.Windowed, s.Mask.WindowRight = true, math.MaxInt64 }, "spec.mask.window_right", "9223372036854775807: want -1", 0},
		{"int64 lengths", func(s *pb.JobSpec) {
			s.N, s.Nk, s.Block, s.Mask.Seqlens, s.Mask.SeqlensK = 4, 4, 2, []int64{1, 1, 1, 1}, []int64{1, 1, 1, 1}
		}, func(s *pb.JobSpec) {
			s.N, s.Nk, s.Block, s.Mask.Seqlens, s.Mask.SeqlensK = 4, 4, 2, []int64{1, 1, 1, 1}, []int64{1, math.MaxInt64, math.MaxInt64, 5}
		}, "spec.mask.seqlens_k", "item 1 = 9223372036854775807 brings the sum past nk = 4", 0},
		{"mha d_model", func(s *pb.JobSpec) { s.Kind, s.DModel, s.N, s.Nk = pb.JobKind_JOB_KIND_MHA, 1024*256, 64, 64 },
			func(s *pb.JobSpec) { s.Kind, s.DModel, s.N, s.Nk = pb.JobKind_JOB_KIND_MHA, 1024*256+1, 64, 64 }, "spec.d_model", "262145: want 1..262144", 0},
		// x and y: 2·N·d_model = 2^34 - 2^23 elements, weights 4·(Hq·D)·d_model.
		{"mha bytes", func(s *pb.JobSpec) {
			s.Kind, s.DModel, s.N, s.Nk = pb.JobKind_JOB_KIND_MHA, 4096, 1<<21-1024, 1<<21-1024
		},
			func(s *pb.JobSpec) {
				s.Kind, s.DModel, s.N, s.Nk, s.Hq, s.Hkv = pb.JobKind_JOB_KIND_MHA, 4096, 1<<21-1024, 1<<21-1024, 64, 64
			},
			"spec", "(Limits.MaxJobBytes)", pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED},
	}
	for _, c := range cases {
		s := base()
		c.at(s)
		if ae := validateSpec(s, lim, now); ae != nil {
			t.Errorf("%s at the limit: %v", c.name, ae)
		}
		s = base()
		c.past(s)
		ae := validateSpec(s, lim, now)
		code := c.code
		if code == 0 {
			code = pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
		}
		if ae == nil || ae.field != c.field || !strings.Contains(ae.msg, c.msg) || ae.code != code {
			t.Errorf("%s past the limit: got %v (code %v), want %s containing %q (%v)", c.name, ae, ae.code, c.field, c.msg, code)
			continue
		}
		if c.code == pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED && !errors.Is(ae, ErrLimit) {
			t.Errorf("%s: %v does not wrap ErrLimit", c.name, ae)
		}
	}
	// The planner bounds what is accepted: the largest accepted plan is
	// made quickly enough (see shard.BenchmarkShardPlanAtCap).
	s := base()
	s.N, s.Nk, s.Block = 65536, 65536, 1
	planAccepted(t, s)
}
