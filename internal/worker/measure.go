package worker

import (
	"bufio"
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// MeasureGFLOPS runs the active kernel on a fixed unmasked problem
// (B=1, H=4, N=Nk=512, D=64: 268 MFLOP per run) with threads goroutines
// (0 means GOMAXPROCS) for at least d (and at least one run) and returns
// the speed in GFLOP/s. Plans weight ranks by it.
func MeasureGFLOPS(ctx context.Context, d time.Duration, threads int) (float64, error) {
	p := &kernels.Params{Shape: kernels.Shape{B: 1, Hq: 4, Hkv: 4, D: 64}, N: 512, Nk: 512, Threads: threads}
	n := p.B * p.Hq * p.N * p.D
	rng := rand.New(rand.NewPCG(1, 2))
	q, k, v, o := make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range q {
		q[i], k[i], v[i] = float32(rng.NormFloat64()), float32(rng.NormFloat64()), float32(rng.NormFloat64())
	}
	// One warm-up run (pools, page faults) that does not count.
	if err := kernels.Attention(p, q, k, v, o, nil); err != nil {
		return 0, err
	}
	var runs int
	start := time.Now()
	for runs == 0 || time.Since(start) < d {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if err := kernels.Attention(p, q, k, v, o, nil); err != nil {
			return 0, err
		}
		runs++
	}
	secs := time.Since(start).Seconds()
	return p.FLOPs() * float64(runs) / secs / 1e9, nil
}

// memoryBytes returns the resident set size of the process (VmRSS on
// Linux), or the Go runtime's total memory where /proc is unavailable.
func memoryBytes() int64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			line := sc.Bytes()
			if !bytes.HasPrefix(line, []byte("VmRSS:")) {
				continue
			}
			f := bytes.Fields(line[len("VmRSS:"):])
			if len(f) >= 1 {
				if kb, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.Sys - ms.HeapReleased)
}
