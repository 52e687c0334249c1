package shard_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ringattn/ringattn/pkg/shard"
)

// checkTraffic asserts the key/value schedule of p against the brute-force
// visibility of req: each rank needs exactly the key blocks its query
// blocks see, every block's route visits exactly those ranks in ring order
// from its holder, and the byte and frame counts add up.
func checkTraffic(t *testing.T, req shard.Request, p *shard.Plan) {
	t.Helper()
	if grouped(p) {
		checkGroups(t, req, p, checkTraffic)
		checkGroupTraffic(t, p)
		return
	}
	tr := p.Traffic()
	full := p.FullRing()
	bp := brutePairs(&req, p.Block)
	w := len(p.Ranks)
	split := p.Strategy == shard.SplitKV
	var wantBytes int64
	wantFrames := 0
	for j := range p.KBlockCount {
		h := tr.Holder(j)
		if h < 0 || !slices.Contains(p.Ranks[h].KVBlocks, j) {
			t.Fatalf("Holder(%d) = %d, not the rank it is dealt to", j, h)
		}
		var route []int // needy ranks other than h, in ring order from h
		for d := range w {
			x := (h + d) % w
			want := false
			if split {
				want = x == h
			} else {
				for _, qi := range p.Ranks[x].QBlocks {
					if bp[qi][j] > 0 {
						want = true
					}
				}
			}
			if got := tr.Needs(x, j); got != want {
				t.Fatalf("Needs(%d, %d) = %v, expected %v", x, j, got, want)
			}
			if !full.Needs(x, j) && !split {
				t.Fatalf("FullRing().Needs(%d, %d) = false", x, j)
			}
			if want && x != h {
				route = append(route, x)
				wantBytes += p.KVBytes(j)
				wantFrames++
			}
			if s := tr.Step(x, j); s != d {
				t.Fatalf("Step(%d, %d) = %d, expected %d", x, j, s, d)
			}
		}
		// Walk the route by Next from the holder.
		at := h
		for _, x := range route {
			if n := tr.Next(at, j); n != x {
				t.Fatalf("block %d: Next(%d) = %d, expected %d (route %v from %d)", j, at, n, x, route, h)
			}
			if f := tr.From(x, j); f != at {
				t.Fatalf("block %d: From(%d) = %d, expected %d", j, x, f, at)
			}
			if s := tr.SendStep(at, j); s != tr.Step(x, j)-1 || s < tr.Step(at, j) {
				t.Fatalf("block %d: SendStep(%d) = %d, receiver folds at %d, sender at %d", j, at, s, tr.Step(x, j), tr.Step(at, j))
			}
			at = x
		}
		if n := tr.Next(at, j); n != -1 {
			t.Fatalf("block %d: Next(%d) = %d after the route's end", j, at, n)
		}
		if got, want := tr.Loads(h, j), tr.Needs(h, j) || len(route) > 0; got != want {
			t.Fatalf("Loads(%d, %d) = %v, expected %v", h, j, got, want)
		}
		for x := range w {
			if !tr.Needs(x, j) && x != h {
				if tr.Next(x, j) != -1 || tr.From(x, j) != -1 || tr.SendStep(x, j) != -1 {
					t.Fatalf("rank %d does not need block %d but routes it", x, j)
				}
			}
			if x != h && tr.Loads(x, j) {
				t.Fatalf("rank %d loads block %d it does not hold", x, j)
			}
		}
	}
	// Accumulators: one hop between consecutive needy ranks, one home.
	var wantGrad int64
	for j := range p.KBlockCount {
		h := tr.Holder(j)
		var needy []int
		for d := range w {
			if x := (h + d) % w; tr.Needs(x, j) {
				needy = append(needy, x)
			}
		}
		hops := max(0, len(needy)-1)
		if len(needy) > 0 && needy[len(needy)-1] != h {
			hops++
		}
		wantGrad += int64(hops) * p.KVBytes(j)
	}
	if got := tr.GradBytes(); got != wantGrad {
		t.Fatalf("GradBytes() = %d, expected %d", got, wantGrad)
	}
	if got := tr.Bytes(); got != wantBytes {
		t.Fatalf("Bytes() = %d, expected %d", got, wantBytes)
	}
	if got := tr.Frames(); got != wantFrames {
		t.Fatalf("Frames() = %d, expected %d", got, wantFrames)
	}
	var sent, recv int64
	for x := range w {
		sent += tr.SentBytes(x)
		recv += tr.ReceivedBytes(x)
		for s := range p.Steps {
			var want []int
			for _, j := range p.HeldKV(x, s) {
				if tr.Needs(x, j) {
					want = append(want, j)
				}
			}
			if got := tr.Fold(x, s); !slices.Equal(got, want) {
				t.Fatalf("Fold(%d, %d) = %v, expected %v", x, s, got, want)
			}
		}
	}
	if sent != wantBytes || recv != wantBytes {
		t.Fatalf("ranks send %d and receive %d bytes, expected %d", sent, recv, wantBytes)
	}
	if split {
		if tr.Bytes() != 0 || full.Bytes() != 0 || p.BytesMoved() != p.RingBytes() {
			t.Fatalf("split-KV moves key/value bytes: %d, %d; BytesMoved %d, RingBytes %d", tr.Bytes(), full.Bytes(), p.BytesMoved(), p.RingBytes())
		}
		return
	}
	var all int64
	for j := range p.KBlockCount {
		all += p.KVBytes(j)
	}
	if fb := full.Bytes(); fb != int64(w-1)*all || fb != p.RingBytes() {
		t.Fatalf("FullRing().Bytes() = %d, expected (W-1)·%d = %d = RingBytes %d", fb, all, int64(w-1)*all, p.RingBytes())
	}
	if full.GradBytes() != int64(w)*all && w > 1 {
		t.Fatalf("FullRing().GradBytes() = %d, expected W·%d", full.GradBytes(), all)
	}
	if full.Frames() != (w-1)*p.KBlockCount {
		t.Fatalf("FullRing().Frames() = %d, expected %d", full.Frames(), (w-1)*p.KBlockCount)
	}
	if p.BytesMoved() != wantBytes {
		t.Fatalf("BytesMoved() = %d, expected %d", p.BytesMoved(), wantBytes)
	}
}

func FuzzTraffic(f *testing.F) {
	f.Add(uint16(200), uint16(200), uint8(16), uint8(3), uint8(0), uint8(2), int8(0), int8(0), uint64(1))
	f.Add(uint16(97), uint16(250), uint8(9), uint8(7), uint8(1), uint8(1|2|16), int8(5), int8(-1), uint64(2))
	f.Add(uint16(160), uint16(160), uint8(10), uint8(4), uint8(2), uint8(2|4|8), int8(12), int8(3), uint64(3))
	f.Add(uint16(120), uint16(90), uint8(7), uint8(5), uint8(3), uint8(1|8|32), int8(0), int8(0), uint64(4))
	f.Fuzz(func(t *testing.T, n, nk uint16, block, ranks, strat, flags uint8, left, right int8, seed uint64) {
		req := genRequest(n, nk, block, ranks, strat, flags, left, right, seed)
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatalf("NewPlan(%+v): %v", req, err)
		}
		checkTraffic(t, req, p)
	})
}

// TestShardTrafficInvariants runs checkTraffic over a seeded sweep of
// shapes, masks (causal, window, packed and cross documents), weights,
// re-planned subsets and every strategy.
func TestShardTrafficInvariants(t *testing.T) {
	rnd := rand.New(rand.NewPCG(11, 11))
	for i := range 300 {
		req := genRequest(uint16(rnd.Uint32()), uint16(rnd.Uint32()), uint8(rnd.Uint32()), uint8(i%9),
			uint8(i%len(allStrategies)), uint8(rnd.Uint32()), int8(rnd.Uint32()), int8(rnd.Uint32()), rnd.Uint64())
		p, err := shard.NewPlan(req)
		if err != nil {
			t.Fatalf("case %d NewPlan(%+v): %v", i, req, err)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkTraffic(t, req, p) })
	}
}

// bigRequest is the shape: H=8, D=128, N=32768, block 1024, W=4.
func bigRequest(s shard.Strategy, m shard.Mask) shard.Request {
	return shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: 32768, Nk: 32768, Block: 1024, Ranks: 4, Strategy: s, Mask: m}
}

func mustPlan(t testing.TB, req shard.Request) *shard.Plan {
	t.Helper()
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestShardTrafficKnownCounts checks the bytes moved where they follow
// from the mask by hand, at N=32768, W=4, block 1024 (8 blocks a rank in
// contiguous plans; one block's K and V are 2·8·1024·128·4 = 8 MiB).
func TestShardTrafficKnownCounts(t *testing.T) {
	const blockBytes = 2 * 8 * 1024 * 128 * 4
	docs := []int{8192, 8192, 8192, 8192} // one document per rank
	cases := []struct {
		name   string
		s      shard.Strategy
		m      shard.Mask
		blocks int64 // frames of the short-circuit schedule
	}{
		// Rank r needs the blocks of ranks <= r: 8·(0+1+2+3) foreign blocks.
		{"causal contiguous", shard.Contiguous, shard.Mask{Causal: true}, 8 * (0 + 1 + 2 + 3)},
		// Zigzag: rank r holds chunks r and 7-r; rank r needs chunks <= 7-r
		// but its own: ranks 0..3 need 6, 5, 4, 3 foreign chunks of 4 blocks.
		{"causal zigzag", shard.Zigzag, shard.Mask{Causal: true}, 4 * (6 + 5 + 4 + 3)},
		// A causal window of one block: rank r > 0 needs only the last
		// block of rank r-1.
		{"window contiguous", shard.Contiguous, shard.Mask{Causal: true, Windowed: true, Left: 1024, Right: -1}, 3},
		// Documents aligned with the ranks' shares: no rank needs another's.
		{"docs contiguous", shard.Contiguous, shard.Mask{SeqLens: docs}, 0},
		{"causal docs contiguous", shard.Contiguous, shard.Mask{Causal: true, SeqLens: docs}, 0},
		// Striped documents: every rank holds two blocks of each document
		// and needs the other six: 4 ranks · 4 documents · 6 blocks.
		{"docs striped", shard.Striped, shard.Mask{SeqLens: docs}, 4 * 4 * 6},
		// No mask: every rank needs every block, as in the full ring.
		{"full contiguous", shard.Contiguous, shard.Mask{}, 3 * 32},
	}
	for _, c := range cases {
		p := mustPlan(t, bigRequest(c.s, c.m))
		tr := p.Traffic()
		if got, want := tr.Bytes(), c.blocks*blockBytes; got != want || p.BytesMoved() != want {
			t.Errorf("%s: Bytes() = %d, BytesMoved() = %d, expected %d blocks = %d", c.name, got, p.BytesMoved(), c.blocks, want)
		}
		if got := tr.Frames(); int64(got) != c.blocks {
			t.Errorf("%s: Frames() = %d, expected %d", c.name, got, c.blocks)
		}
		if got, want := p.RingBytes(), int64(3*32*blockBytes); got != want {
			t.Errorf("%s: RingBytes() = %d, expected %d", c.name, got, want)
		}
	}
	// Causal contiguous: rank r receives 8r blocks and sends every block of
	// ranks <= r to r+1 (rank 3 sends nothing).
	p := mustPlan(t, bigRequest(shard.Contiguous, shard.Mask{Causal: true}))
	tr := p.Traffic()
	for r := range 4 {
		if got, want := tr.ReceivedBytes(r), int64(8*r*blockBytes); got != want {
			t.Errorf("causal contiguous rank %d receives %d bytes, expected %d", r, got, want)
		}
		want := int64(0)
		if r < 3 {
			want = int64(8 * (r + 1) * blockBytes)
		}
		if got := tr.SentBytes(r); got != want {
			t.Errorf("causal contiguous rank %d sends %d bytes, expected %d", r, got, want)
		}
	}
}

// TestShardTrafficShortCircuit checks that a block skips the ranks that do
// not need it: documents shared by ranks 0 and 2 only go from 0 to 2.
func TestShardTrafficShortCircuit(t *testing.T) {
	// Striped over 4 ranks, 8 blocks of 16: rank r holds query and key
	// blocks r and r+4. Documents: blocks 0-1 and blocks 2-7, so ranks 0
	// and 1 need every block, ranks 2 and 3 only blocks 2-7.
	req := shard.Request{B: 1, Hq: 1, Hkv: 1, D: 4, N: 128, Nk: 128, Block: 16, Ranks: 4,
		Strategy: shard.Striped, Mask: shard.Mask{SeqLens: []int{32, 96}}}
	p := mustPlan(t, req)
	tr := p.Traffic()
	// Block 0 (held by rank 0) is needed by ranks 0 and 1 only.
	if got := tr.Next(0, 0); got != 1 {
		t.Fatalf("Next(0, 0) = %d, expected 1", got)
	}
	if got := tr.Next(1, 0); got != -1 {
		t.Fatalf("Next(1, 0) = %d, expected -1 (ranks 2, 3 do not need block 0)", got)
	}
	if tr.Needs(2, 0) || tr.Needs(3, 0) || tr.Loads(2, 0) {
		t.Fatal("ranks 2 and 3 need block 0")
	}
	// Block 1 (rank 1) is needed by ranks 0 and 1: it goes 1 -> 0 directly,
	// past ranks 2 and 3, and arrives at rank 0's step 3.
	if got := tr.Next(1, 1); got != 0 {
		t.Fatalf("Next(1, 1) = %d, expected 0", got)
	}
	if got, want := tr.SendStep(1, 1), 2; got != want {
		t.Fatalf("SendStep(1, 1) = %d, expected %d", got, want)
	}
	if got := tr.From(0, 1); got != 1 {
		t.Fatalf("From(0, 1) = %d, expected 1", got)
	}
	checkTraffic(t, req, p)
}

func TestShardTrafficContext(t *testing.T) {
	p := mustPlan(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 4, N: 1 << 14, Nk: 1 << 14, Block: 16, Ranks: 2,
		Strategy: shard.Contiguous, Mask: shard.Mask{Causal: true}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.TrafficContext(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("TrafficContext after cancel: %v, expected context.Canceled", err)
	}
	tr, err := p.TrafficContext(context.Background())
	if err != nil || tr.Bytes() != p.Traffic().Bytes() {
		t.Fatalf("TrafficContext: %v", err)
	}
}

// TestShardTrafficOutOfRange checks the accessors' answers for ranks and
// blocks outside the plan.
func TestShardTrafficOutOfRange(t *testing.T) {
	p := mustPlan(t, shard.Request{B: 1, Hq: 1, Hkv: 1, D: 4, N: 64, Nk: 64, Block: 16, Ranks: 2,
		Strategy: shard.Contiguous, Mask: shard.Mask{Causal: true}})
	tr := p.Traffic()
	for _, c := range [][2]int{{-1, 0}, {2, 0}, {0, -1}, {0, 4}} {
		x, j := c[0], c[1]
		if tr.Needs(x, j) || tr.Next(x, j) != -1 || tr.From(x, j) != -1 || tr.Step(x, j) != -1 ||
			tr.SendStep(x, j) != -1 || tr.Loads(x, j) {
			t.Fatalf("rank %d block %d: accessors answer for a pair out of range", x, j)
		}
	}
	if tr.Holder(-1) != -1 || tr.Holder(4) != -1 || tr.Fold(0, 2) != nil || tr.Fold(-1, 0) != nil ||
		tr.SentBytes(2) != 0 || tr.ReceivedBytes(-1) != 0 {
		t.Fatal("accessors answer out of range")
	}
}

// TestShardTrafficTable logs the bytes moved before (full ring) and after
// (short-circuit) for the shape; run with -v to see it.
func TestShardTrafficTable(t *testing.T) {
	docs := make([]int, 8)
	for i := range docs {
		docs[i] = 4096
	}
	masks := []struct {
		name string
		m    shard.Mask
	}{
		{"full", shard.Mask{}},
		{"causal", shard.Mask{Causal: true}},
		{"window 4096 causal", shard.Mask{Causal: true, Windowed: true, Left: 4096, Right: -1}},
		{"window ±2048", shard.Mask{Windowed: true, Left: 2048, Right: 2048}},
		{"8 docs × 4096", shard.Mask{SeqLens: docs}},
		{"8 docs × 4096 causal", shard.Mask{Causal: true, SeqLens: docs}},
	}
	const mib = 1 << 20
	t.Logf("%-22s %-16s %10s %10s %7s   %s", "mask", "strategy", "before MiB", "after MiB", "after/before", "backward before/after MiB")
	for _, m := range masks {
		for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.Auto} {
			p := mustPlan(t, bigRequest(s, m.m))
			before, after := p.RingBytes(), p.BytesMoved()
			if after > before {
				t.Errorf("%s %s: short-circuit moves %d bytes, more than the ring's %d", m.name, p.Strategy, after, before)
			}
			name := string(s)
			if s == shard.Auto {
				name = "auto:" + string(p.Strategy)
			}
			fb, tb := p.FullRing().GradBytes(), p.Traffic().GradBytes()
			t.Logf("%-22s %-16s %10d %10d %7.3f   backward %5d %5d", m.name, name, before/mib, after/mib, float64(after)/float64(before),
				(before+fb)/mib, (after+tb)/mib)
		}
	}
}
