package shard_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/shard"
)

// grouped reports whether p splits the heads (head groups or Heads).
func grouped(p *shard.Plan) bool { return p.Groups() > 1 || p.Strategy == shard.Heads }

// groupRequest is the request group g of p answers: req over the group's
// heads and ranks.
func groupRequest(req shard.Request, p *shard.Plan, g int) (shard.Request, *shard.Plan) {
	sub := p.GroupPlan(g)
	gr := p.GroupRanks()
	r := req
	r.Hq, r.Hkv, r.Ranks, r.HeadGroups = req.Hq/p.Groups(), req.Hkv/p.Groups(), gr, 0
	r.Strategy = sub.Strategy
	if req.Weights != nil {
		r.Weights = req.Weights[g*gr : (g+1)*gr]
	}
	r.QBlocks = sub.Request.QBlocks
	return r, sub
}

// checkGroups asserts the head-group layout of p (made for req) and runs
// check on every group's plan against the group's request.
func checkGroups(t *testing.T, req shard.Request, p *shard.Plan, check func(*testing.T, shard.Request, *shard.Plan)) {
	t.Helper()
	g := p.Groups()
	if req.HeadGroups > 0 && g != req.HeadGroups {
		t.Fatalf("%d head groups, asked for %d", g, req.HeadGroups)
	}
	if req.Hkv%g != 0 || len(p.Ranks)%g != 0 || len(p.Ranks) > req.Ranks {
		t.Fatalf("%d head groups over hkv %d and %d ranks (asked %d)", g, req.Hkv, len(p.Ranks), req.Ranks)
	}
	gr := p.GroupRanks()
	switch {
	case p.Strategy == shard.Heads && (gr != 1 || p.Steps != 1):
		t.Fatalf("heads plan with %d ranks per group and %d steps", gr, p.Steps)
	case p.Strategy != shard.Heads && p.Steps != gr:
		t.Fatalf("%d steps, expected the %d ranks of a group's ring", p.Steps, gr)
	}
	want := req.QBlocks
	if want == nil {
		want = make([]int, p.QUnits())
		for i := range want {
			want[i] = i
		}
	}
	if !slices.Equal(p.Planned, slices.Sorted(slices.Values(want))) {
		t.Fatalf("planned units %v, expected %v", p.Planned, want)
	}
	for gi := range g {
		lo, hi := p.KVHeads(gi)
		qlo, qhi := p.QHeads(gi)
		ratio := req.Hq / req.Hkv
		if hi-lo != req.Hkv/g || qlo != lo*ratio || qhi != hi*ratio {
			t.Fatalf("group %d: kv heads [%d,%d), q heads [%d,%d): GQA groups cut", gi, lo, hi, qlo, qhi)
		}
		r, sub := groupRequest(req, p, gi)
		if len(sub.Planned) == 0 {
			for x := range sub.Ranks {
				if len(sub.Ranks[x].QBlocks) != 0 || sub.Ranks[x].Cost != 0 {
					t.Fatalf("idle group %d rank %d owns %v", gi, x, sub.Ranks[x].QBlocks)
				}
			}
			continue
		}
		for x := range sub.Ranks {
			if sub.Ranks[x].Cost != p.Ranks[gi*gr+x].Cost {
				t.Fatalf("group %d rank %d cost %v, plan says %v", gi, x, sub.Ranks[x].Cost, p.Ranks[gi*gr+x].Cost)
			}
		}
		check(t, r, sub)
	}
}

// checkGroupTraffic asserts the whole plan's schedule of units is the sum
// of its groups' schedules.
func checkGroupTraffic(t *testing.T, p *shard.Plan) {
	t.Helper()
	tr, full := p.Traffic(), p.FullRing()
	gr := p.GroupRanks()
	var bytes, fullBytes, grad int64
	frames := 0
	for g := range p.Groups() {
		sub := p.GroupPlan(g)
		st, sf := sub.Traffic(), sub.FullRing()
		bytes += st.Bytes()
		fullBytes += sf.Bytes()
		grad += st.GradBytes()
		frames += st.Frames()
		for x := range p.Ranks {
			for j := range p.KBlockCount {
				u := g*p.KBlockCount + j
				want := p.Group(x) == g && st.Needs(x-g*gr, j)
				if got := tr.Needs(x, u); got != want {
					t.Fatalf("Needs(%d, unit %d) = %v, group %d's plan says %v", x, u, got, g, want)
				}
				if p.Group(x) == g {
					if h := tr.Holder(u); h != g*gr+st.Holder(j) {
						t.Fatalf("Holder(unit %d) = %d, group %d's plan says %d", u, h, g, g*gr+st.Holder(j))
					}
					if n, sn := tr.Next(x, u), st.Next(x-g*gr, j); (sn < 0 && n != -1) || (sn >= 0 && n != g*gr+sn) {
						t.Fatalf("Next(%d, unit %d) = %d, group %d's plan says %d", x, u, n, g, sn)
					}
				}
			}
		}
	}
	if tr.Bytes() != bytes || p.BytesMoved() != bytes || tr.Frames() != frames || tr.GradBytes() != grad {
		t.Fatalf("Bytes %d, BytesMoved %d, Frames %d, GradBytes %d; the groups' sums are %d, %d, %d",
			tr.Bytes(), p.BytesMoved(), tr.Frames(), tr.GradBytes(), bytes, frames, grad)
	}
	if full.Bytes() != fullBytes || p.RingBytes() != fullBytes {
		t.Fatalf("FullRing().Bytes() = %d, RingBytes %d; the groups' full rings move %d", full.Bytes(), p.RingBytes(), fullBytes)
	}
	var recv int64
	for x := range p.Ranks {
		recv += tr.ReceivedBytes(x)
	}
	if recv != bytes {
		t.Fatalf("ranks receive %d bytes, expected %d", recv, bytes)
	}
}

// TestShardHeadGroupsBytes: at the shape (H=8, D=128, N=32768,
// W=4) the bytes moved fall with the head groups: the full ring moves
// (W/G-1)·|K,V| in all, pure head parallelism nothing.
func TestShardHeadGroupsBytes(t *testing.T) {
	const all = int64(2 * 8 * 32768 * 128 * 4) // K and V, every head, f32
	for _, c := range []struct {
		s     shard.Strategy
		g     int
		steps int
		full  int64
	}{
		{shard.Zigzag, 1, 4, 3 * all},
		{shard.Zigzag, 2, 2, all},
		{shard.Heads, 4, 1, 0},
		{shard.Contiguous, 4, 1, 0},
	} {
		req := bigRequest(c.s, shard.Mask{Causal: true})
		req.HeadGroups = c.g
		p := mustPlan(t, req)
		if p.Groups() != c.g || p.Steps != c.steps || p.RingBytes() != c.full || p.FullRing().Bytes() != c.full {
			t.Fatalf("%s G=%d: %v, ring bytes %d (full ring %d), expected %d groups, %d steps, %d bytes",
				c.s, c.g, p, p.RingBytes(), p.FullRing().Bytes(), c.g, c.steps, c.full)
		}
		moved := p.BytesMoved()
		if moved > c.full || (c.full > 0 && moved == 0) {
			t.Fatalf("%s G=%d moves %d bytes, full ring %d", c.s, c.g, moved, c.full)
		}
		if c.g == 4 && (p.Strategy != shard.Heads || moved != 0) {
			t.Fatalf("4 groups of 4 ranks: %v moving %d bytes, expected heads moving none", p, moved)
		}
		// Every group computes the same causal triangle over 2 heads.
		for r := range p.Ranks {
			if d := p.Ranks[r].Cost/p.Ranks[0].Cost - 1; c.s != shard.Contiguous && (d > 0.05 || d < -0.05) {
				t.Fatalf("%s G=%d: rank %d cost %v vs rank 0 %v", c.s, c.g, r, p.Ranks[r].Cost, p.Ranks[0].Cost)
			}
		}
		t.Logf("%v: moves %d bytes (full ring %d), predicted %+v", p, moved, c.full, p.Predict())
	}
}

// TestShardAutoHeadGroups: auto prices compute and bytes together.
func TestShardAutoHeadGroups(t *testing.T) {
	causal := shard.Mask{Causal: true}
	cases := []struct {
		name          string
		req           shard.Request
		strategy      shard.Strategy
		groups, ranks int
	}{
		// Balanced either way: pure head parallelism moves nothing.
		{"causal H=8 W=4", bigRequest(shard.Auto, causal), shard.Heads, 4, 4},
		// Hkv=2 over 4 ranks: 2 groups of a 2-rank zigzag ring.
		{"GQA 8/2 W=4", shard.Request{B: 1, Hq: 8, Hkv: 2, D: 128, N: 32768, Nk: 32768, Ranks: 4, Mask: causal}, shard.Zigzag, 2, 4},
		// MQA: one key/value head, nothing to split.
		{"MQA W=4", shard.Request{B: 1, Hq: 8, Hkv: 1, D: 128, N: 32768, Nk: 32768, Ranks: 4, Mask: causal}, shard.Zigzag, 1, 4},
		// Hkv=2 over 3 ranks: auto keeps every rank busy.
		{"Hkv=2 W=3", shard.Request{B: 1, Hq: 2, Hkv: 2, D: 128, N: 32768, Nk: 32768, Ranks: 3, Mask: causal, Link: 1e6}, shard.Zigzag, 1, 3},
		// One fast rank: equal head groups would wait for the slow ones.
		{"weighted", shard.Request{B: 1, Hq: 4, Hkv: 4, D: 128, N: 32768, Nk: 32768, Ranks: 4, Mask: causal,
			Weights: []float64{40, 10, 10, 10}}, shard.Zigzag, 1, 4},
		// ... unless the link is so slow that the ring's bytes dominate.
		{"weighted, slow link", shard.Request{B: 1, Hq: 4, Hkv: 4, D: 128, N: 32768, Nk: 32768, Ranks: 4, Mask: causal,
			Weights: []float64{40, 10, 10, 10}, Link: 1e6}, shard.Heads, 4, 4},
		// Asked not to split heads.
		{"G=1", shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: 32768, Nk: 32768, Ranks: 4, Mask: causal, HeadGroups: 1}, shard.Zigzag, 1, 4},
	}
	for _, c := range cases {
		p := mustPlan(t, c.req)
		if p.Strategy != c.strategy || p.Groups() != c.groups || len(p.Ranks) != c.ranks {
			t.Errorf("%s: auto picked %v, expected %s with %d groups on %d ranks", c.name, p, c.strategy, c.groups, c.ranks)
		}
		t.Logf("%s: %v, %+v", c.name, p, p.Predict())
	}
}

// TestShardHeadGroupsReplan: a re-plan of unfinished units keeps the head
// groups; a group with nothing left owns nothing.
func TestShardHeadGroupsReplan(t *testing.T) {
	req := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 8, N: 64, Nk: 64, Block: 8, Ranks: 4, HeadGroups: 2,
		Mask: shard.Mask{Causal: true}, QBlocks: []int{9, 3, 15}}
	for _, s := range []shard.Strategy{shard.Auto, shard.Zigzag, shard.Heads} {
		req.Strategy = s
		p := mustPlan(t, req)
		checkPlan(t, req, p)
		checkTraffic(t, req, p)
		if o := p.Owner(9); o < p.GroupRanks() {
			t.Fatalf("%s: unit 9 (group 1, block 1) owned by rank %d of group 0", s, o)
		}
	}
	req.QBlocks = []int{1, 2} // group 0 only
	req.Strategy = shard.Zigzag
	p := mustPlan(t, req)
	checkPlan(t, req, p)
	checkTraffic(t, req, p)
	for _, u := range p.Ranks[2].QBlocks {
		t.Fatalf("rank 2 (idle group 1) owns unit %d", u)
	}
}

func TestShardHeadGroupsValidate(t *testing.T) {
	good := shard.Request{B: 1, Hq: 8, Hkv: 4, D: 8, N: 64, Nk: 64, Block: 8, Ranks: 4}
	for _, c := range []struct {
		msg  string
		edit func(r *shard.Request)
	}{
		{"does not divide hkv", func(r *shard.Request) { r.HeadGroups = 3 }},
		{"want 0 (auto) or 1..hkv", func(r *shard.Request) { r.HeadGroups = 8 }},
		{"split-KV", func(r *shard.Request) { r.HeadGroups, r.Strategy = 2, shard.SplitKV }},
		{"does not divide ranks", func(r *shard.Request) { r.HeadGroups, r.Ranks, r.Strategy = 2, 3, shard.Zigzag }},
		{"at most ranks", func(r *shard.Request) { r.HeadGroups, r.Ranks = 4, 2 }},
	} {
		r := good
		c.edit(&r)
		_, err := shard.NewPlan(r)
		var fe *shard.FieldError
		if !errors.As(err, &fe) || fe.Field != "head_groups" || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: got %v", c.msg, err)
		}
	}
	// A hand-edited plan whose unit strays into another group is refused.
	p := mustPlan(t, shard.Request{B: 1, Hq: 8, Hkv: 4, D: 8, N: 64, Nk: 64, Block: 8, Ranks: 4, HeadGroups: 2, Strategy: shard.Zigzag})
	p.Ranks[0].QBlocks[0], p.Ranks[2].QBlocks[0] = p.Ranks[2].QBlocks[0], p.Ranks[0].QBlocks[0]
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "head group") {
		t.Fatalf("swapped units across groups: %v", err)
	}
}

// TestShardAutoWholeBlocks: over a store of whole blocks a head group's
// rank reads every head of its blocks; auto prices those reads and the
// output gather, so pure head parallelism no longer wins by moving no
// ring bytes (it reads G = 4 times its share).
func TestShardAutoWholeBlocks(t *testing.T) {
	req := bigRequest(shard.Auto, shard.Mask{Causal: true})
	req.Weights = []float64{300, 300, 300, 300} // measured GFLOP/s
	req.WholeBlocks = true
	p := mustPlan(t, req)
	if p.Strategy == shard.Heads {
		t.Fatalf("whole blocks: auto picked %v, %+v", p, p.Predict())
	}
	heads := req
	heads.Strategy = shard.Heads
	hp := mustPlan(t, heads)
	if hp.GatherBytes() != 3*int64(8/4*32768*129*4) || hp.Predict().Bytes <= p.Predict().Bytes/2 {
		t.Fatalf("heads: gather %d bytes, predicted %+v vs %v's %+v", hp.GatherBytes(), hp.Predict(), p, p.Predict())
	}
	t.Logf("whole blocks: %v %+v; heads %+v", p, p.Predict(), hp.Predict())

	// A store that serves head ranges: the heads ranks read q, k and v
	// once between them, and head parallelism, which moves no ring bytes,
	// wins again; the gather is priced as before.
	hr := req
	hr.HeadReads = true
	hheads := heads
	hheads.HeadReads = true
	hhp := mustPlan(t, hheads)
	if hhp.GatherBytes() != hp.GatherBytes() || hhp.Predict().Bytes != 3*int64(8*32768*128*4)+hhp.GatherBytes() {
		t.Fatalf("head reads: heads gather %d, predicted %+v (whole blocks %+v)", hhp.GatherBytes(), hhp.Predict(), hp.Predict())
	}
	if p := mustPlan(t, hr); p.Strategy != shard.Heads {
		t.Fatalf("head reads: auto picked %v, %+v against heads' %+v", p, p.Predict(), hhp.Predict())
	}
	t.Logf("head reads: heads %+v", hhp.Predict())
	req.WholeBlocks = false // in-process sources lend views: reads are free
	if p := mustPlan(t, req); p.Strategy != shard.Heads {
		t.Fatalf("views: auto picked %v, %+v", p, p.Predict())
	}
}
