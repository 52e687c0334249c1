package ringattn_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// BenchmarkRingBackward times an in-process ring backward of R ranks
// against kernels.AttentionBackward on the same shape (B=1, H=8, D=128,
// N=16384 unless RINGATTN_BENCH_N says otherwise, default block), both
// masks, alternating the two in every iteration so that machine noise hits
// both. It reports the ring's overhead in percent of the kernel's time (on
// the fastest iteration of each, and on total CPU time), both GFLOP/s
// (backward FLOPs counted as 2.5 × the forward's visible FLOPs) and the
// largest difference between the two results relative to max(1, max|dk|).
// RINGATTN_BENCH_STRATEGY forces a strategy (default: the planner's).
func BenchmarkRingBackward(b *testing.B) {
	n := benchN(b)
	strategy := shard.Strategy(os.Getenv("RINGATTN_BENCH_STRATEGY"))
	for _, causal := range []bool{false, true} {
		p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 8, Hkv: 8, D: 128}, N: n, Nk: n, Mask: kernels.Mask{Causal: causal}}
		r := testrand.New(1)
		q := r.Slice(p.B*p.Hq*n*p.D, testrand.Normal)
		k := r.Slice(p.B*p.Hkv*n*p.D, testrand.Normal)
		v := r.Slice(p.B*p.Hkv*n*p.D, testrand.Normal)
		do := r.Slice(p.B*p.Hq*n*p.D, testrand.Normal)
		o := make([]float32, len(q))
		lse := make([]float32, p.B*p.Hq*n)
		if err := kernels.Attention(&p, q, k, v, o, lse); err != nil {
			b.Fatal(err)
		}
		flops := 2.5 * p.VisibleFLOPs()
		for _, ranks := range []int{2, 4} {
			name := fmt.Sprintf("causal=%v/R=%d", causal, ranks)
			b.Run(name, func(b *testing.B) {
				plan, err := shard.NewPlan(shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: n, Nk: n, Ranks: ranks,
					Mask: shard.Mask{Causal: causal}, Strategy: strategy})
				if err != nil {
					b.Fatal(err)
				}
				var tk, tr, ck, cr time.Duration
				mk, mr := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
				var diff float64
				for b.Loop() {
					t0, c0 := time.Now(), cpuTime(b)
					// Like the ring, the kernel returns fresh gradients.
					dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
					if err := kernels.AttentionBackward(&p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
						b.Fatal(err)
					}
					t1, c1 := time.Now(), cpuTime(b)
					rq, rk, rv, err := ringattn.RunLocalBackward(context.Background(), &p, plan, q, k, v, o, lse, do)
					if err != nil {
						b.Fatal(err)
					}
					tr += time.Since(t1)
					tk += t1.Sub(t0)
					mr, mk = min(mr, time.Since(t1)), min(mk, t1.Sub(t0))
					cr += cpuTime(b) - c1
					ck += c1 - c0
					for _, x := range [][2][]float32{{dq, rq}, {dk, rk}, {dv, rv}} {
						var d, m float64
						for i := range x[0] {
							d = max(d, math.Abs(float64(x[0][i]-x[1][i])))
							m = max(m, math.Abs(float64(x[0][i])))
						}
						diff = max(diff, d/max(1, m))
					}
				}
				b.ReportMetric(100*(mr.Seconds()-mk.Seconds())/mk.Seconds(), "overhead%")
				b.ReportMetric(100*(cr.Seconds()-ck.Seconds())/ck.Seconds(), "cpu-overhead%")
				b.ReportMetric(flops*float64(b.N)/tk.Seconds()/1e9, "kernel-GFLOP/s")
				b.ReportMetric(flops*float64(b.N)/tr.Seconds()/1e9, "ring-GFLOP/s")
				b.ReportMetric(diff, "reldiff")
				b.ReportMetric(plan.Imbalance, "imbalance")
				b.Logf("%s: %v; per op: kernel %v (cpu %v), ring %v (cpu %v)", name, plan,
					tk/time.Duration(b.N), ck/time.Duration(b.N), tr/time.Duration(b.N), cr/time.Duration(b.N))
			})
		}
	}
}
