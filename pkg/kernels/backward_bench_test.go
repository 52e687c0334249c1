package kernels_test

import (
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

var benchBwdN = flag.String("kernels.bwdn", "4096,16384", "comma-separated sequence lengths of BenchmarkBackward")

var (
	peakOnce sync.Once
	peakAll  float64
)

// peakAllCores is PeakGFLOPS of one core times GOMAXPROCS, measured once
// per run (as `ringattn bench kernel` does).
func peakAllCores() float64 {
	peakOnce.Do(func() { peakAll = kernels.PeakGFLOPS(200*time.Millisecond) * float64(runtime.GOMAXPROCS(0)) })
	return peakAll
}

// BenchmarkBackward times AttentionBackward next to Attention on the same
// shape: B=1, H=8, D=128, no mask and causal, N in -kernels.bwdn (default
// 4096 and 16384). GFLOP/s counts the visible pairs only, 2.5× the
// forward's FLOPs for the backward (its five products against the
// forward's two); %peak is against the FMA peak of all cores
// (PeakGFLOPS × GOMAXPROCS) measured in the run; x-forward is the
// backward's time over the forward's of the sub-benchmark before it.
// GFLOP/cpu-s divides by the CPU time of this process instead of wall
// time, which other processes' load on a shared machine does not stretch.
//
//	go test -run XXX -bench Backward -benchtime 1x ./pkg/kernels
func BenchmarkBackward(b *testing.B) {
	var lens []int
	for _, f := range strings.Split(*benchBwdN, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("-kernels.bwdn: bad length %q", f)
		}
		lens = append(lens, n)
	}
	peak := peakAllCores()
	const h, d = 8, 128
	for _, n := range lens {
		r := testrand.New(1)
		q := r.Slice(h*n*d, testrand.Normal)
		k := r.Slice(h*n*d, testrand.Normal)
		v := r.Slice(h*n*d, testrand.Normal)
		do := r.Slice(h*n*d, testrand.Normal)
		o, lse := make([]float32, h*n*d), make([]float32, h*n)
		dq, dk, dv := make([]float32, h*n*d), make([]float32, h*n*d), make([]float32, h*n*d)
		for _, causal := range []bool{false, true} {
			p := &kernels.Params{Shape: kernels.Shape{B: 1, Hq: h, Hkv: h, D: d}, N: n, Nk: n,
				Mask: kernels.Mask{Causal: causal}}
			flops := p.VisibleFLOPs()
			var fwd float64 // seconds per forward call
			name := fmt.Sprintf("N%d_D%d_H%d_causal=%v", n, d, h, causal)
			b.Run(name+"/forward", func(b *testing.B) {
				cpu0, ok := processCPU()
				for i := 0; i < b.N; i++ {
					if err := kernels.Attention(p, q, k, v, o, lse); err != nil {
						b.Fatal(err)
					}
				}
				fwd = b.Elapsed().Seconds() / float64(b.N)
				g := flops / fwd / 1e9
				b.ReportMetric(g, "GFLOP/s")
				b.ReportMetric(100*g/peak, "%peak")
				if cpu1, ok1 := processCPU(); ok && ok1 && cpu1 > cpu0 {
					b.ReportMetric(flops*float64(b.N)/(cpu1-cpu0).Seconds()/1e9, "GFLOP/cpu-s")
				}
			})
			if fwd == 0 { // -bench filtered the forward out
				if err := kernels.Attention(p, q, k, v, o, lse); err != nil {
					b.Fatal(err)
				}
			}
			b.Run(name+"/backward", func(b *testing.B) {
				cpu0, ok := processCPU()
				for i := 0; i < b.N; i++ {
					if err := kernels.AttentionBackward(p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
						b.Fatal(err)
					}
				}
				sec := b.Elapsed().Seconds() / float64(b.N)
				g := 2.5 * flops / sec / 1e9
				b.ReportMetric(g, "GFLOP/s")
				b.ReportMetric(100*g/peak, "%peak")
				if cpu1, ok1 := processCPU(); ok && ok1 && cpu1 > cpu0 {
					b.ReportMetric(2.5*flops*float64(b.N)/(cpu1-cpu0).Seconds()/1e9, "GFLOP/cpu-s")
				}
				if fwd > 0 {
					b.ReportMetric(sec/fwd, "x-forward")
				}
			})
		}
	}
	b.Logf("peak %.0f GFLOP/s (%s, %d cores)", peak, kernels.PeakISA(), runtime.GOMAXPROCS(0))
}
