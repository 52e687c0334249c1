package kernels

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// bwdScratch is one goroutine's buffers of the backward tile loop.
type bwdScratch struct {
	kt, vt, kp, dk, dv, s, ones []float32
	dp                          [2][]float32 // dP, then dS: two for the pending pair
	lo, hi                      []int32
}

func (sc *bwdScratch) ensure(br, cols, cp, d, dp int) {
	sc.kt = grow(sc.kt, d*cp)
	sc.vt = grow(sc.vt, d*cp)
	sc.kp = grow(sc.kp, cols*dp)
	if dp != d { // else dK/dV accumulate in the output
		sc.dk = grow(sc.dk, cols*dp)
		sc.dv = grow(sc.dv, cols*dp)
	}
	sc.s = grow(sc.s, br*cp)
	sc.dp[0] = grow(sc.dp[0], br*cp)
	sc.dp[1] = grow(sc.dp[1], br*cp)
	if n := max(cols, br); len(sc.ones) < n {
		sc.ones = make([]float32, n)
		for i := range sc.ones {
			sc.ones[i] = 1
		}
	}
	if len(sc.lo) < br {
		sc.lo, sc.hi = make([]int32, br), make([]int32, br)
	}
}

var bwdScratchPool = sync.Pool{New: func() any { return new(bwdScratch) }}

// bwdParallel runs fn(sc, i) for i in [0, n) in increasing order of
// start on up to threads goroutines (GOMAXPROCS when 0).
func bwdParallel(n, threads int, fn func(sc *bwdScratch, i int)) {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	threads = min(threads, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	work := func() {
		sc := bwdScratchPool.Get().(*bwdScratch)
		defer bwdScratchPool.Put(sc)
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return
			}
			fn(sc, i)
		}
	}
	for w := 1; w < threads; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	work()
	wg.Wait()
}
