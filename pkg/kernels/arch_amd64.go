//go:build !noasm && gc

package kernels

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

// simd is the Go side of one assembly implementation: register-tile GEMM
// kernels of mr rows and nr columns, driven over whole matrices here, with
// the partial last column panel computed through zero-padded copies.
type simd struct {
	mr, nr int
	nn     func(mr, tiles, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool, pf uintptr)
	tn     func(mr, tiles, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, alpha []float32, pf uintptr)
	smax   func(s []float32, lds, rows int, m, l, alpha []float32)
	nnMax  func(mr, tiles, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, mx []float32, pf uintptr)
	smaxP  func(s []float32, lds, rows int, m, l, alpha, mx []float32)
	ex     func(x []float32)
	ds     func(s, dp []float32, ld, rows, cols int, lse, delta []float32, scale float32)
	rb     func(dst, src []float32)
	w      int // lanes per vector
}

var (
	avx512 = &simd{mr: 6, nr: 64, w: 16, nn: gemmNNAvx512, tn: gemmTNAvx512, smax: softmaxColsAvx512, nnMax: gemmNNMaxAvx512, smaxP: softmaxColsPreAvx512, ex: expF32Avx512, ds: dsoftmaxAvx512, rb: roundBF16Avx512}
	avx2   = &simd{mr: 6, nr: 16, w: 8, nn: gemmNNAvx2, tn: gemmTNAvx2, smax: softmaxColsAvx2, ex: expF32Avx2, ds: dsoftmaxAvx2, rb: roundBF16Avx2}
)

func (s *simd) impl(name string) *impl {
	im := &impl{name: name, br: 192, bc: 192, nr: s.nr,
		gemmNN: s.gemmNN, gemmTN: s.gemmTN, softmaxCols: s.softmaxCols, exp: s.exp,
		dsoftmax: s.dsoftmax, roundBF16: s.roundBF16}
	if s.nnMax != nil {
		im.gemmNNMax, im.softmaxColsPre = s.gemmNNMax, s.softmaxColsPre
	}
	return im
}

// registerArch registers the SIMD implementations this CPU supports, best last.
func registerArch() {
	x := &cpu.X86
	if x.HasAVX2 && x.HasFMA {
		register(avx2.impl("avx2"))
		archPeak = peakLoop{fmaPeakAvx2, 2 * 8 * 12, "avx2"}
	}
	if x.HasAVX512F && x.HasAVX512BW && x.HasAVX512DQ && x.HasAVX512VL {
		register(avx512.impl("avx512"))
		archPeak = peakLoop{fmaPeakAvx512, 2 * 16 * 24, "avx512"}
		if x.HasAVX512BF16 {
			archBF16Peak = &peakLoop{dpbf16PeakAvx512, 4 * 16 * 24, "avx512bf16"}
			registerAMX()
		}
	}
}

// prefetcher hands out the cache lines of a region to prefetch, a call of
// a GEMM kernel at a time: each call prefetches one line every four steps
// of k. Once the region is used up, calls prefetch their own B operand
// (already cached: a harmless hint).
type prefetcher struct {
	next, end uintptr
}

// noPrefetch turns the prefetch hints off, for comparing with and without
// them in benchmarks.
var noPrefetch bool

func newPrefetcher(pf []float32) prefetcher {
	if len(pf) == 0 || noPrefetch {
		return prefetcher{}
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(pf)))
	return prefetcher{next: p, end: p + 4*uintptr(len(pf))}
}

// take returns where a call of tiles register tiles over k steps starts
// prefetching (its last call may run past the region's end: prefetching
// never faults), or fallback.
func (p *prefetcher) take(tiles, k int, fallback []float32) uintptr {
	n := uintptr(tiles*(k/4)) * 64
	if p.next < p.end {
		at := p.next
		p.next += n
		return at
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(fallback)))
}

// gemmNN runs the register tiles column panel by column panel, the full
// tiles of a panel in one call; pf is a region to prefetch meanwhile.
func (s *simd) gemmNN(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool, pf []float32) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 {
		gemmNNGeneric(m, n, k, a, lda, b, ldb, c, ldc, acc, nil)
		return
	}
	nr := s.nr
	full := n - n%nr
	pre := newPrefetcher(pf)
	tiles, rest := m/s.mr, m%s.mr
	run := func(i0, mr, tiles int, bp []float32, ldb int, cp []float32, ldc int) {
		ap := a[i0*lda : (i0+mr*tiles-1)*lda+k]
		if raceEnabled {
			raceTile(ap, mr*tiles, k, lda, false)
			raceTile(bp, k, nr, ldb, false)
			raceTile(cp, mr*tiles, nr, ldc, true)
		}
		s.nn(mr, tiles, k, ap, lda, bp, ldb, cp, ldc, acc, pre.take(tiles, k, bp))
	}
	for j0 := 0; j0 < full; j0 += nr {
		bp := b[j0 : (k-1)*ldb+j0+nr]
		if tiles > 0 {
			run(0, s.mr, tiles, bp, ldb, c[j0:(tiles*s.mr-1)*ldc+j0+nr], ldc)
		}
		if rest > 0 {
			i0 := tiles * s.mr
			run(i0, rest, 1, bp, ldb, c[i0*ldc+j0:(i0+rest-1)*ldc+j0+nr], ldc)
		}
	}
	if full == n {
		return
	}
	// The last panel: B and C through zero-padded copies.
	nt := n - full
	bt := make([]float32, k*nr)
	for p := 0; p < k; p++ {
		copy(bt[p*nr:p*nr+nt], b[p*ldb+full:p*ldb+n])
	}
	ct := make([]float32, s.mr*nr)
	for i0 := 0; i0 < m; i0 += s.mr {
		mr := min(s.mr, m-i0)
		for i := 0; i < mr; i++ {
			copy(ct[i*nr:i*nr+nt], c[(i0+i)*ldc+full:(i0+i)*ldc+n])
		}
		run(i0, mr, 1, bt, nr, ct[:mr*nr], nr)
		for i := 0; i < mr; i++ {
			copy(c[(i0+i)*ldc+full:(i0+i)*ldc+n], ct[i*nr:i*nr+nt])
		}
	}
}

// gemmTN is gemmNN's counterpart for k-major A with the alpha row scale.
func (s *simd) gemmTN(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, alpha []float32, pf []float32) {
	if m <= 0 || n <= 0 {
		return
	}
	if k <= 0 {
		gemmTNGeneric(m, n, k, a, lda, b, ldb, c, ldc, alpha, nil)
		return
	}
	nr, smr := s.nr, s.mr
	full := n - n%nr
	pre := newPrefetcher(pf)
	tiles, rest := m/smr, m%smr
	run := func(i0, mr, tiles int, bp []float32, ldb int, cp []float32, ldc int) {
		ap := a[i0 : (k-1)*lda+i0+mr*tiles]
		al := alpha[i0 : i0+mr*tiles]
		if raceEnabled {
			raceTile(ap, k, mr*tiles, lda, false)
			raceTile(bp, k, nr, ldb, false)
			raceTile(cp, mr*tiles, nr, ldc, true)
			raceTile(al, 1, mr*tiles, mr*tiles, false)
		}
		s.tn(mr, tiles, k, ap, lda, bp, ldb, cp, ldc, al, pre.take(tiles, k, bp))
	}
	for j0 := 0; j0 < full; j0 += nr {
		bp := b[j0 : (k-1)*ldb+j0+nr]
		if tiles > 0 {
			run(0, smr, tiles, bp, ldb, c[j0:(tiles*smr-1)*ldc+j0+nr], ldc)
		}
		if rest > 0 {
			i0 := tiles * smr
			run(i0, rest, 1, bp, ldb, c[i0*ldc+j0:(i0+rest-1)*ldc+j0+nr], ldc)
		}
	}
	if full == n {
		return
	}
	nt := n - full
	bt := make([]float32, k*nr)
	for p := 0; p < k; p++ {
		copy(bt[p*nr:p*nr+nt], b[p*ldb+full:p*ldb+n])
	}
	ct := make([]float32, smr*nr)
	for i0 := 0; i0 < m; i0 += smr {
		mr := min(smr, m-i0)
		for i := 0; i < mr; i++ {
			copy(ct[i*nr:i*nr+nt], c[(i0+i)*ldc+full:(i0+i)*ldc+n])
		}
		run(i0, mr, 1, bt, nr, ct[:mr*nr], nr)
		for i := 0; i < mr; i++ {
			copy(c[(i0+i)*ldc+full:(i0+i)*ldc+n], ct[i*nr:i*nr+nt])
		}
	}
}

// gemmNNMax is gemmNN (acc false) for n a multiple of nr, also folding the
// column maxima into mx.
func (s *simd) gemmNNMax(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, mx, pf []float32) {
	if m <= 0 || n <= 0 {
		return
	}
	nr := s.nr
	if k <= 0 || n%nr != 0 {
		s.gemmNN(m, n, k, a, lda, b, ldb, c, ldc, false, pf)
		for i := 0; i < m; i++ {
			for j, x := range c[i*ldc : i*ldc+n] {
				if !(mx[j] >= x) { // VMAXPS: x when either is NaN
					mx[j] = x
				}
			}
		}
		return
	}
	pre := newPrefetcher(pf)
	tiles, rest := m/s.mr, m%s.mr
	run := func(i0, mr, tiles, j0 int) {
		ap := a[i0*lda : (i0+mr*tiles-1)*lda+k]
		bp := b[j0 : (k-1)*ldb+j0+nr]
		cp := c[i0*ldc+j0 : (i0+mr*tiles-1)*ldc+j0+nr]
		mp := mx[j0 : j0+nr]
		if raceEnabled {
			raceTile(ap, mr*tiles, k, lda, false)
			raceTile(bp, k, nr, ldb, false)
			raceTile(cp, mr*tiles, nr, ldc, true)
			raceTile(mp, 1, nr, nr, true)
		}
		s.nnMax(mr, tiles, k, ap, lda, bp, ldb, cp, ldc, mp, pre.take(tiles, k, bp))
	}
	for j0 := 0; j0 < n; j0 += nr {
		if tiles > 0 {
			run(0, s.mr, tiles, j0)
		}
		if rest > 0 {
			run(tiles*s.mr, rest, 1, j0)
		}
	}
}

// softmaxColsPre is softmaxCols with the column maxima given in mx.
func (s *simd) softmaxColsPre(sc []float32, lds, rows int, m, l, alpha, mx []float32) {
	cols := len(m)
	if cols%s.w != 0 || rows <= 0 {
		s.softmaxCols(sc, lds, rows, m, l, alpha)
		return
	}
	sp := sc[:(rows-1)*lds+cols]
	if raceEnabled {
		raceTile(sp, rows, cols, lds, true)
		raceTile(mx, 1, cols, cols, false)
	}
	s.smaxP(sp, lds, rows, m, l[:cols], alpha[:cols], mx[:cols])
}

// softmaxCols runs the assembly on the columns in whole vectors and the
// generic code on the rest (callers pad to nr, so there is none in Fold).
func (s *simd) softmaxCols(sc []float32, lds, rows int, m, l, alpha []float32) {
	cols := len(m)
	full := cols - cols%s.w
	if full > 0 && rows > 0 {
		sp := sc[:(rows-1)*lds+full]
		if raceEnabled {
			raceTile(sp, rows, full, lds, true)
		}
		s.smax(sp, lds, rows, m[:full], l[:full], alpha[:full])
	} else if full > 0 {
		softmaxColsGeneric(nil, lds, 0, m[:full], l[:full], alpha[:full])
	}
	if full < cols {
		softmaxColsGeneric(sc[full:], lds, rows, m[full:], l[full:], alpha[full:])
	}
}

func (s *simd) exp(x []float32) {
	if raceEnabled {
		raceTile(x, 1, len(x), len(x), true)
	}
	s.ex(x)
}

// roundBF16 runs the assembly on whole vectors and the generic code on the
// tail.
func (s *simd) roundBF16(dst, src []float32) {
	n := len(dst)
	src = src[:n]
	full := n - n%s.w
	if full > 0 {
		if raceEnabled {
			raceTile(src[:full], 1, full, full, false)
			raceTile(dst[:full], 1, full, full, true)
		}
		s.rb(dst[:full], src[:full])
	}
	if full < n {
		roundBF16Generic(dst[full:], src[full:])
	}
}
