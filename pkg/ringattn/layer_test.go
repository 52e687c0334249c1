package ringattn_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// TestRingLayer: a multi-head layer projected block by block (as ranks do),
// run over a 3-rank ring and projected back block by block, equals the
// float64 layer reference.
func TestRingLayer(t *testing.T) {
	const b, n, dModel, heads, d, block = 2, 77, 24, 3, 8, 16
	r := testrand.New(101)
	scaled := func(n int, s float64) []float32 {
		x := r.Slice(n, testrand.Normal)
		for i := range x {
			x[i] *= float32(s)
		}
		return x
	}
	hd := heads * d
	ws := 1 / math.Sqrt(dModel)
	l := &ringattn.Layer{DModel: dModel, Heads: heads, D: d,
		Wq: scaled(hd*dModel, ws), Wk: scaled(hd*dModel, ws), Wv: scaled(hd*dModel, ws), Wo: scaled(dModel*hd, 1/math.Sqrt(float64(hd))),
		Bq: scaled(hd, 0.1), Bk: scaled(hd, 0.1), Bv: scaled(hd, 0.1), Bo: scaled(dModel, 0.1)}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	x := r.Slice(b*n*dModel, testrand.Normal)
	mask := kernels.Mask{Causal: true}
	ref := (&attnref.MHA{B: b, N: n, DModel: dModel, Heads: heads, D: d, Mask: attnref.Mask{Causal: true}}).
		Forward(x, l.Wq, l.Wk, l.Wv, l.Wo, l.Bq, l.Bk, l.Bv, l.Bo)

	// rows copies rows [s, s+m) of each batch of a [B, N, w] tensor.
	rows := func(src []float32, s, m, w int) []float32 {
		out := make([]float32, 0, b*m*w)
		for bi := range b {
			out = append(out, src[(bi*n+s)*w:(bi*n+s+m)*w]...)
		}
		return out
	}
	q := make([]float32, b*heads*n*d)
	k := make([]float32, len(q))
	v := make([]float32, len(q))
	put := func(dst, blk []float32, s, m int) { // [B,H,m,D] block into [B,H,N,D]
		for bh := range b * heads {
			copy(dst[(bh*n+s)*d:(bh*n+s+m)*d], blk[bh*m*d:(bh+1)*m*d])
		}
	}
	for s := 0; s < n; s += block {
		m := min(block, n-s)
		bq, bk, bv, err := l.Project(rows(x, s, m, dModel), b, m)
		if err != nil {
			t.Fatal(err)
		}
		put(q, bq, s, m)
		put(k, bk, s, m)
		put(v, bv, s, m)
	}
	p := kernels.Params{Shape: kernels.Shape{B: b, Hq: heads, Hkv: heads, D: d}, N: n, Nk: n, Mask: mask}
	plan, err := shard.NewPlan(shard.Request{B: b, Hq: heads, Hkv: heads, D: d, N: n, Nk: n, Block: block, Ranks: 3,
		Mask: shard.Mask{Causal: true}})
	if err != nil {
		t.Fatal(err)
	}
	o, _, err := ringattn.RunLocal(context.Background(), &p, plan, q, k, v)
	if err != nil {
		t.Fatal(err)
	}
	var worst float64
	for s := 0; s < n; s += block {
		m := min(block, n-s)
		ob := make([]float32, 0, b*heads*m*d)
		for bh := range b * heads {
			ob = append(ob, o[(bh*n+s)*d:(bh*n+s+m)*d]...)
		}
		y, err := l.Output(ob, b, m)
		if err != nil {
			t.Fatal(err)
		}
		for bi := range b {
			for i := range m {
				for j := range dModel {
					got := float64(y[(bi*m+i)*dModel+j])
					worst = max(worst, math.Abs(got-ref[(bi*n+s+i)*dModel+j]))
				}
			}
		}
	}
	if worst > tolerance {
		t.Fatalf("max |y - ref| = %.3g > %g", worst, tolerance)
	}
	t.Logf("max |y - ref| = %.3g", worst)

	bad := *l
	bad.Bo = bad.Bo[:3]
	if err := bad.Validate(); !errors.Is(err, ringattn.ErrInvalid) || !strings.Contains(err.Error(), "bo has 3 values") {
		t.Fatalf("short bo: %v", err)
	}
	if _, _, _, err := l.Project(x[:10], b, n); !errors.Is(err, ringattn.ErrInvalid) {
		t.Fatalf("short x: %v", err)
	}
}
