package kernels

import (
	"runtime"
	"time"
)

// peakLoop is a loop of independent FMAs: run(n) does n iterations of
// flops floating-point operations each.
type peakLoop struct {
	run   func(n int)
	flops float64
	name  string
}

// archPeak is the widest FMA loop of this CPU; registerArch replaces it.
var archPeak = peakLoop{peakGeneric, 16, "generic"}

// peakGeneric runs eight independent scalar multiply-add chains.
func peakGeneric(n int) {
	var x0, x1, x2, x3, x4, x5, x6, x7 float32 = 0, 1, 2, 3, 4, 5, 6, 7
	const a, b = 0.999, 0.001
	for i := 0; i < n; i++ {
		x0 = x0*a + b
		x1 = x1*a + b
		x2 = x2*a + b
		x3 = x3*a + b
		x4 = x4*a + b
		x5 = x5*a + b
		x6 = x6*a + b
		x7 = x7*a + b
	}
	peakSink = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7
}

var peakSink float32

// PeakGFLOPS measures, for about d, the float32 GFLOP/s of one core running
// independent FMAs of the widest vector unit this CPU offers (AVX-512 or
// AVX2+FMA assembly; a scalar Go loop with -tags noasm or elsewhere). The
// result is the best of several timed runs, so background load lowers it
// only when it lasts the whole measurement. PeakISA names the loop used.
func PeakGFLOPS(d time.Duration) float64 { return measurePeak(archPeak, d) }

// archBF16Peak is the VDPBF16PS loop when the CPU has AVX512_BF16;
// registerArch sets it.
var archBF16Peak *peakLoop

// PeakBF16GFLOPS measures like PeakGFLOPS one core's throughput of
// AVX512_BF16's VDPBF16PS on zmm registers (64 FLOP each: 16 lanes of two
// bfloat16 products and two float32 adds); ok is false when the CPU or
// the build (noasm) has no AVX512_BF16. On the Xeon this package was
// tuned on it is half of PeakGFLOPS (one VDPBF16PS per two cycles against
// two FMAs per cycle), which is why PrecisionBF16 runs on the FMA kernels.
func PeakBF16GFLOPS(d time.Duration) (gflops float64, ok bool) {
	if archBF16Peak == nil {
		return 0, false
	}
	return measurePeak(*archBF16Peak, d), true
}

func measurePeak(pl peakLoop, d time.Duration) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// Calibrate to runs of about 10 ms.
	n := 1 << 10
	for {
		t := time.Now()
		pl.run(n)
		if el := time.Since(t); el > 5*time.Millisecond || n > 1<<29 {
			n = int(float64(n) * float64(10*time.Millisecond) / float64(el+1))
			break
		}
		n *= 4
	}
	n = max(n, 1)
	best := 0.0
	for end := time.Now().Add(d); ; {
		t := time.Now()
		pl.run(n)
		if g := pl.flops * float64(n) / float64(time.Since(t).Nanoseconds()); g > best {
			best = g
		}
		if time.Now().After(end) {
			break
		}
	}
	return best
}

// PeakISA names the instruction set PeakGFLOPS measures.
func PeakISA() string { return archPeak.name }
