package shard

import (
	"context"
	"fmt"
	"math"
	"slices"
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Validate reports the first field of r that is out of range, as a
// *FieldError naming it and the expected value. It checks the rules every
// request must meet, with only the hard bounds every count must meet for
// the planner's arithmetic to stay exact; Limits.Check applies the same
// rules with a job's limits.
func (r *Request) Validate() error {
	return r.check(&unlimited, Tensors{})
}

func (r *Request) block() int {
	if r.Block == 0 {
		return DefaultBlock
	}
	return r.Block
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// normalized returns a copy of r with defaults filled in and slices copied.
func (r *Request) normalized() Request {
	n := *r
	n.Block = r.block()
	if n.ElemBytes == 0 {
		n.ElemBytes = 4
	}
	if r.Weights == nil {
		if n.GFLOPS == 0 {
			n.GFLOPS = DefaultGFLOPS
		}
		n.Weights = make([]float64, r.Ranks)
		for i := range n.Weights {
			n.Weights[i] = 1
		}
	} else {
		n.Weights = slices.Clone(r.Weights)
	}
	if r.QBlocks != nil {
		n.QBlocks = slices.Sorted(slices.Values(r.QBlocks))
	}
	n.Mask.SeqLens = slices.Clone(r.Mask.SeqLens)
	n.Mask.SeqLensK = slices.Clone(r.Mask.SeqLensK)
	return n
}

// NewPlan validates req and deals its blocks to req.Ranks ranks.
//
// Ring strategies (contiguous, zigzag, striped) give every planned query
// block one owner and deal every key/value block to one rank; the ring then
// runs W steps so that every rank folds every key/value block into its query
// blocks. The query blocks a rank owns are proportional to its weight; the
// key/value blocks are dealt by the same rule over all key blocks (so for
// self-attention a rank holds the keys of its own queries).
//
// SplitKV gives every rank all planned query blocks and one contiguous range
// of key/value blocks, cut so that the visible FLOPs of each range are
// proportional to the rank's weight; partial results are reduced up a
// binary tree to rank 0.
//
// Auto (the empty Strategy) picks:
//   - contiguous for one rank;
//   - splitkv when there are fewer planned query blocks than ranks, or the
//     keys are at least 4× longer than the queries (decoding, short prompts
//     over long contexts): the ring would idle ranks or move far more bytes
//     than the partials;
//   - otherwise the ring strategy with the lowest Imbalance, preferring
//     contiguous, then zigzag, then striped unless the later one is more
//     than 2 % better (contiguous keeps sliding windows local; zigzag
//     balances causal masks; striped balances packed documents).
func NewPlan(req Request) (*Plan, error) {
	return NewPlanContext(context.Background(), req)
}

// NewPlanContext is NewPlan that gives up with ctx.Err() when ctx ends; it
// checks ctx between phases and every few query blocks, so a caller can
// bound the planning time. Planning runs in O(N + W·(blocks) + W log W)
// time and O(blocks + W) memory (blocks = query plus key blocks).
func NewPlanContext(ctx context.Context, req Request) (*Plan, error) {
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r := req.normalized()
	var out *Plan
	var err error
	switch g := r.HeadGroups; {
	case r.Strategy == Heads:
		if g == 0 {
			g = maxGroups(r.Hkv, r.Ranks)
		}
		out, err = groupPlan(ctx, r, g, Heads)
	case g > 1:
		out, err = groupPlan(ctx, r, g, r.Strategy)
	case r.Strategy == Auto && g == 0 && r.QBlocks == nil:
		out, err = autoPlan(ctx, r)
	default:
		r.HeadGroups = 0
		var c *costs
		if c, err = newCosts(ctx, r); err == nil {
			if r.Strategy == Auto {
				out = c.auto()
			} else {
				out = c.build(r.Strategy)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// newCosts sweeps the mask for the normalized request r (without head
// groups) and returns what the strategies need to deal it.
func newCosts(ctx context.Context, r Request) (*costs, error) {
	p := &Plan{
		N: r.N, Nk: r.Nk, Block: r.Block,
		QBlockCount: ceilDiv(r.N, r.Block),
		KBlockCount: ceilDiv(r.Nk, r.Block),
		Request:     r,
	}
	p.Planned = slices.Clone(plannedOf(&r))
	// Visible pairs per planned query block (row totals) and per key block
	// (column totals over the planned query blocks), in one sweep.
	me := newMaskEval(&r.Mask, r.N, r.Nk)
	rowPairs, colPairs, err := me.sweep(ctx, p, p.Planned)
	if err != nil {
		return nil, err
	}
	return &costs{ctx: ctx, plan: p, rowPairs: rowPairs, colPairs: colPairs}, nil
}

// with returns the costs of request r, which plans the same blocks of the
// same sequence (another head group): the pair counts are shared.
func (c *costs) with(r Request) *costs {
	p := *c.plan
	p.Request = r
	p.Planned = slices.Clone(c.plan.Planned)
	return &costs{ctx: c.ctx, plan: &p, rowPairs: c.rowPairs, colPairs: c.colPairs}
}

// costs carries what the strategies need to price a plan.
type costs struct {
	ctx      context.Context
	plan     *Plan
	rowPairs []int64 // by query block (zero for blocks not planned)
	colPairs []int64 // by key block
}

// auto picks a plan without head groups: contiguous for one rank, splitkv
// for few query blocks or long keys, else the ring strategy the cost model
// prefers (bestRing).
func (c *costs) auto() *Plan {
	p, r := c.plan, &c.plan.Request
	w := r.Ranks
	if w == 1 {
		return c.build(Contiguous)
	}
	if len(p.Planned) < w || 4*r.N <= r.Nk {
		return c.build(SplitKV)
	}
	return c.bestRing()
}

// bestRing returns the ring strategy with the lowest predicted time
// (Plan.Predict: compute at the ranks' speeds and the short-circuit
// schedule's bytes over the link), preferring contiguous, then zigzag,
// then striped unless a later one is more than 2 % faster, or within 2 %
// and moving fewer bytes (contiguous keeps sliding windows local; zigzag
// balances causal masks; striped balances packed documents).
func (c *costs) bestRing() *Plan {
	best := c.build(Contiguous)
	bp := best.predict(c.ctx)
	for _, s := range []Strategy{Zigzag, Striped} {
		if c.ctx.Err() != nil {
			return best // NewPlanContext returns ctx.Err()
		}
		cand := c.build(s)
		if cp := cand.predict(c.ctx); cp.better(bp) {
			best, bp = cand, cp
		}
	}
	return best
}

// build makes a copy of the base plan dealt by strategy s.
func (c *costs) build(s Strategy) *Plan {
	base := c.plan
	p := *base
	p.Strategy = s
	p.Request.Strategy = s
	p.Planned = slices.Clone(base.Planned)
	req := &p.Request
	w := req.Ranks
	p.Ranks = make([]Rank, w)
	allK := make([]int, p.KBlockCount)
	for j := range allK {
		allK[j] = j
	}
	pairFLOPs := 4 * float64(req.B) * float64(req.Hq) * float64(req.D)

	if s == SplitKV {
		p.Steps = 1
		ranges := cutByCost(c.colPairs, req.Weights)
		for r := range p.Ranks {
			p.Ranks[r].QBlocks = slices.Clone(p.Planned)
			p.Ranks[r].KVBlocks = ranges[r]
			var pairs int64
			for _, j := range ranges[r] {
				pairs += c.colPairs[j]
			}
			p.Ranks[r].Cost = float64(pairs) * pairFLOPs
		}
		p.Reduce = reduction(w)
		rows := 0
		for _, qi := range p.Planned {
			_, n := p.QSpan(qi)
			rows += n
		}
		partial := int64(req.B) * int64(req.Hq) * int64(rows) * int64(req.D+1) * 4
		for _, st := range p.Reduce {
			p.Ranks[st.From].Bytes += partial
		}
	} else {
		p.Steps = w
		deal := dealers[s]
		qs := deal(p.Planned, req.Weights)
		ks := deal(allK, req.Weights)
		for r := range p.Ranks {
			p.Ranks[r].QBlocks = qs[r]
			p.Ranks[r].KVBlocks = ks[r]
			var pairs int64
			for _, qi := range qs[r] {
				pairs += c.rowPairs[qi]
			}
			p.Ranks[r].Cost = float64(pairs) * pairFLOPs
		}
		// Over steps 0..W-2 rank r sends what ranks r, r-1, ..., r-W+2
		// started with: every rank's key/value blocks but those of r+1.
		held := make([]int64, w)
		var total int64
		for r := range p.Ranks {
			for _, j := range p.Ranks[r].KVBlocks {
				held[r] += p.kvBytes(j)
			}
			total += held[r]
		}
		for r := range p.Ranks {
			p.Ranks[r].Bytes = total - held[(r+1)%w]
		}
	}
	p.Imbalance = imbalance(p.Ranks, req.Weights)
	return &p
}

// kvBytes is the wire size of key/value unit j: K and V of its block over
// its group's heads.
func (p *Plan) kvBytes(j int) int64 {
	_, b := p.KVUnit(j)
	_, n := p.KSpan(b)
	r := &p.Request
	return 2 * int64(r.B) * int64(r.Hkv/p.Groups()) * int64(n) * int64(r.D) * int64(r.ElemBytes)
}

// imbalance is max_r(cost_r/w_r) / (Σcost/Σw); 1 when there is no work.
func imbalance(ranks []Rank, w []float64) float64 {
	var total, wsum, worst float64
	for r, rk := range ranks {
		total += rk.Cost
		wsum += w[r]
		worst = max(worst, rk.Cost/w[r])
	}
	if total == 0 {
		return 1
	}
	return worst / (total / wsum)
}

// reduction is the binary-tree schedule for w ranks: at level l, every rank
// r with r mod 2^(l+1) == 2^l sends to r - 2^l.
func reduction(w int) []ReduceStep {
	var steps []ReduceStep
	for l := 0; 1<<l < w; l++ {
		for r := 1 << l; r < w; r += 1 << (l + 1) {
			steps = append(steps, ReduceStep{Level: l, From: r, To: r - 1<<l})
		}
	}
	return steps
}

var dealers = map[Strategy]func(list []int, w []float64) [][]int{
	Contiguous: dealContiguous,
	Zigzag:     dealZigzag,
	Striped:    dealStriped,
}

// apportion splits n items into len(w) counts proportional to w (largest
// remainder; ties go to the lower rank).
func apportion(n int, w []float64) []int {
	var sum float64
	for _, x := range w {
		sum += x
	}
	counts := make([]int, len(w))
	frac := make([]float64, len(w))
	left := n
	for r, x := range w {
		q := float64(n) * x / sum
		counts[r] = int(math.Floor(q))
		frac[r] = q - float64(counts[r])
		left -= counts[r]
	}
	order := make([]int, len(w))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case frac[a] > frac[b]:
			return -1
		case frac[a] < frac[b]:
			return 1
		}
		return 0
	})
	for i := 0; left > 0; i++ {
		counts[order[i%len(order)]]++
		left--
	}
	return counts
}

// dealContiguous gives rank r one run of consecutive list entries, of a
// length proportional to its weight.
func dealContiguous(list []int, w []float64) [][]int {
	out := make([][]int, len(w))
	at := 0
	for r, c := range apportion(len(list), w) {
		out[r] = slices.Clone(list[at : at+c])
		at += c
	}
	return out
}

// dealZigzag cuts the list into 2W chunks laid out as ranks 0, 1, ..., W-1,
// W-1, ..., 1, 0; rank r's two chunks together have a length proportional
// to its weight, the first one taking the odd entry. Under a causal mask a
// chunk's cost grows with its position, so the two mirrored chunks of a rank
// cost about as much as any other rank's pair.
func dealZigzag(list []int, w []float64) [][]int {
	counts := apportion(len(list), w)
	out := make([][]int, len(w))
	at := 0
	for r, c := range counts {
		a := (c + 1) / 2
		out[r] = slices.Clone(list[at : at+a])
		at += a
	}
	for r := len(w) - 1; r >= 0; r-- {
		b := counts[r] - (counts[r]+1)/2
		out[r] = append(out[r], list[at:at+b]...)
		at += b
	}
	return out
}

// dealStriped deals the list round-robin, weighted (smooth weighted
// round-robin: each entry goes to the rank with the largest credit).
func dealStriped(list []int, w []float64) [][]int {
	out := make([][]int, len(w))
	var sum float64
	for _, x := range w {
		sum += x
	}
	credit := make([]float64, len(w))
	for _, b := range list {
		best := 0
		for r := range w {
			credit[r] += w[r]
			if credit[r] > credit[best] {
				best = r
			}
		}
		credit[best] -= sum
		out[best] = append(out[best], b)
	}
	return out
}

// cutByCost cuts key blocks 0..len(cost)-1 into len(w) consecutive ranges
// whose costs are proportional to w: range r ends at the block boundary
// closest to the weighted target. Without any cost it cuts by block count.
func cutByCost(cost []int64, w []float64) [][]int {
	var total int64
	for _, c := range cost {
		total += c
	}
	out := make([][]int, len(w))
	if total == 0 {
		all := make([]int, len(cost))
		for j := range all {
			all[j] = j
		}
		return dealContiguous(all, w)
	}
	var wsum float64
	for _, x := range w {
		wsum += x
	}
	var wacc float64
	var acc int64
	j := 0
	for r := range w {
		wacc += w[r]
		target := float64(total) * wacc / wsum
		if r == len(w)-1 {
			target = float64(total)
		}
		for j < len(cost) {
			next := acc + cost[j]
			// Take block j while that brings the cut closer to the target.
			if math.Abs(float64(next)-target) > math.Abs(float64(acc)-target) && r < len(w)-1 {
				break
			}
			acc = next
			out[r] = append(out[r], j)
			j++
		}
	}
	return out
}
