package shard

import (
	"context"
	"slices"
)

// Head groups. A plan with HeadGroups G > 1 cuts the Hkv key/value heads
// into G groups of Hkv/G consecutive heads; group g also takes the query
// heads that read them (GQA groups stay whole: query head h reads key/value
// head h/(Hq/Hkv), so group g owns query heads [g·Hq/G, (g+1)·Hq/G)). The W
// ranks are laid out group by group, R = W/G each: rank r belongs to group
// r/R and is rank r mod R of that group's ring. Each group is an ordinary
// sequence plan of R ranks over its heads (GroupPlan), and its ring passes
// only its own heads' key/value blocks, R steps, among its own ranks: the
// bytes moved shrink with G, down to none for pure head parallelism (R = 1,
// strategy Heads).
//
// The plan's lists hold units: query unit g·QBlockCount+b is block b of
// group g's heads, key/value unit g·KBlockCount+j block j of them. A
// re-plan lists the unfinished query units in Request.QBlocks, with the
// same HeadGroups.

// Groups returns the number of head groups G (1 when HeadGroups is 0).
func (p *Plan) Groups() int { return max(1, p.HeadGroups) }

// GroupRanks returns the number of ranks R of each head group's ring.
func (p *Plan) GroupRanks() int {
	if len(p.Ranks) == 0 {
		return 0
	}
	return len(p.Ranks) / p.Groups()
}

// Group returns the head group of rank (0 for a plan without head groups).
func (p *Plan) Group(rank int) int {
	if r := p.GroupRanks(); r > 0 {
		return rank / r
	}
	return 0
}

// KVHeads returns the key/value heads [lo, hi) of head group g.
func (p *Plan) KVHeads(g int) (lo, hi int) {
	n := p.Request.Hkv / p.Groups()
	return g * n, (g + 1) * n
}

// QHeads returns the query heads [lo, hi) of head group g.
func (p *Plan) QHeads(g int) (lo, hi int) {
	n := p.Request.Hq / p.Groups()
	return g * n, (g + 1) * n
}

// QUnit returns the head group and query block of query unit u.
func (p *Plan) QUnit(u int) (g, b int) {
	if p.QBlockCount == 0 {
		return 0, u
	}
	return u / p.QBlockCount, u % p.QBlockCount
}

// KVUnit returns the head group and key/value block of key/value unit u.
func (p *Plan) KVUnit(u int) (g, j int) {
	if p.KBlockCount == 0 {
		return 0, u
	}
	return u / p.KBlockCount, u % p.KBlockCount
}

// QUnits returns the number of query units, G·QBlockCount.
func (p *Plan) QUnits() int { return p.Groups() * p.QBlockCount }

// KVUnits returns the number of key/value units, G·KBlockCount.
func (p *Plan) KVUnits() int { return p.Groups() * p.KBlockCount }

// GroupPlan returns head group g's share of the plan as an ordinary plan
// without head groups: its R ranks (the plan's ranks g·R .. g·R+R-1,
// renumbered from 0), block indices instead of units, and a request over
// its Hq/G and Hkv/G heads. Rank r of the group plan is rank g·R+r of p. A
// group none of whose query units is planned (a re-plan) has no planned
// blocks; its ranks do nothing. For a plan without head groups it returns
// p itself.
func (p *Plan) GroupPlan(g int) *Plan {
	if p.Groups() == 1 && p.Strategy != Heads {
		return p
	}
	gr := p.GroupRanks()
	sub := *p
	sub.HeadGroups = 0
	sub.Strategy = p.Strategy
	if p.Strategy == Heads {
		sub.Strategy = Contiguous
	}
	sub.Ranks = make([]Rank, gr)
	for r := range sub.Ranks {
		src := p.Ranks[g*gr+r]
		rk := Rank{Cost: src.Cost, Bytes: src.Bytes}
		for _, u := range src.QBlocks {
			rk.QBlocks = append(rk.QBlocks, u-g*p.QBlockCount)
		}
		for _, u := range src.KVBlocks {
			rk.KVBlocks = append(rk.KVBlocks, u-g*p.KBlockCount)
		}
		sub.Ranks[r] = rk
	}
	sub.Planned = nil
	for _, u := range p.Planned {
		if ug, b := p.QUnit(u); ug == g {
			sub.Planned = append(sub.Planned, b)
		}
	}
	req := p.Request
	req.Hq, req.Hkv = p.Request.Hq/p.Groups(), p.Request.Hkv/p.Groups()
	req.Ranks, req.HeadGroups, req.Strategy = gr, 0, sub.Strategy
	if len(req.Weights) == len(p.Ranks) {
		req.Weights = slices.Clone(p.Request.Weights[g*gr : (g+1)*gr])
	}
	req.QBlocks = nil
	if len(sub.Planned) < p.QBlockCount {
		req.QBlocks = slices.Clone(sub.Planned)
	}
	sub.Request = req
	sub.Imbalance = imbalance(sub.Ranks, req.Weights)
	return &sub
}

// checkHeadGroups checks Request.HeadGroups against the heads, ranks and
// strategy.
func (r *Request) checkHeadGroups() error {
	g := r.HeadGroups
	switch {
	case g < 0 || g > r.Hkv:
		return fieldErr("head_groups", "%d: want 0 (auto) or 1..hkv = %d", g, r.Hkv)
	case g > 0 && r.Hkv%g != 0:
		return fieldErr("head_groups", "%d does not divide hkv = %d: want a divisor, so every group holds whole GQA groups", g, r.Hkv)
	case g > 1 && r.Strategy == SplitKV:
		return fieldErr("head_groups", "%d with strategy %s: want 1 (split-KV plans keep all heads)", g, SplitKV)
	case g > r.Ranks:
		return fieldErr("head_groups", "%d: want at most ranks = %d", g, r.Ranks)
	case g > 1 && r.Strategy != Heads && r.Strategy != Auto && r.Ranks%g != 0:
		return fieldErr("head_groups", "%d does not divide ranks = %d: want W/G ranks per group", g, r.Ranks)
	}
	return nil
}

// maxGroups is the largest divisor of hkv that is at most w.
func maxGroups(hkv, w int) int {
	for g := min(hkv, w); g > 1; g-- {
		if hkv%g == 0 {
			return g
		}
	}
	return 1
}

// groupPlan plans r (normalized, Ranks = W) with g head groups of W/g ranks
// each (the ranks past g·(W/g) are not used), every group dealt by
// strategy s (Auto: the ring strategy the cost model prefers for the first
// planned group; Heads: one rank per group, W = g).
func groupPlan(ctx context.Context, r Request, g int, s Strategy) (*Plan, error) {
	gr := r.Ranks / g
	if s == Heads {
		gr = 1
	}
	nq := ceilDiv(r.N, r.Block)
	var cache *costs // pairs of the last group's planned blocks
	var groups []*Plan
	var chosen Strategy // the ring strategy Auto picked
	for gi := range g {
		sub := r
		sub.Hq, sub.Hkv, sub.Ranks, sub.HeadGroups = r.Hq/g, r.Hkv/g, gr, 0
		sub.Weights = slices.Clone(r.Weights[gi*gr : (gi+1)*gr])
		sub.QBlocks = nil
		if r.QBlocks != nil {
			sub.QBlocks = []int{}
			for _, u := range r.QBlocks {
				if u/nq == gi {
					sub.QBlocks = append(sub.QBlocks, u%nq)
				}
			}
		}
		if sub.QBlocks != nil && len(sub.QBlocks) == 0 {
			groups = append(groups, idleGroup(sub))
			continue
		}
		var c *costs
		if cache != nil && slices.Equal(cache.plan.Planned, plannedOf(&sub)) {
			c = cache.with(sub)
		} else {
			var err error
			if c, err = newCosts(ctx, sub); err != nil {
				return nil, err
			}
			cache = c
		}
		inner := s
		switch {
		case s == Heads || gr == 1:
			inner = Contiguous
		case s == Auto && chosen != Auto:
			inner = chosen
		case s == Auto:
			inner = c.bestRing().Strategy
			chosen = inner
		}
		groups = append(groups, c.build(inner))
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	return joinGroups(r, groups, gr, s == Heads || gr == 1), nil
}

// plannedOf is the ascending query blocks a normalized request plans.
func plannedOf(r *Request) []int {
	if r.QBlocks != nil {
		return r.QBlocks
	}
	out := make([]int, ceilDiv(r.N, r.Block))
	for i := range out {
		out[i] = i
	}
	return out
}

// idleGroup is the plan of a group without planned query blocks: its ranks
// own nothing and hold the key/value blocks contiguously (dealt, as every
// key/value unit must be, but never sent).
func idleGroup(r Request) *Plan {
	p := &Plan{Strategy: Contiguous, N: r.N, Nk: r.Nk, Block: r.Block,
		QBlockCount: ceilDiv(r.N, r.Block), KBlockCount: ceilDiv(r.Nk, r.Block), Steps: r.Ranks, Request: r}
	all := make([]int, p.KBlockCount)
	for j := range all {
		all[j] = j
	}
	p.Ranks = make([]Rank, r.Ranks)
	held := make([]int64, r.Ranks)
	var total int64
	for i, kv := range dealContiguous(all, r.Weights) {
		p.Ranks[i].KVBlocks = kv
		for _, j := range kv {
			held[i] += p.kvBytes(j)
		}
		total += held[i]
	}
	for i := range p.Ranks {
		p.Ranks[i].Bytes = total - held[(i+1)%r.Ranks] // the full ring's, as ring plans report
	}
	return p
}

// joinGroups lays the group plans out as one plan of units.
func joinGroups(r Request, groups []*Plan, gr int, heads bool) *Plan {
	g := len(groups)
	first := groups[0]
	p := &Plan{Strategy: first.Strategy, N: r.N, Nk: r.Nk, Block: r.Block,
		QBlockCount: first.QBlockCount, KBlockCount: first.KBlockCount, HeadGroups: g, Steps: gr}
	for _, sp := range groups {
		if sp.Strategy != Contiguous || len(sp.Planned) > 0 {
			p.Strategy = sp.Strategy
			break
		}
	}
	if heads {
		p.Strategy, p.Steps = Heads, 1
	}
	r.Ranks, r.HeadGroups, r.Strategy = g*gr, g, p.Strategy
	r.Weights = slices.Clone(r.Weights[:g*gr])
	for gi, sp := range groups {
		for _, rk := range sp.Ranks {
			out := Rank{Cost: rk.Cost, Bytes: rk.Bytes}
			for _, b := range rk.QBlocks {
				out.QBlocks = append(out.QBlocks, gi*p.QBlockCount+b)
			}
			for _, j := range rk.KVBlocks {
				out.KVBlocks = append(out.KVBlocks, gi*p.KBlockCount+j)
			}
			p.Ranks = append(p.Ranks, out)
		}
		for _, b := range sp.Planned {
			p.Planned = append(p.Planned, gi*p.QBlockCount+b)
		}
	}
	p.Request = r
	p.Imbalance = imbalance(p.Ranks, r.Weights)
	return p
}
