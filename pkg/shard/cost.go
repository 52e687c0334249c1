package shard

import (
	"context"
	"math/bits"
	"slices"
)

// Cost model defaults.
const (
	// DefaultGFLOPS is a rank's speed when the request gives no weights
	// and no GFLOPS: a few cores of AVX2.
	DefaultGFLOPS = 50
	// DefaultLink is a rank's link bandwidth when the request gives none:
	// 10 Gbit/s.
	DefaultLink = 1.25e9
	// StepLatency is the fixed cost the model charges every ring step (a
	// frame's round trip and the synchronisation of the step).
	StepLatency = 200e-6
)

// Prediction is the cost model's estimate of a plan's run time. A rank
// computes its visible pairs (Rank.Cost) at its speed (Request.Weights
// times Request.GFLOPS) while it receives its key/value blocks (the
// short-circuit schedule, Plan.Traffic) over its link (Request.Link); the
// two overlap step by step, so a rank takes max(compute, receive) plus
// StepLatency per step. A split-KV plan adds the reduction: one partial
// per tree level over the link. With Request.WholeBlocks a rank reads
// its query and key/value blocks, every head: the queries (and a ring's
// initial key/value blocks) before it starts, a one-step plan's key/value
// blocks while it folds; its output heads for other blocks' writers go
// over the link after. The plan takes as long as its slowest rank.
type Prediction struct {
	Seconds float64 // predicted wall time of the plan
	Compute float64 // the slowest rank's compute seconds
	Comm    float64 // the slowest rank's receive seconds (reads and gather included)
	// Bytes is what the plan moves: Plan.BytesMoved, plus with
	// WholeBlocks the input bytes read and Plan.GatherBytes.
	Bytes int64
}

// better reports whether a is preferred to b: more than 2 % faster, or
// within 2 % and moving fewer bytes.
func (a Prediction) better(b Prediction) bool {
	return a.Seconds < b.Seconds/1.02 || (a.Seconds <= b.Seconds*1.02 && a.Bytes < b.Bytes)
}

// Predict returns the cost model's estimate for the plan.
func (p *Plan) Predict() Prediction { return p.predict(context.Background()) }

func (p *Plan) predict(ctx context.Context) Prediction {
	r := &p.Request
	gf := r.GFLOPS
	if gf <= 0 {
		gf = 1
	}
	link := r.Link
	if link <= 0 {
		link = DefaultLink
	}
	speed := func(rank int) float64 {
		w := 1.0
		if rank < len(r.Weights) {
			w = r.Weights[rank]
		}
		return w * gf * 1e9
	}
	var out Prediction
	if p.Strategy == SplitKV {
		for i, rk := range p.Ranks {
			out.Compute = max(out.Compute, rk.Cost/speed(i))
		}
		levels := bits.Len(uint(max(1, len(p.Ranks)) - 1))
		var partial int64
		for _, rk := range p.Ranks {
			partial = max(partial, rk.Bytes)
		}
		out.Comm = float64(levels) * float64(partial) / link
		out.Bytes = p.RingBytes()
		if r.WholeBlocks {
			var most int64
			for i := range p.Ranks {
				rd, _ := p.wholeBlockBytes(i)
				most = max(most, rd)
				out.Bytes += rd
			}
			out.Comm += float64(most) / link
		}
		out.Seconds = out.Compute + out.Comm + float64(1+levels)*StepLatency
		return out
	}
	var recv []int64
	if p.Steps > 1 {
		var err error
		if recv, err = p.receivedBytes(ctx); err != nil {
			return Prediction{}
		}
		for _, b := range recv {
			out.Bytes += b
		}
	}
	for i, rk := range p.Ranks {
		c := rk.Cost / speed(i)
		var m, io float64
		if recv != nil {
			m = float64(recv[i]) / link
		}
		if r.WholeBlocks {
			// Queries are read before the first fold; key/value blocks
			// too in a ring, while a plan of one step folds each as the
			// next is read; the gathered outputs go after the last fold.
			qr, kvr, gb := p.wholeBlockParts(i)
			io = float64(qr+gb) / link
			if p.Steps == 1 {
				m += float64(kvr) / link
			} else {
				io += float64(kvr) / link
			}
			out.Bytes += qr + kvr + gb
		}
		if t := io + max(c, m) + float64(p.Steps)*StepLatency; t > out.Seconds {
			out.Seconds, out.Compute, out.Comm = t, c, m+io
		}
	}
	return out
}

// wholeBlockBytes returns what rank reads from a store of whole blocks
// (its query units' and loaded key/value units' blocks, every head, at 4
// bytes a value) and the output heads it sends to other blocks' writers.
func (p *Plan) wholeBlockBytes(rank int) (read, gather int64) {
	q, kv, gather := p.wholeBlockParts(rank)
	return q + kv, gather
}

// wholeBlockParts is wholeBlockBytes with the query and key/value reads
// apart. With HeadReads a head group's rank reads its group's heads.
func (p *Plan) wholeBlockParts(rank int) (q, kv, gather int64) {
	r := &p.Request
	g := p.Groups()
	hq, hkv := r.Hq, r.Hkv
	if r.HeadReads {
		hq, hkv = r.Hq/g, r.Hkv/g
	}
	for _, u := range p.Ranks[rank].QBlocks {
		gu, b := p.QUnit(u)
		_, rows := p.QSpan(b)
		q += int64(r.B) * int64(hq) * int64(rows) * int64(r.D) * 4
		if g > 1 && gu != b%g {
			gather += int64(r.B) * int64(r.Hq/g) * int64(rows) * int64(r.D+1) * 4
		}
	}
	for _, u := range p.Ranks[rank].KVBlocks {
		_, j := p.KVUnit(u)
		_, rows := p.KSpan(j)
		kv += 2 * int64(r.B) * int64(hkv) * int64(rows) * int64(r.D) * 4
	}
	return q, kv, gather
}

// GatherBytes returns the output bytes a head-group plan moves over a store
// of whole blocks: every planned block's (O, LSE) heads of the G-1 groups
// that do not write it (0 without head groups).
func (p *Plan) GatherBytes() int64 {
	var total int64
	for i := range p.Ranks {
		_, gb := p.wholeBlockBytes(i)
		total += gb
	}
	return total
}

// autoPlan plans r (Strategy Auto, HeadGroups 0, all query blocks) with
// the head groups and strategy of the lowest predicted time: the plan
// without head groups that costs.auto picks, and for every G > 1 dividing
// both Hkv and W, G groups of W/G ranks (pure head parallelism when
// W/G = 1) dealt by the ring strategy bestRing prefers. Auto uses all W
// ranks (an explicit HeadGroups or strategy heads may use fewer). Ties
// (within 2 %) go to the plan moving fewer bytes, then to fewer groups.
func autoPlan(ctx context.Context, r Request) (*Plan, error) {
	c, err := newCosts(ctx, r)
	if err != nil {
		return nil, err
	}
	best := c.auto()
	bp := best.predict(ctx)
	for g := 2; g <= min(r.Hkv, r.Ranks); g++ {
		if r.Hkv%g != 0 || r.Ranks%g != 0 {
			continue // auto uses every rank it is given
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		cand, err := groupPlan(ctx, r, g, Auto)
		if err != nil {
			return nil, err
		}
		if cp := cand.predict(ctx); cp.better(bp) {
			best, bp = cand, cp
		}
	}
	return best, nil
}

// receivedBytes returns the key/value bytes each rank receives on the
// short-circuit schedule. Head groups are scheduled group by group, and a
// group whose ranks weigh and plan the same as an earlier one's receives
// the same: its schedule (O(N) to make) is not made again, so pricing G
// groups costs about one group's schedule, not G.
func (p *Plan) receivedBytes(ctx context.Context) ([]int64, error) {
	out := make([]int64, len(p.Ranks))
	if p.Groups() == 1 {
		t, err := p.TrafficContext(ctx)
		if err != nil {
			return nil, err
		}
		for i := range p.Ranks {
			out[i] = t.ReceivedBytes(i)
		}
		return out, nil
	}
	gr := p.GroupRanks()
	var seen []*Plan // group plans already scheduled, with their bytes
	var seenBytes [][]int64
	for g := range p.Groups() {
		sub := p.GroupPlan(g)
		var got []int64
		for k, prev := range seen {
			if sameSchedule(prev, sub) {
				got = seenBytes[k]
				break
			}
		}
		if got == nil {
			t, err := sub.TrafficContext(ctx)
			if err != nil {
				return nil, err
			}
			got = make([]int64, gr)
			for i := range gr {
				got[i] = t.ReceivedBytes(i)
			}
			seen, seenBytes = append(seen, sub), append(seenBytes, got)
		}
		copy(out[g*gr:], got)
	}
	return out, nil
}

// sameSchedule reports whether two group plans deal the same blocks to
// their ranks (so their schedules move the same bytes).
func sameSchedule(a, b *Plan) bool {
	if len(a.Ranks) != len(b.Ranks) {
		return false
	}
	for i := range a.Ranks {
		if !slices.Equal(a.Ranks[i].QBlocks, b.Ranks[i].QBlocks) || !slices.Equal(a.Ranks[i].KVBlocks, b.Ranks[i].KVBlocks) {
			return false
		}
	}
	return true
}
