package kernels_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// BenchmarkKernelAttention reports GFLOP/s counting only the FLOPs of the
// pairs the mask leaves visible (4·D per pair; half of 4·B·H·N²·D when causal).
// N=4096 by default; -bench 'Attention/.*N8192' style filters need
// RINGATTN_BENCH_LONG=1 ... see benchShapes.
func BenchmarkKernelAttention(b *testing.B) {
	for _, n := range benchLens {
		for _, d := range []int{64, 128} {
			for _, causal := range []bool{false, true} {
				name := fmt.Sprintf("N%d_D%d_H8_causal=%v", n, d, causal)
				b.Run(name, func(b *testing.B) {
					p := &kernels.Params{Shape: kernels.Shape{B: 1, Hq: 8, Hkv: 8, D: d}, N: n, Nk: n,
						Mask: kernels.Mask{Causal: causal}}
					r := testrand.New(1)
					q := r.Slice(8*n*d, testrand.Normal)
					k := r.Slice(8*n*d, testrand.Normal)
					v := r.Slice(8*n*d, testrand.Normal)
					o := make([]float32, 8*n*d)
					flops := p.VisibleFLOPs()
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						if err := kernels.Attention(p, q, k, v, o, nil); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// BenchmarkKernelPeak reports one core's FMA peak (see PeakGFLOPS).
func BenchmarkKernelPeak(b *testing.B) {
	var g float64
	for i := 0; i < b.N; i++ {
		g = kernels.PeakGFLOPS(200 * time.Millisecond)
	}
	b.ReportMetric(g, "GFLOP/s")
}
