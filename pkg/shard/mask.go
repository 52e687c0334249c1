package shard

import (
	"context"
	"sort"

	"github.com/ringattn/ringattn/pkg/mask"
)

// maskEval counts the visible pairs of a Mask (pkg/mask gives the
// semantics) by block. Every query row's visible keys are one interval
// [lo, hi), and both lo and hi are non-decreasing in the row index, which
// the pair counting relies on.
type maskEval struct {
	ev *mask.Eval
	// ops counts the rows and key blocks sweep visited (for the test of
	// its complexity).
	ops int64
}

func newMaskEval(m *Mask, n, nk int) *maskEval {
	return &maskEval{ev: mask.New(m, n, nk)}
}

// rowRange returns the interval [lo, hi) of keys query i sees; lo == hi when
// none.
func (me *maskEval) rowRange(i int) (lo, hi int) { return me.ev.Row(i) }

// blockClass classifies the pair of query block qi and key block kj of p
// (both in range): mask.Hidden pairs carry no work and are skipped.
func (me *maskEval) blockClass(p *Plan, qi, kj int) mask.Class {
	q0, rows := p.QSpan(qi)
	k0, n := p.KSpan(kj)
	var r mask.Rows
	me.ev.Rows(q0, make([]int32, rows), make([]int32, rows), &r)
	return r.Classify(k0, k0+n, nil, nil)
}

// sweep returns the visible pairs of every planned query block (indexed by
// query block, 0 for blocks not planned) and of every key block summed over
// the planned query blocks. It runs in O(planned rows + key blocks) time and
// O(query blocks + key blocks) memory: a row's visible keys are one interval
// [lo, hi), which adds its overlap to its first and last key block and one
// whole block to every block between them, counted in a difference array.
// planned must be ascending; ctx is checked every 64 query blocks.
func (me *maskEval) sweep(ctx context.Context, p *Plan, planned []int) (rowPairs, colPairs []int64, err error) {
	block, kb := p.Block, p.KBlockCount
	rowPairs = make([]int64, p.QBlockCount)
	colPairs = make([]int64, kb)
	full := make([]int64, kb+1) // difference array of whole-block coverage
	cur := me.ev.Cursor()
	for n, qi := range planned {
		if n%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
		}
		q0, rows := p.QSpan(qi)
		var tot int64
		for i := q0; i < q0+rows; i++ {
			lo, hi := cur.Row(i)
			if hi <= lo {
				continue
			}
			tot += int64(hi - lo)
			a, b := lo/block, (hi-1)/block
			if a == b {
				colPairs[a] += int64(hi - lo)
				continue
			}
			colPairs[a] += int64((a+1)*block - lo)
			colPairs[b] += int64(hi - b*block)
			full[a+1]++
			full[b]--
		}
		me.ops += int64(rows)
		rowPairs[qi] = tot
	}
	var c int64
	for j := range colPairs {
		c += full[j]
		_, n := p.KSpan(j)
		colPairs[j] += c * int64(n)
	}
	me.ops += int64(kb)
	return rowPairs, colPairs, nil
}

// pairsRow returns, for the query rows [q0, q0+rows), the number of visible
// (query, key) pairs with every key block of length block (the last one
// ragged). It runs in O(rows + kBlocks·log rows): the row bounds are
// monotone, so Σ clamp(bound, ks, ke) over the rows is two binary searches
// and a prefix sum.
func (me *maskEval) pairsRow(q0, rows, block, kBlocks int) []int64 {
	out := make([]int64, kBlocks)
	if rows == 0 {
		return out
	}
	nk := me.ev.Nk()
	if me.ev.None() {
		for j := range out {
			out[j] = int64(rows) * int64(min(block, nk-j*block))
		}
		return out
	}
	los := make([]int, rows)
	his := make([]int, rows)
	cur := me.ev.Cursor()
	for r := range rows {
		los[r], his[r] = cur.Row(q0 + r)
	}
	loSum, hiSum := prefixSum(los), prefixSum(his)
	first := los[0] / block
	last := min((his[rows-1]+block-1)/block, kBlocks) // exclusive
	for j := first; j < last; j++ {
		ks, ke := j*block, min((j+1)*block, nk)
		out[j] = clampSum(his, hiSum, ks, ke) - clampSum(los, loSum, ks, ke)
	}
	return out
}

func prefixSum(x []int) []int64 {
	s := make([]int64, len(x)+1)
	for i, v := range x {
		s[i+1] = s[i] + int64(v)
	}
	return s
}

// clampSum returns Σ min(max(x[i], a), b) for non-decreasing x with prefix
// sums ps.
func clampSum(x []int, ps []int64, a, b int) int64 {
	i := sort.SearchInts(x, a)   // x[:i] < a
	e := sort.SearchInts(x, b+1) // x[e:] > b
	return int64(i)*int64(a) + (ps[e] - ps[i]) + int64(len(x)-e)*int64(b)
}
