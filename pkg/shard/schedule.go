package shard

import (
	"fmt"
	"slices"
	"sort"

	"github.com/ringattn/ringattn/pkg/mask"
)

// QSpan returns the global start and the length of query block i; the last
// block is ragged (no padding).
func (p *Plan) QSpan(i int) (start, n int) {
	start = i * p.Block
	return start, max(0, min(p.Block, p.N-start))
}

// KSpan returns the global start and the length of key/value block j.
func (p *Plan) KSpan(j int) (start, n int) {
	start = j * p.Block
	return start, max(0, min(p.Block, p.Nk-start))
}

// Holder returns the rank whose initial key/value blocks rank holds at ring
// step: (rank - step) mod W, or with head groups the rank step places
// before it in its group's ring of R = W/G (0 for a plan without ranks).
func (p *Plan) Holder(rank, step int) int {
	w := p.GroupRanks()
	if w == 0 {
		return 0
	}
	base := rank / w * w
	return base + ((rank-base-step)%w+w)%w
}

// HeldKV returns the key/value blocks rank folds at ring step (do not
// modify the slice); nil for a plan without ranks.
func (p *Plan) HeldKV(rank, step int) []int {
	if len(p.Ranks) == 0 {
		return nil
	}
	return p.Ranks[p.Holder(rank, step)].KVBlocks
}

// Reduction returns the split-KV reduction schedule, ordered by level (nil
// for ring strategies).
func (p *Plan) Reduction() []ReduceStep { return p.Reduce }

// PairsRow returns the number of (query, key) pairs the mask leaves visible
// between query block qi and every key block. A pair count of 0 means the
// block pair is entirely masked and is skipped. It returns nil when qi is
// not a query block of the plan.
func (p *Plan) PairsRow(qi int) []int64 {
	if qi < 0 || qi >= p.QBlockCount || p.Block < 1 {
		return nil
	}
	me := newMaskEval(&p.Request.Mask, p.N, p.Nk)
	q0, rows := p.QSpan(qi)
	return me.pairsRow(q0, rows, p.Block, p.KBlockCount)
}

// Visible reports whether query block qi sees any key of key block kj
// (false when either is out of range): whether the mask's classification
// of the block pair is not mask.Hidden, exactly when PairsRow(qi)[kj] > 0.
func (p *Plan) Visible(qi, kj int) bool {
	if qi < 0 || qi >= p.QBlockCount || kj < 0 || kj >= p.KBlockCount || p.Block < 1 {
		return false
	}
	return newMaskEval(&p.Request.Mask, p.N, p.Nk).blockClass(p, qi, kj) != mask.Hidden
}

// PairFLOPs is the cost of one visible (query, key) pair over all batches
// and heads: 4·B·Hq·D.
func (p *Plan) PairFLOPs() float64 {
	r := &p.Request
	return 4 * float64(r.B) * float64(r.Hq) * float64(r.D)
}

// Owner returns the rank that writes query block qi's output (rank 0 for
// split-KV), or -1 when qi is not planned.
func (p *Plan) Owner(qi int) int {
	if _, ok := slices.BinarySearch(p.Planned, qi); !ok {
		return -1
	}
	if p.Strategy == SplitKV {
		return 0
	}
	for r := range p.Ranks {
		if slices.Contains(p.Ranks[r].QBlocks, qi) {
			return r
		}
	}
	return -1
}

// KVBytes is the wire size of key/value block (unit) j (K and V of its
// group's heads).
func (p *Plan) KVBytes(j int) int64 { return p.kvBytes(j) }

// Validate checks the plan's structure: every planned query block has
// exactly one owner (all ranks hold all of them in split-KV), every
// key/value block is dealt to exactly one rank, the schedule's lengths are
// consistent, and the reduction tree merges every rank exactly once.
// Errors name the offending field.
func (p *Plan) Validate() error {
	r := &p.Request
	if err := r.Validate(); err != nil {
		return err
	}
	switch {
	case p.Strategy != Contiguous && p.Strategy != Zigzag && p.Strategy != Striped && p.Strategy != SplitKV && p.Strategy != Heads:
		return invalid("Plan.Strategy = %q, expected a concrete strategy", p.Strategy)
	case p.N != r.N || p.Nk != r.Nk:
		return invalid("Plan.N, Plan.Nk = %d, %d, expected the request's %d, %d", p.N, p.Nk, r.N, r.Nk)
	case p.Block != r.block() || p.Block < 1:
		return invalid("Plan.Block = %d, expected %d", p.Block, r.block())
	case p.QBlockCount != ceilDiv(p.N, p.Block):
		return invalid("Plan.QBlockCount = %d, expected %d", p.QBlockCount, ceilDiv(p.N, p.Block))
	case p.KBlockCount != ceilDiv(p.Nk, p.Block):
		return invalid("Plan.KBlockCount = %d, expected %d", p.KBlockCount, ceilDiv(p.Nk, p.Block))
	case len(p.Ranks) != r.Ranks:
		return invalid("Plan.Ranks has %d entries, expected %d", len(p.Ranks), r.Ranks)
	case len(r.Weights) != r.Ranks:
		return invalid("Plan.Request.Weights has %d entries, expected %d", len(r.Weights), r.Ranks)
	}
	w := len(p.Ranks)
	if err := p.validateGroups(); err != nil {
		return err
	}
	for i, b := range p.Planned {
		if b < 0 || b >= p.QUnits() || (i > 0 && b <= p.Planned[i-1]) {
			return invalid("Plan.Planned[%d] = %d, expected ascending blocks in 0..%d", i, b, p.QUnits()-1)
		}
	}
	if p.Strategy == SplitKV {
		if p.Steps != 1 {
			return invalid("Plan.Steps = %d, expected 1 for %s", p.Steps, SplitKV)
		}
		for rk := range p.Ranks {
			if !slices.Equal(p.Ranks[rk].QBlocks, p.Planned) {
				return invalid("Plan.Ranks[%d].QBlocks = %v, expected all planned blocks %v", rk, p.Ranks[rk].QBlocks, p.Planned)
			}
			kv := p.Ranks[rk].KVBlocks
			for i := 1; i < len(kv); i++ {
				if kv[i] != kv[i-1]+1 {
					return invalid("Plan.Ranks[%d].KVBlocks = %v, expected one consecutive range", rk, kv)
				}
			}
		}
		if !slices.Equal(p.Reduce, reduction(w)) {
			return invalid("Plan.Reduce = %v, expected the binary tree %v", p.Reduce, reduction(w))
		}
	} else {
		if want := p.ringSteps(); p.Steps != want {
			return invalid("Plan.Steps = %d, expected %d (the ranks of a ring)", p.Steps, want)
		}
		if p.Reduce != nil {
			return invalid("Plan.Reduce has %d steps, expected none for %s", len(p.Reduce), p.Strategy)
		}
		// Count before allocating: what is tracked is bounded by the
		// entries actually listed, never by a claimed count.
		listed := 0
		for rk := range p.Ranks {
			listed += len(p.Ranks[rk].QBlocks)
		}
		if listed > len(p.Planned) {
			listed = len(p.Planned) + 1 // enough to find the first repeat
		}
		owner := make(map[int]int, listed)
		for rk := range p.Ranks {
			for i, b := range p.Ranks[rk].QBlocks {
				if _, ok := slices.BinarySearch(p.Planned, b); !ok {
					return invalid("Plan.Ranks[%d].QBlocks[%d] = %d, expected a planned block", rk, i, b)
				}
				if o, dup := owner[b]; dup {
					return invalid("Plan.Ranks[%d].QBlocks[%d] = %d, already owned by rank %d", rk, i, b, o)
				}
				if g, _ := p.QUnit(b); g != p.Group(rk) {
					return invalid("Plan.Ranks[%d].QBlocks[%d] = %d is a unit of head group %d, expected group %d", rk, i, b, g, p.Group(rk))
				}
				owner[b] = rk
			}
		}
		if len(owner) != len(p.Planned) {
			for _, b := range p.Planned {
				if _, ok := owner[b]; !ok {
					return invalid("query block %d has no owner in Plan.Ranks", b)
				}
			}
		}
	}
	listed := 0
	for rk := range p.Ranks {
		listed += len(p.Ranks[rk].KVBlocks)
	}
	kvUnits := p.KVUnits()
	if listed > kvUnits {
		listed = kvUnits + 1 // enough to find the first repeat
	}
	held := make(map[int]int, listed)
	for rk := range p.Ranks {
		for i, j := range p.Ranks[rk].KVBlocks {
			if j < 0 || j >= kvUnits {
				return invalid("Plan.Ranks[%d].KVBlocks[%d] = %d, expected 0..%d", rk, i, j, kvUnits-1)
			}
			if o, dup := held[j]; dup {
				return invalid("Plan.Ranks[%d].KVBlocks[%d] = %d, already dealt to rank %d", rk, i, j, o)
			}
			if g, _ := p.KVUnit(j); g != p.Group(rk) {
				return invalid("Plan.Ranks[%d].KVBlocks[%d] = %d is a unit of head group %d, expected group %d", rk, i, j, g, p.Group(rk))
			}
			held[j] = rk
		}
	}
	if len(held) != kvUnits {
		// Some block is missing: the first gap of the sorted dealt blocks
		// (not a scan of the claimed count).
		got := make([]int, 0, len(held))
		for j := range held {
			got = append(got, j)
		}
		slices.Sort(got)
		missing := len(got)
		for i, j := range got {
			if i != j {
				missing = i
				break
			}
		}
		return invalid("key/value block %d is not dealt to any rank in Plan.Ranks", missing)
	}
	return nil
}

// String summarises the plan in one line.
func (p *Plan) String() string {
	heads := ""
	if p.Groups() > 1 {
		heads = fmt.Sprintf(" in %d head groups", p.Groups())
	}
	return fmt.Sprintf("%s plan: N=%d Nk=%d block=%d, %d ranks%s, %d steps, imbalance %.3f",
		p.Strategy, p.N, p.Nk, p.Block, len(p.Ranks), heads, p.Steps, p.Imbalance)
}

// ringSteps is the number of steps a ring plan takes: one per rank of a
// group's ring (1 for Heads).
func (p *Plan) ringSteps() int {
	if p.Strategy == Heads {
		return 1
	}
	return p.GroupRanks()
}

// validateGroups checks HeadGroups against the request and the ranks.
func (p *Plan) validateGroups() error {
	r := &p.Request
	g, w := p.Groups(), len(p.Ranks)
	switch {
	case p.HeadGroups < 0:
		return invalid("Plan.HeadGroups = %d, expected >= 0", p.HeadGroups)
	case max(1, r.HeadGroups) != g:
		return invalid("Plan.HeadGroups = %d, expected the request's %d", p.HeadGroups, r.HeadGroups)
	case r.Hkv%g != 0:
		return invalid("Plan.HeadGroups = %d does not divide Hkv = %d", g, r.Hkv)
	case w%g != 0:
		return invalid("Plan.HeadGroups = %d does not divide the %d ranks", g, w)
	case g > 1 && p.Strategy == SplitKV:
		return invalid("Plan.HeadGroups = %d, expected 1 for %s", g, SplitKV)
	case p.Strategy == Heads && w != g:
		return invalid("Plan.Ranks has %d entries, expected one per head group (%d) for %s", w, g, Heads)
	}
	return nil
}

// BlockPairs counts the visible (query, key) pairs of one query block with
// any key block, as PairsRow does, but without a row of every key block:
// it keeps the block's row bounds (O(Block) memory) and answers each key
// block in O(log Block). A rank holding many query blocks of a plan with
// many key blocks needs it: PairsRow for each would take O(blocks²).
type BlockPairs struct {
	block, nk, kBlocks int
	los, his           []int32 // each row's visible keys [lo, hi), both non-decreasing
	loSum, hiSum       []int64 // their prefix sums
}

// BlockPairs returns the pair counter of query block qi, or nil when qi is
// not a query block of the plan.
func (p *Plan) BlockPairs(qi int) *BlockPairs {
	if qi < 0 || qi >= p.QBlockCount || p.Block < 1 {
		return nil
	}
	me := newMaskEval(&p.Request.Mask, p.N, p.Nk)
	q0, rows := p.QSpan(qi)
	bp := &BlockPairs{block: p.Block, nk: p.Nk, kBlocks: p.KBlockCount,
		los: make([]int32, rows), his: make([]int32, rows), loSum: make([]int64, rows+1), hiSum: make([]int64, rows+1)}
	for r := range rows {
		lo, hi := me.rowRange(q0 + r)
		bp.los[r], bp.his[r] = int32(lo), int32(hi)
		bp.loSum[r+1] = bp.loSum[r] + int64(lo)
		bp.hiSum[r+1] = bp.hiSum[r] + int64(hi)
	}
	return bp
}

// Span returns the key blocks [first, last) outside which the query block
// sees no key (first == last when it sees none).
func (b *BlockPairs) Span() (first, last int) {
	if len(b.los) == 0 {
		return 0, 0
	}
	first = int(b.los[0]) / b.block
	last = min((int(b.his[len(b.his)-1])+b.block-1)/b.block, b.kBlocks)
	return first, max(first, last)
}

// Pairs returns the number of visible pairs between the query block and
// key block kj (0 for kj out of range): PairsRow(qi)[kj].
func (b *BlockPairs) Pairs(kj int) int64 {
	if kj < 0 || kj >= b.kBlocks || len(b.los) == 0 {
		return 0
	}
	ks, ke := kj*b.block, min((kj+1)*b.block, b.nk)
	return clampSum32(b.his, b.hiSum, ks, ke) - clampSum32(b.los, b.loSum, ks, ke)
}

// clampSum32 is clampSum over int32 bounds.
func clampSum32(x []int32, ps []int64, a, b int) int64 {
	i := sort.Search(len(x), func(i int) bool { return int(x[i]) >= a }) // x[:i] < a
	e := sort.Search(len(x), func(i int) bool { return int(x[i]) > b })  // x[e:] > b
	return int64(i)*int64(a) + (ps[e] - ps[i]) + int64(len(x)-e)*int64(b)
}
