package ringattn

import (
	"context"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// TestSetView: a run of key blocks held as views is lent as one view of
// the Source's tensors; a run holding a copy, or a rank whose Source lends
// no views, copies the run; a view too short for the run is an error.
func TestSetView(t *testing.T) {
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 2, Hkv: 2, D: 4}, N: 24, Nk: 24}
	plan, err := shard.NewPlan(shard.Request{B: 1, Hq: 2, Hkv: 2, D: 4, N: 24, Nk: 24, Block: 8, Ranks: 1, Strategy: shard.Contiguous})
	if err != nil {
		t.Fatal(err)
	}
	k := make([]float32, 2*24*4)
	for i := range k {
		k[i] = float32(i)
	}
	v := make([]float32, len(k))
	src, err := NewMemSource(&p, 8, make([]float32, len(k)), k, v)
	if err != nil {
		t.Fatal(err)
	}
	r := &bwdRun{rankRun: &rankRun{p: &p, plan: plan, views: src}}
	ctx := context.Background()
	view := func(j int) kvBlock {
		kx, stride, err := src.View(ctx, "k", j, 1)
		if err != nil {
			t.Fatal(err)
		}
		vx, _, err := src.View(ctx, "v", j, 1)
		if err != nil {
			t.Fatal(err)
		}
		return kvBlock{j: j, k: kx, v: vx, stride: stride}
	}
	b1, b2 := view(1), view(2)
	kk, vv, stride, ok, err := r.setView(ctx, []kvBlock{b1, b2}, 16)
	if err != nil || !ok {
		t.Fatalf("two views: ok %v, err %v", ok, err)
	}
	if stride != 24 || &kk[0] != &k[8*4] || &vv[0] != &v[8*4] || len(kk) != (24+16)*4 {
		t.Fatalf("view of %d values %d rows apart at %p, expected %d from %p", len(kk), stride, &kk[0], (24+16)*4, &k[8*4])
	}
	if _, _, _, ok, err := r.setView(ctx, []kvBlock{b1, r.compact(b2)}, 16); ok || err != nil {
		t.Errorf("a copy in the run: ok %v, err %v; expected a copy without error", ok, err)
	}
	plain := &bwdRun{rankRun: &rankRun{p: &p, plan: plan}}
	if _, _, _, ok, err := plain.setView(ctx, []kvBlock{b1, b2}, 16); ok || err != nil {
		t.Errorf("no ViewSource: ok %v, err %v; expected a copy without error", ok, err)
	}
	if _, _, _, _, err := r.setView(ctx, []kvBlock{b1, b2}, 17); err == nil {
		t.Error("a run of 17 rows lent as 16: no error")
	}
}
