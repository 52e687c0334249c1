package shard

import (
	"context"
	"slices"
	"testing"
)

// TestShardSweepOps counts the work of the pair counting at the block cap:
// it visits every planned row and every key block once (N + Nk/block), where
// it used to build a full row of key blocks per query block (blocks², 2^32
// at 65,536 blocks), and agrees with the per-block count of PairsRow.
func TestShardSweepOps(t *testing.T) {
	for _, c := range []struct {
		name  string
		n     int
		block int
		mask  Mask
	}{
		{"block1-causal", 1 << 16, 1, Mask{Causal: true}},
		{"block1-window", 1 << 16, 1, Mask{Windowed: true, Left: 100, Right: 3}},
		{"block16-docs", 1 << 20, 16, Mask{Causal: true, SeqLens: []int{1 << 18, 1 << 19, 1 << 18}}},
	} {
		req := Request{B: 1, Hq: 1, Hkv: 1, D: 8, N: c.n, Nk: c.n, Block: c.block, Ranks: 4, Mask: c.mask}
		if err := DefaultLimits().Check(&req, Tensors{}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		p := &Plan{N: c.n, Nk: c.n, Block: c.block, QBlockCount: ceilDiv(c.n, c.block), KBlockCount: ceilDiv(c.n, c.block)}
		planned := make([]int, p.QBlockCount)
		for i := range planned {
			planned[i] = i
		}
		me := newMaskEval(&req.Mask, c.n, c.n)
		rows, _, err := me.sweep(context.Background(), p, planned)
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(c.n + p.KBlockCount); me.ops != want {
			t.Errorf("%s: %d steps, want N + key blocks = %d", c.name, me.ops, want)
		}
		// Spot-check rows and the column totals against pairsRow.
		for _, qi := range []int{0, 1, p.QBlockCount / 2, p.QBlockCount - 1} {
			q0, n := p.QSpan(qi)
			var tot int64
			for _, x := range me.pairsRow(q0, n, p.Block, p.KBlockCount) {
				tot += x
			}
			if rows[qi] != tot {
				t.Errorf("%s: block %d has %d pairs, pairsRow says %d", c.name, qi, rows[qi], tot)
			}
		}
		// Column totals over a few planned blocks only.
		colSum := make([]int64, p.KBlockCount)
		sub := []int{2, 7, p.QBlockCount - 3}
		_, subCols, err := newMaskEval(&req.Mask, c.n, c.n).sweep(context.Background(), p, sub)
		if err != nil {
			t.Fatal(err)
		}
		for _, qi := range sub {
			q0, n := p.QSpan(qi)
			for j, x := range me.pairsRow(q0, n, p.Block, p.KBlockCount) {
				colSum[j] += x
			}
		}
		if !slices.Equal(subCols, colSum) {
			t.Errorf("%s: column totals differ from pairsRow", c.name)
		}
	}
}
