package kernels_test

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

var benchN = flag.String("kernels.n", "4096", "comma-separated sequence lengths of BenchmarkKernelAttention")

// BenchmarkKernelAttention reports GFLOP/s for B=1, H=8, D in {64, 128},
// causal and not, counting only the FLOPs of the pairs the mask leaves
// visible (4·D per pair: half of 4·B·H·N²·D when causal), per second of
// wall time and per CPU-second of this process. N is 4096 unless
// -args -kernels.n=2048,8192 says otherwise. It runs on all cores.
func BenchmarkKernelAttention(b *testing.B) {
	var lens []int
	for _, f := range strings.Split(*benchN, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("-kernels.n: bad length %q", f)
		}
		lens = append(lens, n)
	}
	for _, n := range lens {
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
					cpu0, ok := processCPU()
					for i := 0; i < b.N; i++ {
						if err := kernels.Attention(p, q, k, v, o, nil); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
					// On a shared machine, wall time counts other processes'
					// turns; GFLOP per CPU-second does not (on an idle machine
					// it is GFLOP/s divided by the cores busy).
					if cpu1, ok1 := processCPU(); ok && ok1 && cpu1 > cpu0 {
						b.ReportMetric(flops*float64(b.N)/(cpu1-cpu0).Seconds()/1e9, "GFLOP/cpu-s")
					}
				})
			}
		}
	}
}

// BenchmarkKernelPeak reports one core's FMA peak (see PeakGFLOPS); the
// attention figures above use every core.
func BenchmarkKernelPeak(b *testing.B) {
	var g float64
	for i := 0; i < b.N; i++ {
		g = kernels.PeakGFLOPS(200 * time.Millisecond)
	}
	b.ReportMetric(g, "GFLOP/s")
}
