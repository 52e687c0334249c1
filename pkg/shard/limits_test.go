package shard_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/shard"
)

// wantField asserts err is a *shard.FieldError on field whose message
// contains msg (and, when limit, that it wraps ErrLimit).
func wantField(t *testing.T, what string, err error, field, msg string) {
	t.Helper()
	var fe *shard.FieldError
	if !errors.Is(err, shard.ErrInvalid) || !errors.As(err, &fe) || fe.Field != field || !strings.Contains(fe.Msg, msg) {
		t.Errorf("%s: got %v, want field %q with %q", what, err, field, msg)
	}
}

// TestShardLimitsAtAndPast checks every limit at its value (accepted) and
// one past it (refused naming the field).
func TestShardLimitsAtAndPast(t *testing.T) {
	l := shard.DefaultLimits()
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	base := func() shard.Request {
		return shard.Request{B: 1, Hq: 2, Hkv: 2, D: 64, N: 4096, Nk: 4096, Ranks: 1}
	}
	ones := func(n int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = 1
		}
		return s
	}
	cases := []struct {
		name         string
		at, past     func(r *shard.Request)
		field, msg   string
		limitSentinl bool
	}{
		{"MaxBatch", func(r *shard.Request) { r.B, r.N, r.Nk = 1024, 64, 64 }, func(r *shard.Request) { r.B, r.N, r.Nk = 1025, 64, 64 }, "b", "1025: want 1..1024", false},
		{"MaxHeads", func(r *shard.Request) { r.Hq, r.Hkv = 1024, 1024 }, func(r *shard.Request) { r.Hq, r.Hkv = 1025, 1025 }, "hq", "1025: want 1..1024", false},
		{"MaxHeads hkv", func(r *shard.Request) { r.Hq, r.Hkv = 1024, 1024 }, func(r *shard.Request) { r.Hq, r.Hkv = 1024, 2048 }, "hkv", "2048: want 1..1024", false},
		{"MaxD", func(r *shard.Request) { r.D = 256 }, func(r *shard.Request) { r.D = 257 }, "d", "257: want 1..256", false},
		{"MaxTokens n", func(r *shard.Request) { r.N = 1 << 24 }, func(r *shard.Request) { r.N = 1<<24 + 1 }, "n", "16777217: want 1..16777216", false},
		{"MaxTokens nk", func(r *shard.Request) { r.Nk = 1 << 24 }, func(r *shard.Request) { r.Nk = 1<<24 + 1 }, "nk", "16777217: want 1..16777216", false},
		{"MaxTokens block", func(r *shard.Request) { r.Block = 1 << 24 }, func(r *shard.Request) { r.Block = 1<<24 + 1 }, "block", "16777217: want 1..16777216", false},
		{"MaxBlocks n", func(r *shard.Request) { r.N, r.Block = 65536, 1 }, func(r *shard.Request) { r.N, r.Block = 65537, 1 },
			"block", "1 tokens cut n = 65537 into 65537 blocks: want at most 65536 blocks per sequence (Limits.MaxBlocks), a block of at least 2", false},
		{"MaxBlocks nk", func(r *shard.Request) { r.N, r.Nk, r.Block = 1<<24, 1<<24, 256 }, func(r *shard.Request) { r.N, r.Nk, r.Block = 1<<24, 1<<24, 255 },
			"block", "cut n = 16777216 into 65794 blocks", false},
		{"MaxBlocks default block", func(r *shard.Request) { r.Nk = 1 << 24 }, func(r *shard.Request) { r.Nk, r.Block = 1<<24, 255 },
			"block", "cut nk = 16777216 into 65794 blocks", false},
		{"window left", func(r *shard.Request) { r.Mask.Windowed, r.Mask.Left = true, 1<<24 }, func(r *shard.Request) { r.Mask.Windowed, r.Mask.Left = true, 1<<24+1 },
			"mask.window_left", "16777217: want -1 for unbounded or 0..16777216", false},
		{"window right", func(r *shard.Request) { r.Mask.Windowed, r.Mask.Right = true, -1 }, func(r *shard.Request) { r.Mask.Windowed, r.Mask.Right = true, -2 },
			"mask.window_right", "-2: want -1 for unbounded", false},
		{"MaxDocs", func(r *shard.Request) { r.N, r.Nk, r.Mask.SeqLens = 65536, 65536, ones(65536) },
			func(r *shard.Request) { r.N, r.Nk, r.Mask.SeqLens = 65537, 65537, ones(65537) },
			"mask.seqlens", "65537 documents: want at most 65536 (Limits.MaxDocs)", false},
		{"MaxDocs k", func(r *shard.Request) {
			r.N, r.Nk, r.Mask.SeqLens, r.Mask.SeqLensK = 65536, 65536, ones(65536), ones(65536)
		},
			func(r *shard.Request) {
				r.N, r.Nk, r.Mask.SeqLens, r.Mask.SeqLensK = 65536, 65537, ones(65536), ones(65537)
			},
			"mask.seqlens_k", "65537 documents: want at most 65536", false},
		{"seqlens sum", func(r *shard.Request) { r.Mask.SeqLens = []int{4000, 96} }, func(r *shard.Request) { r.Mask.SeqLens = []int{4000, 97} },
			"mask.seqlens", "item 1 = 97 brings the sum past n = 4096", false},
		{"seqlens_k sum", func(r *shard.Request) { r.Mask.SeqLens, r.Mask.SeqLensK = []int{4095, 1}, []int{4095, 1} },
			func(r *shard.Request) { r.Mask.SeqLens, r.Mask.SeqLensK = []int{4095, 1}, []int{4095, 2} },
			"mask.seqlens_k", "item 1 = 2 brings the sum past nk = 4096", false},
		// 4·(q+o+k+v) = 4·4·Hq·N·D = 2^36 bytes exactly at Hq 1024, N 2^14, D 256.
		{"MaxJobBytes", func(r *shard.Request) { r.Hq, r.Hkv, r.N, r.Nk, r.D = 1024, 1024, 1<<14, 1<<14, 256 },
			func(r *shard.Request) { r.Hq, r.Hkv, r.N, r.Nk, r.D = 1024, 1024, 1<<14+1, 1<<14, 256 },
			"", "job needs 68721573888 bytes of tensors: want at most 68719476736 (Limits.MaxJobBytes)", true},
	}
	for _, c := range cases {
		r := base()
		c.at(&r)
		if err := l.Check(&r, shard.Tensors{}); err != nil {
			t.Errorf("%s at the limit: %v", c.name, err)
		}
		r = base()
		c.past(&r)
		err := l.Check(&r, shard.Tensors{})
		wantField(t, c.name+" past the limit", err, c.field, c.msg)
		if got := errors.Is(err, shard.ErrLimit); got != c.limitSentinl {
			t.Errorf("%s: errors.Is(ErrLimit) = %v, want %v", c.name, got, c.limitSentinl)
		}
	}
	// The lse output counts too: the job at the limit is past it with lse.
	r := shard.Request{B: 1, Hq: 1024, Hkv: 1024, D: 256, N: 1 << 14, Nk: 1 << 14, Ranks: 1}
	wantField(t, "lse bytes", l.Check(&r, shard.Tensors{LSE: true}), "", "Limits.MaxJobBytes")
}

// TestShardLimitsLayer: a layer job's bytes are x, y and the weights, and
// its d_model is bounded by MaxHeads·MaxD.
func TestShardLimitsLayer(t *testing.T) {
	l := shard.DefaultLimits()
	r := shard.Request{B: 1, Hq: 8, Hkv: 8, D: 64, N: 1024, Nk: 1024, Ranks: 1}
	want := int64(4 * (2*1*1024*512 + 4*512*512 + 3*512 + 512))
	if b, ok := shard.JobBytes(&r, shard.Tensors{DModel: 512, Bias: true}); !ok || b != want {
		t.Fatalf("JobBytes(layer) = %d, %v, want %d", b, ok, want)
	}
	if err := l.Check(&r, shard.Tensors{DModel: 1024 * 256}); err != nil {
		t.Fatalf("d_model at MaxHeads·MaxD: %v", err)
	}
	wantField(t, "d_model past", l.Check(&r, shard.Tensors{DModel: 1024*256 + 1}), "d_model", "262145: want 1..262144")
	small := l
	small.MaxJobBytes = want
	if err := small.Check(&r, shard.Tensors{DModel: 512, Bias: true}); err != nil {
		t.Fatalf("layer at MaxJobBytes: %v", err)
	}
	small.MaxJobBytes = want - 1
	wantField(t, "layer past MaxJobBytes", small.Check(&r, shard.Tensors{DModel: 512, Bias: true}), "", "Limits.MaxJobBytes")
	// With gradients: dy, dxq, dxkv; the attention's o, dq, dk, dv and
	// lse; and per block (1024 / 256 = 4) a share of every weight and
	// bias gradient.
	g := r
	g.Block = 256
	params := int64(4*512*512 + 3*512 + 512)
	wantGrad := want + 4*(3*1024*512+4*8*1024*64+8*1024+4*params)
	if b, ok := shard.JobBytes(&g, shard.Tensors{DModel: 512, Bias: true, Grad: true}); !ok || b != wantGrad {
		t.Fatalf("JobBytes(layer, grad) = %d, %v, want %d", b, ok, wantGrad)
	}
	small.MaxJobBytes = wantGrad
	if err := small.Check(&g, shard.Tensors{DModel: 512, Bias: true, Grad: true}); err != nil {
		t.Fatalf("layer gradients at MaxJobBytes: %v", err)
	}
	small.MaxJobBytes = wantGrad - 1
	wantField(t, "layer gradients past MaxJobBytes", small.Check(&g, shard.Tensors{DModel: 512, Bias: true, Grad: true}), "", "Limits.MaxJobBytes")
	r.Hkv = 4
	wantField(t, "layer gqa", l.Check(&r, shard.Tensors{DModel: 512}), "hkv", "an mha layer wants hkv = hq = 8")
	r.Hkv, r.Nk = 8, 512
	wantField(t, "layer cross", l.Check(&r, shard.Tensors{DModel: 512}), "nk", "mha self-attention wants nk = n = 1024")
}

// TestShardLimitsWrappingLengths is the crafted request of the issue:
// lengths that wrapped around 2^64 to the sequence length were accepted and
// then crashed the planner.
func TestShardLimitsWrappingLengths(t *testing.T) {
	r := shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 4, Nk: 4, Block: 2, Ranks: 4,
		Mask: shard.Mask{SeqLens: []int{1, 1, 1, 1}, SeqLensK: []int{1, math.MaxInt64, math.MaxInt64, 5}}}
	const msg = "item 1 = 9223372036854775807 brings the sum past nk = 4"
	wantField(t, "Validate", r.Validate(), "mask.seqlens_k", msg)
	wantField(t, "Check", shard.DefaultLimits().Check(&r, shard.Tensors{}), "mask.seqlens_k", msg)
	if _, err := shard.NewPlan(r); err == nil {
		t.Fatal("NewPlan accepted lengths wrapping around 2^64")
	}
	r.Mask.SeqLens, r.Mask.SeqLensK = []int{math.MaxInt64, math.MaxInt64, 1, 1}, nil
	wantField(t, "seqlens", r.Validate(), "mask.seqlens", "item 0 = 9223372036854775807 brings the sum past n = 4")
	r.Mask.SeqLens = []int{2, 2}
	r.N, r.Nk = 5, 5 // a sum one short
	wantField(t, "short", r.Validate(), "mask.seqlens", "lengths sum to 4, expected the sequence length 5")
	// Extreme dimensions: products overflow int64 and are refused, not wrapped.
	big := shard.Request{B: math.MaxInt32, Hq: math.MaxInt32, Hkv: math.MaxInt32, D: math.MaxInt32,
		N: math.MaxInt32, Nk: math.MaxInt32, Block: math.MaxInt32, Ranks: 1}
	wantField(t, "overflowing bytes", big.Validate(), "", "more than 2^63 bytes")
	big.B = math.MaxInt64
	wantField(t, "int64 batch", big.Validate(), "b", "9223372036854775807: want 1..2147483647")
	if b, ok := shard.JobBytes(&big, shard.Tensors{}); ok {
		t.Fatalf("JobBytes of extreme dims = %d, ok", b)
	}
}

func TestShardLimitsValidate(t *testing.T) {
	l := shard.DefaultLimits()
	l.MaxBlocks = 0
	wantField(t, "zero MaxBlocks", l.Validate(), "Limits.MaxBlocks", "0: want >= 1")
}

// TestShardNewPlanContext: a canceled context stops planning with its
// error.
func TestShardNewPlanContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 1 << 16, Nk: 1 << 16, Block: 1, Ranks: 8, Mask: shard.Mask{Causal: true}}
	if _, err := shard.NewPlanContext(ctx, req); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled context: %v", err)
	}
	if _, err := shard.NewPlanContext(context.Background(), req); err != nil {
		t.Fatal(err)
	}
}

// atCap are plans at the default limits' block cap: 65,536 blocks of one
// token, and MaxTokens cut into 65,536 blocks of 256, with the masks that
// cost the most to count.
var atCap = []struct {
	name string
	req  shard.Request
}{
	{"block1-causal", shard.Request{B: 1, Hq: 8, Hkv: 8, D: 64, N: 1 << 16, Nk: 1 << 16, Block: 1, Ranks: 8, Mask: shard.Mask{Causal: true}}},
	{"block1-window", shard.Request{B: 1, Hq: 8, Hkv: 8, D: 64, N: 1 << 16, Nk: 1 << 16, Block: 1, Ranks: 8,
		Mask: shard.Mask{Windowed: true, Left: 4096, Right: 0}}},
	{"maxtokens-docs", shard.Request{B: 1, Hq: 2, Hkv: 2, D: 64, N: 1 << 24, Nk: 1 << 24, Block: 256, Ranks: 8,
		Mask: shard.Mask{Causal: true, SeqLens: docLens(1<<24, 1<<16)}}},
}

func docLens(total, docs int) []int {
	out := make([]int, docs)
	for i := range out {
		out[i] = total / docs
	}
	out[docs-1] += total - total/docs*docs
	return out
}

// BenchmarkShardPlanAtCap plans at the block cap (auto: three strategies
// priced). Planning was O(blocks²) (50 minutes at N = 2^20, block 1); it is
// linear now (see TestShardSweepOps for the count).
func BenchmarkShardPlanAtCap(b *testing.B) {
	for _, c := range atCap {
		b.Run(c.name, func(b *testing.B) {
			if err := shard.DefaultLimits().Check(&c.req, shard.Tensors{}); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := shard.NewPlan(c.req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzRequest feeds extreme integers (int64 extremes, negatives, lengths
// whose sum wraps) to Limits.Check and Request.Validate: they must never
// panic, and a request Check accepts (under small limits, to stay quick)
// must plan without error on 1..8 ranks.
func FuzzRequest(f *testing.F) {
	le := func(xs ...int64) []byte {
		out := make([]byte, 0, 8*len(xs))
		for _, x := range xs {
			out = binary.LittleEndian.AppendUint64(out, uint64(x))
		}
		return out
	}
	// The crasher of the issue: seqlens_k 1, 2^63-1, 2^63-1, 5 sum to 4 mod 2^64.
	f.Add(int64(1), int64(1), int64(1), int64(8), int64(4), int64(4), int64(2), false, int64(0), int64(0), uint8(4),
		le(1, 1, 1, 1), le(1, math.MaxInt64, math.MaxInt64, 5))
	f.Add(int64(2), int64(4), int64(2), int64(16), int64(100), int64(300), int64(16), true, int64(5), int64(-1), uint8(3),
		le(40, 60), le(100, 200))
	f.Add(int64(math.MaxInt64), int64(math.MinInt64), int64(-1), int64(0), int64(math.MaxInt64), int64(1), int64(0), true,
		int64(math.MinInt64), int64(math.MaxInt64), uint8(255), le(math.MinInt64), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b, hq, hkv, d, n, nk, block int64, windowed bool, left, right int64, ranks uint8, lens, lensK []byte) {
		req := shard.Request{B: int(b), Hq: int(hq), Hkv: int(hkv), D: int(d), N: int(n), Nk: int(nk), Block: int(block),
			Ranks: 1 + int(ranks)%8, Mask: shard.Mask{Causal: ranks&8 != 0, Windowed: windowed, Left: int(left), Right: int(right)}}
		decode := func(p []byte) []int {
			if len(p) == 0 {
				return nil
			}
			out := make([]int, 0, len(p)/8+1)
			for ; len(p) >= 8; p = p[8:] {
				out = append(out, int(int64(binary.LittleEndian.Uint64(p))))
			}
			if len(p) > 0 {
				out = append(out, int(p[0]))
			}
			return out
		}
		req.Mask.SeqLens, req.Mask.SeqLensK = decode(lens), decode(lensK)
		_ = req.Validate()
		l := shard.Limits{MaxBatch: 4, MaxHeads: 8, MaxTokens: 4096, MaxD: 64, MaxBlocks: 256, MaxDocs: 64, MaxJobBytes: 1 << 24}
		if err := l.Check(&req, shard.Tensors{LSE: windowed}); err != nil {
			var fe *shard.FieldError
			if !errors.As(err, &fe) || !errors.Is(err, shard.ErrInvalid) {
				t.Fatalf("Check error %v is not a FieldError wrapping ErrInvalid", err)
			}
			return
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("Check accepted %+v, Validate refused: %v", req, err)
		}
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatalf("Check accepted %+v, NewPlan refused: %v", req, err)
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("plan of %+v: %v", req, err)
		}
	})
}

// TestShardPlanValidateClaimedCounts: a plan claiming 2^31-1 blocks but
// listing two is refused without sizing anything by the claimed count (it
// used to make a map of 2^31 entries first).
func TestShardPlanValidateClaimedCounts(t *testing.T) {
	const huge = math.MaxInt32
	p := &shard.Plan{Strategy: shard.Contiguous, N: huge, Nk: huge, Block: 1, QBlockCount: huge, KBlockCount: huge, Steps: 2,
		Ranks:   []shard.Rank{{QBlocks: []int{0}, KVBlocks: []int{0}}, {QBlocks: []int{1}, KVBlocks: []int{1}}},
		Planned: []int{0, 1},
		Request: shard.Request{B: 1, Hq: 1, Hkv: 1, D: 1, N: huge, Nk: huge, Block: 1, Ranks: 2, Weights: []float64{1, 1}, QBlocks: []int{0, 1}}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := p.Validate()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, shard.ErrInvalid) || !strings.Contains(err.Error(), "key/value block 2 is not dealt") {
		t.Fatalf("Validate = %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Fatalf("Validate allocated %d bytes for a plan listing 4 blocks", got)
	}
	// The limits refuse such a request before any plan is built.
	wantField(t, "claimed blocks", shard.DefaultLimits().Check(&p.Request, shard.Tensors{}), "n", "2147483647: want 1..16777216")
}

// TestShardBlockPairs: BlockPairs answers what PairsRow does, key block by
// key block, over the fuzz sweep's shapes and masks.
func TestShardBlockPairs(t *testing.T) {
	rnd := rand.New(rand.NewPCG(11, 11))
	for i := range 200 {
		req := genRequest(uint16(rnd.Uint32()), uint16(rnd.Uint32()), uint8(rnd.Uint32()), uint8(i%9),
			uint8(i%len(allStrategies)), uint8(rnd.Uint32()), int8(rnd.Uint32()), int8(rnd.Uint32()), rnd.Uint64())
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatal(err)
		}
		for qi := range p.QBlockCount {
			row, bp := p.PairsRow(qi), p.BlockPairs(qi)
			first, last := bp.Span()
			for kj := -1; kj <= p.KBlockCount; kj++ {
				want := int64(0)
				if kj >= 0 && kj < len(row) {
					want = row[kj]
				}
				if got := bp.Pairs(kj); got != want {
					t.Fatalf("case %d %+v: block (%d, %d): Pairs = %d, PairsRow = %d", i, req, qi, kj, got, want)
				}
				if want > 0 && (kj < first || kj >= last) {
					t.Fatalf("case %d: block (%d, %d) has %d pairs outside Span [%d, %d)", i, qi, kj, want, first, last)
				}
			}
		}
	}
	if (&shard.Plan{}).BlockPairs(0) != nil {
		t.Fatal("BlockPairs of an empty plan")
	}
}
