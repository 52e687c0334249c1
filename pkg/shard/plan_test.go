package shard_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/pkg/shard"
)

var allStrategies = []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV, shard.Auto, shard.Heads}

// brutePairs counts visible (query, key) pairs per (query block, key block)
// from the float64 reference's pair-by-pair mask definition.
func brutePairs(req *shard.Request, block int) [][]int64 {
	ref := attnref.Problem{N: req.N, Nk: req.Nk, Mask: attnref.Mask{
		Causal: req.Mask.Causal, Windowed: req.Mask.Windowed, Left: req.Mask.Left, Right: req.Mask.Right,
		SeqLens: req.Mask.SeqLens, SeqLensK: req.Mask.SeqLensK}}
	nq, nk := (req.N+block-1)/block, (req.Nk+block-1)/block
	out := make([][]int64, nq)
	for i := range out {
		out[i] = make([]int64, nk)
	}
	for i := 0; i < req.N; i++ {
		for j := 0; j < req.Nk; j++ {
			if ref.Visible(i, j) {
				out[i/block][j/block]++
			}
		}
	}
	return out
}

// checkPlan asserts every invariant of a plan made for req.
func checkPlan(t *testing.T, req shard.Request, p *shard.Plan) {
	t.Helper()
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if grouped(p) {
		checkGroups(t, req, p, checkPlan)
		return
	}
	if req.Strategy != shard.Auto && p.Strategy != req.Strategy {
		t.Fatalf("strategy %q, asked for %q", p.Strategy, req.Strategy)
	}
	w := req.Ranks
	bp := brutePairs(&req, p.Block)
	planned := map[int]bool{}
	for _, qi := range p.Planned {
		planned[qi] = true
	}
	if req.QBlocks == nil && len(p.Planned) != p.QBlockCount {
		t.Fatalf("planned %d blocks, expected all %d", len(p.Planned), p.QBlockCount)
	}
	for _, qi := range req.QBlocks {
		if !planned[qi] {
			t.Fatalf("requested block %d not planned", qi)
		}
	}
	// The planner's pair counts equal the reference mask's.
	for qi := range bp {
		if got := p.PairsRow(qi); !slices.Equal(got, bp[qi]) {
			t.Fatalf("PairsRow(%d) = %v, reference %v", qi, got, bp[qi])
		}
	}
	// Simulate the schedule: count every computed (query block, key block).
	computed := make([][]int, p.QBlockCount)
	for i := range computed {
		computed[i] = make([]int, p.KBlockCount)
	}
	fold := func(rank int, kv []int) {
		for _, kj := range kv {
			for _, qi := range p.Ranks[rank].QBlocks {
				if p.Visible(qi, kj) {
					computed[qi][kj]++
				}
			}
		}
	}
	if p.Strategy == shard.SplitKV {
		fold0 := 0
		for r := range w {
			fold(r, p.Ranks[r].KVBlocks)
			fold0 += len(p.Ranks[r].KVBlocks)
		}
		if fold0 != p.KBlockCount {
			t.Fatalf("split-KV ranges hold %d blocks, expected %d", fold0, p.KBlockCount)
		}
		checkReduction(t, p)
	} else {
		for r := range w {
			seen := map[int]int{}
			for s := 0; s < p.Steps; s++ {
				fold(r, p.HeldKV(r, s))
				for _, kj := range p.HeldKV(r, s) {
					seen[kj]++
				}
			}
			if len(seen) != p.KBlockCount {
				t.Fatalf("rank %d sees %d key blocks over the ring, expected %d", r, len(seen), p.KBlockCount)
			}
			for kj, c := range seen {
				if c != 1 {
					t.Fatalf("rank %d holds key block %d %d times", r, kj, c)
				}
			}
		}
	}
	for qi := range computed {
		for kj, c := range computed[qi] {
			want := 0
			if planned[qi] && bp[qi][kj] > 0 {
				want = 1
			}
			if c != want {
				t.Fatalf("pair (q%d, k%d) with %d visible pairs computed %d times, expected %d (planned %v)",
					qi, kj, bp[qi][kj], c, want, planned[qi])
			}
		}
	}
	// Output ownership.
	for qi := 0; qi < p.QBlockCount; qi++ {
		owners := 0
		for r := range w {
			if p.Strategy != shard.SplitKV && slices.Contains(p.Ranks[r].QBlocks, qi) {
				owners++
			}
		}
		switch {
		case p.Strategy == shard.SplitKV && planned[qi]:
			if p.Owner(qi) != 0 {
				t.Fatalf("split-KV block %d owner %d, expected 0", qi, p.Owner(qi))
			}
		case p.Strategy == shard.SplitKV:
			if p.Owner(qi) != -1 {
				t.Fatalf("unplanned block %d owner %d", qi, p.Owner(qi))
			}
		case planned[qi] && owners != 1, !planned[qi] && owners != 0:
			t.Fatalf("block %d (planned %v) has %d owners", qi, planned[qi], owners)
		}
	}
	// Costs, bytes and imbalance.
	weights := req.Weights
	if weights == nil {
		weights = slices.Repeat([]float64{1}, w)
	}
	pf := 4 * float64(req.B) * float64(req.Hq) * float64(req.D)
	var total, wsum, worst float64
	for r := range w {
		var pairs int64
		var bytes int64
		if p.Strategy == shard.SplitKV {
			for _, kj := range p.Ranks[r].KVBlocks {
				for _, qi := range p.Planned {
					pairs += bp[qi][kj]
				}
			}
		} else {
			for _, qi := range p.Ranks[r].QBlocks {
				for kj := range p.KBlockCount {
					pairs += bp[qi][kj]
				}
			}
			for s := 0; s+1 < p.Steps; s++ {
				for _, kj := range p.HeldKV(r, s) {
					bytes += p.KVBytes(kj)
				}
			}
			if p.Ranks[r].Bytes != bytes {
				t.Fatalf("rank %d Bytes = %d, expected %d", r, p.Ranks[r].Bytes, bytes)
			}
		}
		if got := p.Ranks[r].Cost; got != float64(pairs)*pf {
			t.Fatalf("rank %d Cost = %v, expected %v", r, got, float64(pairs)*pf)
		}
		total += p.Ranks[r].Cost
		wsum += weights[r]
		worst = max(worst, p.Ranks[r].Cost/weights[r])
	}
	want := 1.0
	if total > 0 {
		want = worst / (total / wsum)
	}
	if math.Abs(p.Imbalance-want) > 1e-9*want {
		t.Fatalf("Imbalance = %v, expected %v", p.Imbalance, want)
	}
	checkWeights(t, p, weights, bp)
}

// checkReduction simulates the split-KV tree: every rank's partial reaches
// rank 0 exactly once, and a rank sends only after merging its children.
func checkReduction(t *testing.T, p *shard.Plan) {
	t.Helper()
	w := len(p.Ranks)
	holds := make([]map[int]bool, w)
	for r := range holds {
		holds[r] = map[int]bool{r: true}
	}
	sent := make([]bool, w)
	for i, st := range p.Reduction() {
		if st.From <= 0 || st.From >= w || st.To < 0 || st.To >= w || st.From == st.To {
			t.Fatalf("reduce step %d %+v out of range", i, st)
		}
		if sent[st.From] || sent[st.To] {
			t.Fatalf("reduce step %d %+v involves a rank that already sent", i, st)
		}
		for _, later := range p.Reduction()[i+1:] {
			if later.To == st.From {
				t.Fatalf("rank %d sends at level %d before receiving from %d at level %d", st.From, st.Level, later.From, later.Level)
			}
		}
		for r := range holds[st.From] {
			if holds[st.To][r] {
				t.Fatalf("partial of rank %d merged twice into rank %d", r, st.To)
			}
			holds[st.To][r] = true
		}
		sent[st.From] = true
	}
	if len(holds[0]) != w {
		t.Fatalf("rank 0 ends with partials of %d ranks, expected %d", len(holds[0]), w)
	}
	for r := 1; r < w; r++ {
		if !sent[r] {
			t.Fatalf("rank %d never sends its partial", r)
		}
	}
}

// checkWeights asserts that shares follow the weights: ring strategies give
// each rank floor or ceil of its proportional number of query and key
// blocks; split-KV cuts each cumulative cost within one block of its target.
func checkWeights(t *testing.T, p *shard.Plan, w []float64, bp [][]int64) {
	t.Helper()
	var wsum float64
	for _, x := range w {
		wsum += x
	}
	if p.Strategy != shard.SplitKV {
		for r := range w {
			for _, c := range []struct {
				name string
				got  int
				of   int
			}{{"query", len(p.Ranks[r].QBlocks), len(p.Planned)}, {"key", len(p.Ranks[r].KVBlocks), p.KBlockCount}} {
				ideal := float64(c.of) * w[r] / wsum
				if float64(c.got) < math.Floor(ideal)-1e-9 || float64(c.got) > math.Ceil(ideal)+1e-9 {
					t.Fatalf("rank %d (weight %.3g) has %d %s blocks, expected about %.2f", r, w[r], c.got, c.name, ideal)
				}
			}
		}
		return
	}
	col := make([]int64, p.KBlockCount)
	var total, maxCol int64
	for _, qi := range p.Planned {
		for kj, c := range bp[qi] {
			col[kj] += c
		}
	}
	for _, c := range col {
		total += c
		maxCol = max(maxCol, c)
	}
	if total == 0 {
		return
	}
	var acc int64
	var wacc float64
	for r := range w {
		for _, kj := range p.Ranks[r].KVBlocks {
			acc += col[kj]
		}
		wacc += w[r]
		target := float64(total) * wacc / wsum
		if math.Abs(float64(acc)-target) > float64(maxCol)+1e-6*float64(total) {
			t.Fatalf("split-KV cut after rank %d at cost %d, target %.1f (max block %d)", r, acc, target, maxCol)
		}
	}
}

// genRequest builds a request from fuzzer-chosen numbers, keeping the
// reference check small (N, Nk <= 300).
func genRequest(n, nk uint16, block, ranks, strat, flags uint8, left, right int8, seed uint64) shard.Request {
	rnd := rand.New(rand.NewPCG(seed, seed^0x5eed))
	req := shard.Request{B: 1 + int(flags>>6), Hq: 4, Hkv: 2, D: 8,
		N: 1 + int(n)%300, Block: 1 + int(block)%64, Ranks: 1 + int(ranks)%9,
		Strategy: allStrategies[int(strat)%len(allStrategies)]}
	req.Nk = req.N
	if flags&1 != 0 {
		req.Nk = 1 + int(nk)%300
	}
	req.Mask.Causal = flags&2 != 0
	if flags&4 != 0 {
		req.Mask.Windowed = true
		req.Mask.Left, req.Mask.Right = max(-1, int(left)%40), max(-1, int(right)%40)
	}
	if flags&8 != 0 {
		docs := 1 + rnd.IntN(min(req.N, req.Nk, 6))
		req.Mask.SeqLens = splitLens(rnd, req.N, docs)
		if req.N != req.Nk || rnd.IntN(2) == 0 {
			req.Mask.SeqLensK = splitLens(rnd, req.Nk, docs)
		}
	}
	if flags&16 != 0 {
		req.Weights = make([]float64, req.Ranks)
		for i := range req.Weights {
			req.Weights[i] = 0.25 + 4*rnd.Float64()
		}
	}
	if g := 2; req.Strategy != shard.SplitKV && req.Ranks >= g && rnd.IntN(3) == 0 &&
		(req.Ranks%g == 0 || req.Strategy == shard.Heads || req.Strategy == shard.Auto) {
		req.HeadGroups = g
	}
	if flags&32 != 0 {
		nq := (req.N + req.Block - 1) / req.Block * max(1, req.HeadGroups)
		for _, b := range rnd.Perm(nq)[:1+rnd.IntN(nq)] {
			req.QBlocks = append(req.QBlocks, b)
		}
	}
	return req
}

// splitLens cuts total into docs positive lengths.
func splitLens(rnd *rand.Rand, total, docs int) []int {
	cuts := rnd.Perm(total - 1)[:docs-1]
	slices.Sort(cuts)
	lens := make([]int, 0, docs)
	prev := 0
	for _, c := range cuts {
		lens = append(lens, c+1-prev)
		prev = c + 1
	}
	return append(lens, total-prev)
}

func FuzzPlan(f *testing.F) {
	f.Add(uint16(200), uint16(200), uint8(16), uint8(3), uint8(1), uint8(2), int8(0), int8(0), uint64(1))
	f.Add(uint16(97), uint16(250), uint8(9), uint8(7), uint8(3), uint8(1|2|16), int8(5), int8(-1), uint64(2))
	f.Fuzz(func(t *testing.T, n, nk uint16, block, ranks, strat, flags uint8, left, right int8, seed uint64) {
		req := genRequest(n, nk, block, ranks, strat, flags, left, right, seed)
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatalf("NewPlan(%+v): %v", req, err)
		}
		checkPlan(t, req, p)
	})
}

// TestShardInvariants runs the invariant check over a seeded sweep of
// shapes, masks, weights, subsets and every strategy.
func TestShardInvariants(t *testing.T) {
	rnd := rand.New(rand.NewPCG(7, 7))
	for i := range 300 {
		req := genRequest(uint16(rnd.Uint32()), uint16(rnd.Uint32()), uint8(rnd.Uint32()), uint8(i%9),
			uint8(i%len(allStrategies)), uint8(rnd.Uint32()), int8(rnd.Uint32()), int8(rnd.Uint32()), rnd.Uint64())
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatalf("case %d NewPlan(%+v): %v", i, req, err)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkPlan(t, req, p) })
	}
}

func TestShardRequestValidate(t *testing.T) {
	good := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 64, N: 100, Nk: 100, Ranks: 2}
	cases := []struct {
		field, msg string
		edit       func(r *shard.Request)
	}{
		{"b", "0: want 1..", func(r *shard.Request) { r.B = 0 }},
		{"hq", "0: want 1..", func(r *shard.Request) { r.Hq = 0 }},
		{"hkv", "0: want 1..", func(r *shard.Request) { r.Hkv = 0 }},
		{"hkv", "hq = 4 is not a multiple of hkv = 3", func(r *shard.Request) { r.Hkv = 3 }},
		{"d", "0: want 1..", func(r *shard.Request) { r.D = 0 }},
		{"n", "0: want 1..", func(r *shard.Request) { r.N = 0 }},
		{"nk", "-1: want 1..", func(r *shard.Request) { r.Nk = -1 }},
		{"block", "-5: want 1..", func(r *shard.Request) { r.Block = -5 }},
		{"ranks", "0: want 1..", func(r *shard.Request) { r.Ranks = 0 }},
		{"elem_bytes", "3: want 2 (bf16) or 4 (f32)", func(r *shard.Request) { r.ElemBytes = 3 }},
		{"strategy", `"ring"`, func(r *shard.Request) { r.Strategy = "ring" }},
		{"weights", "1 entries: want ranks = 2", func(r *shard.Request) { r.Weights = []float64{1} }},
		{"weights", "item 1 = 0", func(r *shard.Request) { r.Weights = []float64{1, 0} }},
		{"weights", "item 0 = NaN", func(r *shard.Request) { r.Weights = []float64{math.NaN(), 1} }},
		{"qblocks", "2 entries: want at most the 1 query blocks", func(r *shard.Request) { r.QBlocks = []int{0, 1} }},
		{"qblocks", "item 0 = 1: want 0..0", func(r *shard.Request) { r.QBlocks = []int{1} }},
		{"qblocks", "item 1 = 0 is repeated", func(r *shard.Request) { r.Block = 10; r.QBlocks = []int{0, 0} }},
		{"qblocks", "empty", func(r *shard.Request) { r.QBlocks = []int{} }},
		{"mask.window_left", "-2: want -1 for unbounded", func(r *shard.Request) { r.Mask.Windowed, r.Mask.Left = true, -2 }},
		{"mask.window_right", "2147483648: want -1 for unbounded or 0..2147483647", func(r *shard.Request) {
			r.Mask.Windowed, r.Mask.Right = true, math.MaxInt32+1
		}},
		{"mask.seqlens", "lengths sum to 90, expected the sequence length 100", func(r *shard.Request) { r.Mask.SeqLens = []int{40, 50} }},
		{"mask.seqlens", "item 1 = 0: want lengths >= 1", func(r *shard.Request) { r.Mask.SeqLens = []int{100, 0} }},
		{"mask.seqlens", "item 1 = 51 brings the sum past n = 100", func(r *shard.Request) { r.Mask.SeqLens = []int{50, 51} }},
		{"mask.seqlens_k", "given without mask.seqlens", func(r *shard.Request) { r.Mask.SeqLensK = []int{100} }},
		{"mask.seqlens_k", "1 documents: want 2", func(r *shard.Request) {
			r.Mask.SeqLens = []int{50, 50}
			r.Mask.SeqLensK = []int{100}
		}},
		{"mask.seqlens", "needs n == nk", func(r *shard.Request) { r.Nk = 80; r.Mask.SeqLens = []int{100} }},
		{"", "more than 2^63 bytes", func(r *shard.Request) {
			r.B, r.Hq, r.Hkv, r.N, r.Nk, r.D = math.MaxInt32, math.MaxInt32, math.MaxInt32, math.MaxInt32, math.MaxInt32, 4
			r.Block = math.MaxInt32
		}},
	}
	for _, c := range cases {
		r := good
		c.edit(&r)
		_, err := shard.NewPlan(r)
		var fe *shard.FieldError
		if !errors.Is(err, shard.ErrInvalid) || !errors.As(err, &fe) || fe.Field != c.field || !strings.Contains(fe.Msg, c.msg) {
			t.Errorf("%s %q: got %v", c.field, c.msg, err)
		}
	}
	if _, err := shard.NewPlan(good); err != nil {
		t.Fatalf("good request: %v", err)
	}
}

func TestShardPlanValidateNamesField(t *testing.T) {
	p, err := shard.NewPlan(shard.Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: 64, Nk: 64, Block: 8, Ranks: 4, Strategy: shard.Zigzag})
	if err != nil {
		t.Fatal(err)
	}
	p.Ranks[1].QBlocks = append(p.Ranks[1].QBlocks, p.Ranks[0].QBlocks[0])
	if err := p.Validate(); !errors.Is(err, shard.ErrInvalid) || !strings.Contains(err.Error(), "Plan.Ranks[1].QBlocks") {
		t.Fatalf("duplicate owner: %v", err)
	}
	p.Ranks[1].QBlocks = p.Ranks[1].QBlocks[:len(p.Ranks[1].QBlocks)-1]
	p.Ranks[2].KVBlocks = nil
	if err := p.Validate(); !errors.Is(err, shard.ErrInvalid) || !strings.Contains(err.Error(), "not dealt") {
		t.Fatalf("missing key block: %v", err)
	}
}

// TestShardCausalBalance is the figure: causal N=16384, block 1024,
// 4 ranks: zigzag within 5 % of perfect, contiguous near 2.
func TestShardCausalBalance(t *testing.T) {
	req := shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: 16384, Nk: 16384, Ranks: 4, Mask: shard.Mask{Causal: true}}
	imb := map[shard.Strategy]float64{}
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped} {
		req.Strategy = s
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatal(err)
		}
		imb[s] = p.Imbalance
		t.Logf("%v", p)
	}
	if imb[shard.Zigzag] > 1.05 || imb[shard.Contiguous] < 1.6 {
		t.Fatalf("imbalance zigzag %.3f (want <= 1.05), contiguous %.3f (want near 2)", imb[shard.Zigzag], imb[shard.Contiguous])
	}
	req.Strategy, req.HeadGroups = shard.Auto, 1 // sequence plans only
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	if p.Strategy != shard.Zigzag {
		t.Fatalf("auto picked %s for causal self-attention, expected zigzag", p.Strategy)
	}
}

func TestShardAuto(t *testing.T) {
	cases := []struct {
		name string
		req  shard.Request
		want shard.Strategy
	}{
		{"one rank", shard.Request{N: 4096, Nk: 4096, Ranks: 1, Mask: shard.Mask{Causal: true}}, shard.Contiguous},
		{"decode", shard.Request{N: 16, Nk: 65536, Ranks: 4, Mask: shard.Mask{Causal: true}}, shard.SplitKV},
		{"short prompt", shard.Request{N: 4096, Nk: 32768, Ranks: 2}, shard.SplitKV},
		{"fewer blocks than ranks", shard.Request{N: 2048, Nk: 4096, Ranks: 4}, shard.SplitKV},
		{"causal", shard.Request{N: 8192, Nk: 8192, Ranks: 4, Mask: shard.Mask{Causal: true}}, shard.Zigzag},
		{"full", shard.Request{N: 8192, Nk: 8192, Ranks: 4}, shard.Contiguous},
		{"window", shard.Request{N: 8192, Nk: 8192, Ranks: 4, Mask: shard.Mask{Causal: true, Windowed: true, Left: 1024, Right: 0}}, shard.Contiguous},
	}
	for _, c := range cases {
		c.req.B, c.req.Hq, c.req.Hkv, c.req.D = 1, 2, 2, 64
		c.req.HeadGroups = 1 // the sequence strategies; heads_test.go has the rest
		p, err := shard.NewPlan(c.req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if p.Strategy != c.want {
			t.Errorf("%s: auto picked %s (imbalance %.3f), expected %s", c.name, p.Strategy, p.Imbalance, c.want)
		}
	}
}

// TestShardWeights: a rank three times as fast gets three times the work.
func TestShardWeights(t *testing.T) {
	base := shard.Request{B: 1, Hq: 2, Hkv: 2, D: 64, N: 16 * 64, Nk: 16 * 64, Block: 64, Ranks: 2, Weights: []float64{3, 1}}
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
		req := base
		req.Strategy = s
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatal(err)
		}
		if r := p.Ranks[0].Cost / p.Ranks[1].Cost; math.Abs(r-3) > 1e-9 || math.Abs(p.Imbalance-1) > 1e-9 {
			t.Errorf("%s: cost ratio %.3f, imbalance %.3f; expected 3 and 1", s, r, p.Imbalance)
		}
	}
	// Causal split-KV: cost, not block count, follows the weights (early keys
	// are seen by more queries, so rank 0 gets fewer of them).
	req := base
	req.Strategy, req.Mask.Causal, req.Weights = shard.SplitKV, true, []float64{1, 1}
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	if p.Imbalance > 1.1 || len(p.Ranks[0].KVBlocks) >= len(p.Ranks[1].KVBlocks) {
		t.Errorf("causal split-KV: %v, key blocks %v / %v", p, p.Ranks[0].KVBlocks, p.Ranks[1].KVBlocks)
	}
}

// TestShardReplan: a new epoch plans only the unfinished query blocks but
// still deals every key/value block.
func TestShardReplan(t *testing.T) {
	req := shard.Request{B: 1, Hq: 2, Hkv: 1, D: 32, N: 1000, Nk: 1000, Block: 100, Ranks: 3,
		QBlocks: []int{9, 2, 5, 7}, Mask: shard.Mask{Causal: true}}
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Planned, []int{2, 5, 7, 9}) {
		t.Fatalf("planned %v", p.Planned)
	}
	var kv int
	for _, r := range p.Ranks {
		kv += len(r.KVBlocks)
	}
	if kv != 10 {
		t.Fatalf("%d key blocks dealt, expected 10", kv)
	}
	checkPlan(t, req, p)
}

func TestShardSpansAndHolder(t *testing.T) {
	p, err := shard.NewPlan(shard.Request{B: 1, Hq: 1, Hkv: 1, D: 4, N: 250, Nk: 130, Block: 100, Ranks: 3, Strategy: shard.Striped})
	if err != nil {
		t.Fatal(err)
	}
	if s, n := p.QSpan(2); s != 200 || n != 50 {
		t.Fatalf("QSpan(2) = %d, %d", s, n)
	}
	if s, n := p.KSpan(1); s != 100 || n != 30 {
		t.Fatalf("KSpan(1) = %d, %d", s, n)
	}
	if p.PairsRow(-1) != nil || p.PairsRow(3) != nil || p.Visible(0, 2) || p.Visible(-1, 0) {
		t.Fatal("out-of-range blocks are not nil / invisible")
	}
	if !p.Visible(2, 1) {
		t.Fatal("block pair (2, 1) of an unmasked plan is not visible")
	}
	var empty shard.Plan
	if empty.Holder(1, 1) != 0 || empty.HeldKV(0, 0) != nil || !errors.Is(empty.Validate(), shard.ErrInvalid) {
		t.Fatal("an empty plan misbehaves")
	}
	for r := range 3 {
		for s := range 3 {
			if h := p.Holder(r, s); h != (r-s+3)%3 {
				t.Fatalf("Holder(%d,%d) = %d", r, s, h)
			}
		}
	}
}
