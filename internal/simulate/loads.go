package simulate

import (
	"context"
	"math"

	"github.com/ringattn/ringattn/pkg/shard"
)

// PlanLoads are the per-rank, per-step loads of a plan: what Simulate
// derives from it before the event simulation. Computing them costs
// O(visible block pairs · log Block); one PlanLoads serves any number of
// network configurations with the same kernel model.
type PlanLoads struct {
	plan  *shard.Plan
	cfg   Config // the kernel part it was computed for
	ranks []rankLoad
	flops float64
}

// Loads computes the loads of plan under cfg's kernel model (GFLOPS,
// Cores, tiles) and its key/value schedule (FullRing).
func Loads(ctx context.Context, plan *shard.Plan, cfg Config) (*PlanLoads, error) {
	c, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	if plan == nil || len(plan.Ranks) == 0 {
		return nil, invalid("plan has no ranks")
	}
	if plan.Groups() > 1 || plan.Strategy == shard.Heads {
		return groupLoads(ctx, plan, cfg)
	}
	w := len(plan.Ranks)
	req := &plan.Request
	pf := plan.PairFLOPs()
	perCore := c.GFLOPS * 1e9 / float64(c.Cores)
	holder := make([]int, plan.KBlockCount)
	for h, rk := range plan.Ranks {
		for _, kj := range rk.KVBlocks {
			holder[kj] = h
		}
	}
	m := &req.Mask
	dense := !m.Causal && !m.Windowed && len(m.SeqLens) <= 1 && len(m.SeqLensK) <= 1
	splitKV := plan.Strategy == shard.SplitKV
	pl := &PlanLoads{plan: plan, cfg: c, ranks: make([]rankLoad, w)}
	for r := range pl.ranks {
		pl.ranks[r].steps = make([]stepLoad, plan.Steps)
	}
	// Ring ranks fold their own query blocks; split-KV ranks all fold
	// every planned block, each against its own key range, so one pass
	// over the planned blocks (rank -1) serves them all.
	passes := make([]int, w)
	for r := range passes {
		passes[r] = r
	}
	if splitKV {
		passes = []int{-1}
	}
	for _, r := range passes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		owned := plan.Planned
		if r >= 0 {
			owned = plan.Ranks[r].QBlocks
		}
		// Runs of consecutive owned query blocks: one fold each per step.
		for i := 0; i < len(owned); {
			e := i + 1
			for e < len(owned) && owned[e] == owned[e-1]+1 {
				e++
			}
			rows := 0
			for _, qi := range owned[i:e] {
				_, n := plan.QSpan(qi)
				rows += n
			}
			threads := float64(c.Cores)
			if c.TileRows > 0 {
				units := req.B * req.Hq * ((rows + c.TileRows - 1) / c.TileRows)
				t := min(c.Cores, units)
				threads = float64(units) / math.Ceil(float64(units)/float64(t))
			}
			for _, qi := range owned[i:e] {
				_, qn := plan.QSpan(qi)
				qTiles := 1
				if c.TileRows > 0 {
					qTiles = (qn + c.TileRows - 1) / c.TileRows
				}
				add := func(kj int, pairs int64) {
					target, s := holder[kj], 0
					if !splitKV {
						target, s = r, ((r-holder[kj])%w+w)%w
					}
					_, kn := plan.KSpan(kj)
					full := int64(qn) * int64(kn)
					eff := float64(pairs)
					if pairs < full && c.TileRows > 0 && c.TileCols > 0 {
						// About one partly visible tile per query tile:
						// half of it visible, the rest and the extra cost
						// of masking on top.
						extra := float64(qTiles) * float64(c.TileRows) * float64(c.TileCols) * (c.DiagonalTileCost - 0.5)
						eff = max(eff, min(float64(full)*c.DiagonalTileCost, eff+extra))
					}
					st := &pl.ranks[target].steps[s]
					st.visible += float64(pairs) * pf
					st.flops += eff * pf
					if !math.IsInf(perCore, 1) {
						st.wall += eff * pf / perCore / threads
					}
				}
				if dense {
					for kj := 0; kj < plan.KBlockCount; kj++ {
						_, kn := plan.KSpan(kj)
						add(kj, int64(qn)*int64(kn))
					}
					continue
				}
				bp := plan.BlockPairs(qi)
				first, last := bp.Span()
				for kj := first; kj < last; kj++ {
					if p := bp.Pairs(kj); p > 0 {
						add(kj, p)
					}
				}
			}
			i = e
		}
	}
	for r := range pl.ranks {
		rl := &pl.ranks[r]
		rows := 0
		for _, qi := range plan.Ranks[r].QBlocks {
			_, n := plan.QSpan(qi)
			rows += n
		}
		rl.outBytes = float64(req.B) * float64(req.Hq) * float64(rows) * float64(req.D+1) * 4
		for _, st := range rl.steps {
			pl.flops += st.visible
		}
	}
	if !splitKV {
		if err := pl.route(ctx, c.FullRing); err != nil {
			return nil, err
		}
	}
	return pl, nil
}

// route fills the ranks' sends and expect from the plan's key/value
// schedule (shard.Plan.Traffic: each block goes from its holder to the
// ranks that need it, in ring order, each hop during the step before its
// receiver folds it; FullRing: through every rank).
func (pl *PlanLoads) route(ctx context.Context, full bool) error {
	plan := pl.plan
	w := len(plan.Ranks)
	var tr *shard.Traffic
	if full {
		tr = plan.FullRing()
	} else {
		var err error
		if tr, err = plan.TrafficContext(ctx); err != nil {
			return err
		}
	}
	for r := range pl.ranks {
		pl.ranks[r].sends = make([][]sendGroup, plan.Steps)
		pl.ranks[r].expect = make([]int, plan.Steps)
	}
	for j := 0; j < plan.KBlockCount; j++ {
		if j%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		h := tr.Holder(j)
		from, b := h, plan.KVBytes(j)
		for i := 1; i < w; i++ {
			x := (h + i) % w
			if !tr.Needs(x, j) {
				continue
			}
			// from sends j to x during step i-1; x folds it at step i.
			sends := pl.ranks[from].sends
			g := sends[i-1]
			if n := len(g); n > 0 && g[n-1].to == x {
				g[n-1].bytes += b
			} else {
				sends[i-1] = append(g, sendGroup{to: x, bytes: b})
				pl.ranks[x].expect[i]++
			}
			from = x
		}
	}
	return nil
}

// groupLoads are the loads of a plan with head groups: each group's ranks
// run their group's plan (shard.Plan.GroupPlan) over its heads, and send
// only to each other; a group with nothing planned idles.
func groupLoads(ctx context.Context, plan *shard.Plan, cfg Config) (*PlanLoads, error) {
	c, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	pl := &PlanLoads{plan: plan, cfg: c}
	gr := plan.GroupRanks()
	for g := range plan.Groups() {
		sub := plan.GroupPlan(g)
		if len(sub.Planned) == 0 {
			for range gr {
				pl.ranks = append(pl.ranks, rankLoad{steps: make([]stepLoad, plan.Steps),
					sends: make([][]sendGroup, plan.Steps), expect: make([]int, plan.Steps)})
			}
			continue
		}
		sl, err := Loads(ctx, sub, cfg)
		if err != nil {
			return nil, err
		}
		for _, rl := range sl.ranks {
			for s := range rl.sends {
				for i := range rl.sends[s] {
					rl.sends[s][i].to += g * gr
				}
			}
			if rl.sends == nil {
				rl.sends, rl.expect = make([][]sendGroup, plan.Steps), make([]int, plan.Steps)
			}
			pl.ranks = append(pl.ranks, rl)
		}
		pl.flops += sl.flops
	}
	return pl, nil
}
