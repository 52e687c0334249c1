package ringattn_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// benchN is the sequence length of the ring benchmarks: 16384 (the issue's
// figure) unless RINGATTN_BENCH_N says otherwise.
func benchN(b *testing.B) int {
	if s := os.Getenv("RINGATTN_BENCH_N"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("RINGATTN_BENCH_N = %q, expected a positive integer", s)
		}
		return n
	}
	return 16384
}

// BenchmarkRingOverhead times an in-process ring of R ranks against the
// local kernel on the same shape (B=1, H=8, D=128), alternating the two in
// every iteration so that machine noise hits both, and reports the ring's
// overhead in percent of the kernel's time — on the fastest iteration of
// each (wall time; the minimum is the least disturbed by other processes)
// and on the total CPU time — both GFLOP/s (from total wall time) and the
// largest difference between the two outputs.
func BenchmarkRingOverhead(b *testing.B) {
	n := benchN(b)
	for _, causal := range []bool{false, true} {
		p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 8, Hkv: 8, D: 128}, N: n, Nk: n, Mask: kernels.Mask{Causal: causal}}
		r := testrand.New(1)
		q := r.Slice(p.B*p.Hq*n*p.D, testrand.Normal)
		k := r.Slice(p.B*p.Hkv*n*p.D, testrand.Normal)
		v := r.Slice(p.B*p.Hkv*n*p.D, testrand.Normal)
		var o []float32
		flops := p.VisibleFLOPs()
		for _, ranks := range []int{2, 4} {
			name := fmt.Sprintf("causal=%v/R=%d", causal, ranks)
			b.Run(name, func(b *testing.B) {
				plan, err := shard.NewPlan(shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: n, Nk: n, Ranks: ranks,
					Mask: shard.Mask{Causal: causal}})
				if err != nil {
					b.Fatal(err)
				}
				var tk, tr, ck, cr time.Duration
				mk, mr := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
				var diff float64
				for b.Loop() {
					t0, c0 := time.Now(), cpuTime(b)
					// Like the ring, the kernel returns a fresh o and lse.
					o = make([]float32, len(q))
					lse := make([]float32, p.B*p.Hq*n)
					if err := kernels.Attention(&p, q, k, v, o, lse); err != nil {
						b.Fatal(err)
					}
					t1, c1 := time.Now(), cpuTime(b)
					ro, _, err := ringattn.RunLocal(context.Background(), &p, plan, q, k, v)
					if err != nil {
						b.Fatal(err)
					}
					tr += time.Since(t1)
					tk += t1.Sub(t0)
					mr, mk = min(mr, time.Since(t1)), min(mk, t1.Sub(t0))
					cr += cpuTime(b) - c1
					ck += c1 - c0
					for i := range o {
						diff = max(diff, math.Abs(float64(o[i]-ro[i])))
					}
				}
				b.ReportMetric(100*(mr.Seconds()-mk.Seconds())/mk.Seconds(), "overhead%")
				b.ReportMetric(100*(cr.Seconds()-ck.Seconds())/ck.Seconds(), "cpu-overhead%")
				b.ReportMetric(flops*float64(b.N)/tk.Seconds()/1e9, "kernel-GFLOP/s")
				b.ReportMetric(flops*float64(b.N)/tr.Seconds()/1e9, "ring-GFLOP/s")
				b.ReportMetric(diff, "maxdiff")
				b.ReportMetric(plan.Imbalance, "imbalance")
				b.Logf("%s: %v; per op: kernel %v (cpu %v), ring %v (cpu %v)", name, plan,
					tk/time.Duration(b.N), ck/time.Duration(b.N), tr/time.Duration(b.N), cr/time.Duration(b.N))
			})
		}
	}
}

// cpuTime is the process's user+system CPU time: on a shared machine it is
// less disturbed by other processes than wall time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRingCausalImbalance reports the planned imbalance of every ring
// strategy for causal self-attention, N=16384, block 1024, R=4.
func BenchmarkRingCausalImbalance(b *testing.B) {
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped} {
		b.Run(string(s), func(b *testing.B) {
			var plan *shard.Plan
			var err error
			for b.Loop() {
				plan, err = shard.NewPlan(shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: 16384, Nk: 16384, Ranks: 4,
					Strategy: s, Mask: shard.Mask{Causal: true}})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(plan.Imbalance, "imbalance")
			b.Logf("%v", plan)
		})
	}
}
