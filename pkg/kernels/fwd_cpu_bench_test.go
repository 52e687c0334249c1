//go:build linux

package kernels

import (
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringattn/ringattn/internal/testrand"
)

// threadCPU is the CPU time of the calling OS thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// peakThreadCPU is the best of several runs of the FMA peak loop, timed
// by the thread's CPU time (GFLOP per CPU-second of one core).
func peakThreadCPU() float64 {
	n := 1 << 20
	best := 0.0
	for i := 0; i < 20; i++ {
		t := threadCPU()
		archPeak.run(n)
		if el := threadCPU() - t; el > 0 {
			best = max(best, archPeak.flops*float64(n)/float64(el.Nanoseconds()))
		}
	}
	return best
}

// BenchmarkKernelForwardCPU times the forward pass (Attention) on one
// thread (Threads = 1, the goroutine locked to its OS thread) by that
// thread's CPU time, for B=1, H=8, N in -kernels.n (default 4096),
// D in {64, 128}, causal and not. GFLOP/cpu-s counts the visible pairs'
// FLOPs (as BenchmarkKernelAttention) per CPU-second of the thread, and
// %peak-cpu divides it by the FMA peak loop timed the same way in the same
// run: other processes' load on a shared machine lowers neither much, so
// two builds or two variants can be compared by it when wall time cannot.
//
//	go test -run XXX -bench KernelForwardCPU -benchtime 3x ./pkg/kernels
func BenchmarkKernelForwardCPU(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var lens []int
	for _, f := range strings.Split(benchNForward(), ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("-kernels.n: bad length %q", f)
		}
		lens = append(lens, n)
	}
	peak := peakThreadCPU()
	const h = 8
	for _, n := range lens {
		for _, d := range []int{64, 128} {
			r := testrand.New(1)
			q := r.Slice(h*n*d, testrand.Normal)
			k := r.Slice(h*n*d, testrand.Normal)
			v := r.Slice(h*n*d, testrand.Normal)
			o := make([]float32, h*n*d)
			for _, causal := range []bool{false, true} {
				p := &Params{Shape: Shape{B: 1, Hq: h, Hkv: h, D: d}, N: n, Nk: n,
					Mask: Mask{Causal: causal}, Threads: 1}
				flops := p.VisibleFLOPs()
				b.Run(fmt.Sprintf("N%d_D%d_H%d_causal=%v", n, d, h, causal), func(b *testing.B) {
					// Each benchmark runs on its own goroutine: lock it
					// to its thread so that the thread's clock is its own.
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					cpu := time.Duration(0)
					for i := 0; i < b.N; i++ {
						t := threadCPU()
						if err := Attention(p, q, k, v, o, nil); err != nil {
							b.Fatal(err)
						}
						cpu += threadCPU() - t
					}
					if cpu > 0 {
						g := flops * float64(b.N) / float64(cpu.Nanoseconds())
						b.ReportMetric(g, "GFLOP/cpu-s")
						b.ReportMetric(100*g/peak, "%peak-cpu")
					}
				})
			}
		}
	}
	b.Logf("one core's FMA peak %.1f GFLOP/cpu-s (%s)", peak, PeakISA())
}

// benchNForward is -kernels.n, which bench_test.go (package kernels_test)
// defines, or 4096.
func benchNForward() string {
	if f := flag.Lookup("kernels.n"); f != nil {
		return f.Value.String()
	}
	return "4096"
}
