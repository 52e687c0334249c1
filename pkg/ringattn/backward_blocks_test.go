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

// TestMemGradSinkViews: a block's gradients put as views land where the
// contiguous put lands them; a view one value short, or rows past its
// stride, is refused; only the first write of a block counts.
func TestMemGradSinkViews(t *testing.T) {
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 2, Hkv: 2, D: 3}, N: 20, Nk: 20}
	ctx := context.Background()
	const bh, d, block = 2, 3, 8
	// A rank's buffer [bh, 12, d] holding query blocks 1 (rows 8..15, at
	// 0) and 2 (rows 16..19, at 8), as a zigzag run would.
	buf := make([]float32, bh*12*d)
	for i := range buf {
		buf[i] = float32(i + 1)
	}
	viaView, err := NewMemGradSink(&p, block)
	if err != nil {
		t.Fatal(err)
	}
	viaCopy, _ := NewMemGradSink(&p, block)
	for _, c := range []struct{ blk, rows, at int }{{1, 8, 0}, {2, 4, 8}} {
		if err := viaView.putDQView(ctx, 1, c.blk, buf, 12, c.at); err != nil {
			t.Fatal(err)
		}
		if err := viaCopy.PutDQ(ctx, 1, c.blk, gather(buf, bh, 12, c.at, c.rows, d)); err != nil {
			t.Fatal(err)
		}
		// dK/dV of the same block as a view from row c.at of buf: the
		// view ends at the last head's last row, as a set's views do.
		x := buf[c.at*d : (bh-1)*12*d+(c.at+c.rows)*d]
		if err := viaView.putDKVView(ctx, 1, c.blk, x, x, 12); err != nil {
			t.Fatal(err)
		}
		g := gather(x, bh, 12, 0, c.rows, d)
		if err := viaCopy.PutDKV(ctx, 1, c.blk, g, g); err != nil {
			t.Fatal(err)
		}
	}
	for i, pair := range [][2][]float32{{viaView.dq, viaCopy.dq}, {viaView.dk, viaCopy.dk}, {viaView.dv, viaCopy.dv}} {
		for j := range pair[0] {
			if pair[0][j] != pair[1][j] {
				t.Fatalf("tensor %d value %d: view put %v, contiguous put %v", i, j, pair[0][j], pair[1][j])
			}
		}
	}
	// At the limit and one past it.
	short := buf[:(bh-1)*12*d+8*d-1]
	if err := viaView.putDKVView(ctx, 2, 1, short, buf, 12); err == nil {
		t.Error("a dK view one value short was taken")
	}
	if err := viaView.putDKVView(ctx, 2, 1, buf, buf, 7); err == nil {
		t.Error("a stride below the block's rows was taken")
	}
	if err := viaView.putDQView(ctx, 2, 2, buf, 12, 9); err == nil {
		t.Error("dQ rows past the view's stride were taken")
	}
	if err := viaView.putDQView(ctx, 2, 2, buf, 12, 8); err != nil {
		t.Errorf("dQ rows ending at the stride: %v", err)
	}
	if err := viaView.putDQView(ctx, 2, 2, buf[1:], 12, 0); err == nil {
		t.Error("a dQ view of the wrong size was taken")
	}
	if got := viaView.WritesDQ(2); len(got) != 2 || got[0] != 1 {
		t.Errorf("block 2 writes %v, want epochs [1 2]", got)
	}
}

// skewViews lends "do" as a contiguous copy of the rows asked for and
// every other tensor in place: Q and dO views of different strides.
type skewViews struct {
	*MemSource
	bh, d int
}

func (s skewViews) View(ctx context.Context, tensor string, first, count int) ([]float32, int, error) {
	x, stride, err := s.MemSource.View(ctx, tensor, first, count)
	if err != nil || tensor != "do" {
		return x, stride, err
	}
	rows := 8 * count
	return gather(x, s.bh, stride, 0, rows, s.d), rows, nil
}

// TestLoadRowsInPlace: a rank's query run is read in place, heads a
// sequence apart; when Q and dO come as views of different strides both
// are made contiguous; either way the rows and Δ are those of the inputs.
func TestLoadRowsInPlace(t *testing.T) {
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 2, Hkv: 2, D: 4}, N: 24, Nk: 24}
	plan, err := shard.NewPlan(shard.Request{B: 1, Hq: 2, Hkv: 2, D: 4, N: 24, Nk: 24, Block: 8, Ranks: 1, Strategy: shard.Contiguous})
	if err != nil {
		t.Fatal(err)
	}
	q, o, do, lse := make([]float32, 2*24*4), make([]float32, 2*24*4), make([]float32, 2*24*4), make([]float32, 2*24)
	for i := range q {
		q[i], o[i], do[i] = float32(i), float32(i%7), float32(i%5)
	}
	src, err := NewMemGradSource(&p, 8, q, make([]float32, len(q)), make([]float32, len(q)), o, lse, do)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		views  ViewSource
		stride int
	}{{"in place", src, 24}, {"strides differ", skewViews{src, 2, 4}, 16}} {
		r := &bwdRun{rankRun: &rankRun{p: &p, plan: plan, views: c.views, cfg: RankConfig{Source: src}}}
		runs, err := r.loadRows(ctx, []int{1, 2})
		if err != nil {
			t.Fatal(err)
		}
		run := runs[0]
		if run.qStride != c.stride || (c.stride == 24) != (&run.q[0] == &q[8*4]) {
			t.Fatalf("%s: q stride %d (in place %v), expected %d", c.name, run.qStride, &run.q[0] == &q[8*4], c.stride)
		}
		for h := range 2 {
			for i := range 16 {
				for e := range 4 {
					at, in := (h*run.qStride+i)*4+e, (h*24+8+i)*4+e
					if run.q[at] != q[in] || run.do[at] != do[in] {
						t.Fatalf("%s: head %d row %d: q %v do %v, expected %v %v", c.name, h, i, run.q[at], run.do[at], q[in], do[in])
					}
				}
				var want float64
				for e := range 4 {
					want += float64(o[(h*24+8+i)*4+e]) * float64(do[(h*24+8+i)*4+e])
				}
				if got := run.delta[h*16+i]; got != float32(want) {
					t.Fatalf("%s: Δ of head %d row %d = %v, expected %v", c.name, h, i, got, want)
				}
			}
		}
	}
}
