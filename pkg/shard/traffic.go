package shard

import (
	"context"
	"sort"

	"github.com/ringattn/ringattn/pkg/mask"
)

// Traffic is the key/value schedule of a plan: which ranks fold each
// key/value block and the path it takes between them.
//
// A rank needs key block j when a query block it owns sees a key of j
// (Plan.Visible). In a ring plan block j, dealt to rank h, is folded by
// rank x at step (x-h) mod W, as it always was; but instead of travelling
// through every rank, it goes from h straight to the first rank after h in
// ring order that needs it, from there to the next, and so on: its route is
// h followed by the ranks that need it, in ring order. Ranks that do not
// need a block neither receive nor forward it. The sender of a hop sends the
// block during the step before the receiver folds it, so every frame in
// flight at step s is for step s+1, as in the full ring.
//
// Split-KV plans move no key/value block: each rank folds the range it is
// dealt. FullRing is the schedule without short-circuits (every rank needs
// every block), which is what ring plans moved before.
//
// Traffic keeps each rank's needed key blocks as ranges, so it takes
// O(ranges) memory, and answers Needs in O(log ranges) and From and Next
// in O(W log ranges).
type Traffic struct {
	plan   *Plan
	w      int         // ranks of one ring: W, or W/G with head groups
	ranks  int         // all ranks
	holder []int32     // by key block: the rank it is dealt to
	need   [][]kvRange // by rank: ascending disjoint key block ranges it folds
	split  bool        // split-KV: blocks stay with their holder
}

// kvRange is the key blocks [a, b).
type kvRange struct{ a, b int }

// Traffic returns the short-circuit key/value schedule of the plan.
func (p *Plan) Traffic() *Traffic {
	t, _ := p.TrafficContext(context.Background())
	return t
}

// TrafficContext is Traffic that gives up with ctx.Err() when ctx ends
// (checked every 64 query blocks). It walks every planned query row once:
// O(N + key blocks) time.
func (p *Plan) TrafficContext(ctx context.Context) (*Traffic, error) {
	t := p.newTraffic()
	if t.split {
		return t, nil
	}
	ev := mask.New(&p.Request.Mask, p.N, p.Nk)
	for x := range p.Ranks {
		cur := ev.Cursor()
		var rs []kvRange
		g := p.Group(x)
		qoff, koff := g*p.QBlockCount, g*p.KBlockCount
		for n, qu := range p.Ranks[x].QBlocks {
			qi := qu - qoff
			if n%64 == 63 {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
			}
			q0, rows := p.QSpan(qi)
			for i := q0; i < q0+rows; i++ {
				lo, hi := cur.Row(i)
				if hi <= lo {
					continue
				}
				// The row sees key blocks lo/Block .. (hi-1)/Block; both
				// ends are non-decreasing in i, so ranges merge in order.
				a, b := koff+lo/p.Block, koff+(hi-1)/p.Block+1
				if k := len(rs) - 1; k >= 0 && a <= rs[k].b {
					rs[k].b = max(rs[k].b, b)
					rs[k].a = min(rs[k].a, a)
					continue
				}
				rs = append(rs, kvRange{a, b})
			}
		}
		t.need[x] = normalize(rs)
	}
	return t, nil
}

// normalize sorts and merges ranges (a rank's query blocks are ascending,
// so they already are, but a hand-made plan may list them in any order).
func normalize(rs []kvRange) []kvRange {
	if sort.SliceIsSorted(rs, func(i, j int) bool { return rs[i].a < rs[j].a }) {
		ok := true
		for i := 1; i < len(rs); i++ {
			if rs[i].a <= rs[i-1].b {
				ok = false
				break
			}
		}
		if ok {
			return rs
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].a < rs[j].a })
	out := rs[:0]
	for _, r := range rs {
		if k := len(out) - 1; k >= 0 && r.a <= out[k].b {
			out[k].b = max(out[k].b, r.b)
			continue
		}
		out = append(out, r)
	}
	return out
}

// FullRing returns the schedule of the ring without short-circuits: every
// rank receives every key/value block from its predecessor and forwards it
// to its successor (except to the block's holder). Split-KV plans move no
// key/value block either way.
func (p *Plan) FullRing() *Traffic {
	t := p.newTraffic()
	if !t.split {
		for x := range t.need {
			if p.KBlockCount > 0 {
				g := p.Group(x)
				t.need[x] = []kvRange{{g * p.KBlockCount, (g + 1) * p.KBlockCount}}
			}
		}
	}
	return t
}

func (p *Plan) newTraffic() *Traffic {
	t := &Traffic{plan: p, w: p.GroupRanks(), ranks: len(p.Ranks), holder: make([]int32, p.KVUnits()),
		need: make([][]kvRange, len(p.Ranks)), split: p.Strategy == SplitKV}
	for j := range t.holder {
		t.holder[j] = -1
	}
	for h := range p.Ranks {
		for _, j := range p.Ranks[h].KVBlocks {
			if j >= 0 && j < len(t.holder) {
				t.holder[j] = int32(h)
			}
		}
	}
	return t
}

// Holder returns the rank key block j is dealt to (-1 when out of range).
func (t *Traffic) Holder(j int) int {
	if j < 0 || j >= len(t.holder) {
		return -1
	}
	return int(t.holder[j])
}

func (t *Traffic) rankOK(x int) bool { return x >= 0 && x < t.ranks }

// around returns the rank d places after rank x in x's ring (d may be
// negative).
func (t *Traffic) around(x, d int) int {
	base := x / t.w * t.w
	return base + ((x-base+d)%t.w+t.w)%t.w
}

// Needs reports whether rank folds key block j: some query block it owns
// sees a key of j (split-KV: j is in the rank's range).
func (t *Traffic) Needs(rank, j int) bool {
	if !t.rankOK(rank) || t.Holder(j) < 0 {
		return false
	}
	if t.split {
		return t.Holder(j) == rank
	}
	rs := t.need[rank]
	i := sort.Search(len(rs), func(i int) bool { return rs[i].b > j })
	return i < len(rs) && rs[i].a <= j
}

// Step returns the ring step at which rank folds (or would fold) key
// block j: (rank - holder) mod W; -1 when either is out of range.
func (t *Traffic) Step(rank, j int) int {
	h := t.Holder(j)
	if !t.rankOK(rank) || h < 0 || rank/t.w != h/t.w {
		return -1
	}
	return ((rank-h)%t.w + t.w) % t.w
}

// Next returns the rank that rank sends key block j to: the first rank
// after it in ring order, before the block's holder comes round again,
// that needs j; -1 when there is none, or when rank neither holds nor
// needs j (it never has the block).
func (t *Traffic) Next(rank, j int) int {
	h := t.Holder(j)
	if t.split || !t.rankOK(rank) || h < 0 || (rank != h && !t.Needs(rank, j)) {
		return -1
	}
	for d := 1; d < t.w; d++ {
		x := t.around(rank, d)
		if x == h {
			return -1
		}
		if t.Needs(x, j) {
			return x
		}
	}
	return -1
}

// From returns the rank that sends key block j to rank: the last rank
// before it in ring order, after the block's holder, that needs j, else the
// holder; -1 when rank does not receive j (it holds it or does not need it).
func (t *Traffic) From(rank, j int) int {
	h := t.Holder(j)
	if t.split || h < 0 || rank == h || !t.Needs(rank, j) {
		return -1
	}
	for d := 1; d < t.w; d++ {
		x := t.around(rank, -d)
		if x == h || t.Needs(x, j) {
			return x
		}
	}
	return h
}

// SendStep returns the step during which rank sends key block j to
// Next(rank, j): the step before the receiver folds it; -1 when rank does
// not send j.
func (t *Traffic) SendStep(rank, j int) int {
	n := t.Next(rank, j)
	if n < 0 {
		return -1
	}
	return t.Step(n, j) - 1
}

// Loads reports whether rank fetches key block j from the store at step 0:
// it holds j and folds it or sends it on.
func (t *Traffic) Loads(rank, j int) bool {
	return t.Holder(j) == rank && (t.Needs(rank, j) || t.Next(rank, j) >= 0)
}

// Fold returns the key blocks rank folds at step: those of rank
// (rank - step) mod W that it needs, in the plan's order (nil out of range).
func (t *Traffic) Fold(rank, step int) []int {
	if !t.rankOK(rank) || step < 0 || step >= t.plan.Steps {
		return nil
	}
	var out []int
	for _, j := range t.plan.HeldKV(rank, step) {
		if t.Needs(rank, j) {
			out = append(out, j)
		}
	}
	return out
}

// Frames returns the number of key/value frames the schedule sends.
func (t *Traffic) Frames() int {
	n := 0
	for j := range t.holder {
		for x := range t.ranks {
			if t.Needs(x, j) && int(t.holder[j]) != x {
				n++
			}
		}
	}
	return n
}

// Bytes returns the key/value bytes the schedule sends over all ranks:
// each block's Plan.KVBytes once per rank that needs it other than its
// holder. It runs in O(ranges + key blocks·log ranges).
func (t *Traffic) Bytes() int64 {
	if t.split {
		return 0
	}
	p := t.plan
	var total int64
	for x := range t.need {
		for _, r := range t.need[x] {
			total += p.kvBytesRange(r.a, r.b)
		}
		for _, j := range p.Ranks[x].KVBlocks {
			if t.Needs(x, j) {
				total -= p.kvBytes(j)
			}
		}
	}
	return total
}

// ReceivedBytes returns the key/value bytes rank receives: the blocks it
// needs but does not hold.
func (t *Traffic) ReceivedBytes(rank int) int64 {
	if t.split || !t.rankOK(rank) {
		return 0
	}
	p := t.plan
	var total int64
	for _, r := range t.need[rank] {
		total += p.kvBytesRange(r.a, r.b)
	}
	for _, j := range p.Ranks[rank].KVBlocks {
		if t.Needs(rank, j) {
			total -= p.kvBytes(j)
		}
	}
	return total
}

// SentBytes returns the key/value bytes rank sends (O(key blocks·W·log
// ranges)).
func (t *Traffic) SentBytes(rank int) int64 {
	if t.split || !t.rankOK(rank) {
		return 0
	}
	var total int64
	for j := range t.holder {
		if t.Next(rank, j) >= 0 {
			total += t.plan.kvBytes(j)
		}
	}
	return total
}

// GradBytes returns the dK/dV accumulator bytes of the backward pass on
// this schedule: each block's accumulator (Plan.KVBytes, the size of the
// block) goes from each rank that needs it to the next on its route, then
// from the last one home to the holder. The backward's key/value blocks
// move Bytes() as in the forward. O(key blocks·W·log ranges).
func (t *Traffic) GradBytes() int64 {
	if t.split {
		return 0
	}
	var total int64
	for j := range t.holder {
		h := int(t.holder[j])
		hops, last := 0, -1
		for d := range t.w {
			if x := t.around(h, d); t.Needs(x, j) {
				if last >= 0 {
					hops++
				}
				last = x
			}
		}
		if last >= 0 && last != h {
			hops++
		}
		total += int64(hops) * t.plan.kvBytes(j)
	}
	return total
}

// kvBytesRange is the sum of kvBytes(j) over the units j in [a, b) of one
// head group: every block but the group's last has Block rows.
func (p *Plan) kvBytesRange(a, b int) int64 {
	if b <= a {
		return 0
	}
	full := p.kvBytes(0)
	end := (a/max(1, p.KBlockCount) + 1) * p.KBlockCount // the group's last unit + 1
	if b < end {
		return int64(b-a) * full
	}
	return int64(b-1-a)*full + p.kvBytes(end-1)
}

// BytesMoved returns the bytes all ranks send over the plan: for ring
// strategies the key/value frames of the short-circuit schedule
// (Traffic().Bytes()), for split-KV the partials sent up the reduction
// tree (the sum of Rank.Bytes).
func (p *Plan) BytesMoved() int64 {
	if p.Strategy == SplitKV {
		return p.RingBytes()
	}
	return p.Traffic().Bytes()
}

// RingBytes returns the sum of Rank.Bytes: what the plan moves when every
// key/value block visits every rank (FullRing().Bytes() for ring
// strategies), or the split-KV partials.
func (p *Plan) RingBytes() int64 {
	var total int64
	for _, r := range p.Ranks {
		total += r.Bytes
	}
	return total
}
