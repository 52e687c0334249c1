package kernels_test

import (
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
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
// attention figures above use every core. With AVX512_BF16 it reports
// the VDPBF16PS peak too (PeakBF16GFLOPS) and its ratio to the FMA's.
func BenchmarkKernelPeak(b *testing.B) {
	var g, bf float64
	ok := false
	for i := 0; i < b.N; i++ {
		g = kernels.PeakGFLOPS(200 * time.Millisecond)
		bf, ok = kernels.PeakBF16GFLOPS(200 * time.Millisecond)
	}
	b.ReportMetric(g, "GFLOP/s")
	if ok {
		b.ReportMetric(bf, "bf16-GFLOP/s")
		b.ReportMetric(bf/g, "bf16/fma")
	}
}

var benchPrecN = flag.String("kernels.precn", "4096,16384", "comma-separated sequence lengths of BenchmarkKernelPrecision")

// BenchmarkKernelPrecision times the forward pass in float32 and in
// bfloat16 precision on B=1, H=8, D=128, no mask, N in -kernels.precn
// (default 4096 and 16384). GFLOP/s counts 4·N²·D per head; %peak is
// against the FMA peak of all cores (PeakGFLOPS × GOMAXPROCS) and
// %peak-cpu is GFLOP/cpu-s against one core's peak, which other
// processes' load on a shared machine does not lower; x-f32 is the bf16
// call's throughput over the f32 call's just before it (by CPU time when
// measured, else wall time); maxerr-f64 is the largest |o - reference|
// against float64 on 32 rows of every head.
//
//	go test -run XXX -bench KernelPrecision -benchtime 2x ./pkg/kernels
func BenchmarkKernelPrecision(b *testing.B) {
	var lens []int
	for _, f := range strings.Split(*benchPrecN, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("-kernels.precn: bad length %q", f)
		}
		lens = append(lens, n)
	}
	peak := peakAllCores()
	peak1 := peak / float64(runtime.GOMAXPROCS(0))
	const h, d = 8, 128
	for _, n := range lens {
		r := testrand.New(1)
		q := r.Slice(h*n*d, testrand.Normal)
		k := r.Slice(h*n*d, testrand.Normal)
		v := r.Slice(h*n*d, testrand.Normal)
		o := make([]float32, h*n*d)
		var f32 float64 // GFLOP per second (CPU or wall) of the f32 run
		for _, prec := range []kernels.Precision{kernels.PrecisionF32, kernels.PrecisionBF16} {
			p := &kernels.Params{Shape: kernels.Shape{B: 1, Hq: h, Hkv: h, D: d}, N: n, Nk: n, Precision: prec}
			flops := p.VisibleFLOPs()
			b.Run(fmt.Sprintf("N%d_D%d_H%d/%v", n, d, h, prec), func(b *testing.B) {
				cpu0, ok := processCPU()
				for i := 0; i < b.N; i++ {
					if err := kernels.Attention(p, q, k, v, o, nil); err != nil {
						b.Fatal(err)
					}
				}
				g := flops * float64(b.N) / b.Elapsed().Seconds() / 1e9
				b.ReportMetric(g, "GFLOP/s")
				b.ReportMetric(100*g/peak, "%peak")
				rate := g
				if cpu1, ok1 := processCPU(); ok && ok1 && cpu1 > cpu0 {
					gc := flops * float64(b.N) / (cpu1 - cpu0).Seconds() / 1e9
					b.ReportMetric(gc, "GFLOP/cpu-s")
					b.ReportMetric(100*gc/peak1, "%peak-cpu")
					rate = gc
				}
				if prec == kernels.PrecisionF32 {
					f32 = rate
				} else if f32 > 0 {
					b.ReportMetric(rate/f32, "x-f32")
				}
				// Error against float64 on 32 rows spread over the
				// sequence, every head (the float64 reference of all rows
				// would cost minutes).
				b.StopTimer()
				rows := make([]int, 32)
				for i := range rows {
					rows[i] = i * (n - 1) / (len(rows) - 1)
				}
				ref := &attnref.Problem{B: 1, Hq: h, Hkv: h, N: n, Nk: n, D: d}
				want, _ := ref.Rows(q, k, v, rows)
				got := make([]float32, 0, len(want))
				for hh := 0; hh < h; hh++ {
					for _, i := range rows {
						got = append(got, o[(hh*n+i)*d:(hh*n+i+1)*d]...)
					}
				}
				b.ReportMetric(attnref.MaxAbsDiff(got, want), "maxerr-f64")
			})
		}
	}
	b.Logf("peak %.0f GFLOP/s (%s, %d cores)", peak, kernels.PeakISA(), runtime.GOMAXPROCS(0))
}
