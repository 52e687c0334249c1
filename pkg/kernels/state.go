package kernels

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
)

var negInf = float32(math.Inf(-1))

// State is the online-softmax state of a block of query rows for every batch
// and head: the running maximum M of the scaled logits, the running sum L of
// exp(logit - M), and the unnormalised accumulator O = Σ exp(logit - M)·v.
// Layout: M, L are [B, H, Rows]; O is [B, H, Rows, D].
//
// A State folded over disjoint key ranges and merged (in any order) equals
// the State folded over their union; Finalize turns it into the output and
// the log-sum-exp.
type State struct {
	B, H, Rows, D int
	M, L          []float32
	O             []float32
}

// NewState returns an empty state (M = -inf, L = 0, O = 0).
func NewState(b, h, rows, d int) *State {
	n := b * h * rows
	s := &State{B: b, H: h, Rows: rows, D: d,
		M: make([]float32, n), L: make([]float32, n), O: make([]float32, n*d)}
	s.Reset()
	return s
}

// Reset empties the state.
func (s *State) Reset() {
	for i := range s.M {
		s.M[i] = negInf
	}
	clear(s.L)
	clear(s.O)
}

// Fold adds the keys k and values v, at global key positions
// [kStart, kStart+nk), to the state of the queries q at global positions
// [qStart, qStart+s.Rows). q is [B, Hq, Rows, D]; k and v are [B, Hkv, nk, D].
// It is equivalent to, for every row i and visible key j (see Mask):
//
//	x      = scale · q[i]·k[j]
//	M'     = max(M, x)
//	L      = L·exp(M-M') + exp(x-M')
//	O      = O·exp(M-M') + exp(x-M')·v[j]
//	M      = M'
//
// Tiles that the mask hides entirely are skipped without reading k or v.
func (s *State) Fold(p *Params, q []float32, qStart int, k, v []float32, kStart, nk int) error {
	return s.FoldBlocks(context.Background(), p, q, qStart, 0, []KV{{K: k, V: v, Start: kStart, N: nk}})
}

// KV is a block of keys and values at global key positions
// [Start, Start+N): K and V hold B·Hkv heads of N rows of D values, head
// (b, h) from row (b·Hkv+h)·Stride. Stride 0 means N: K and V are
// [B, Hkv, N, D]; a larger Stride lets a block be a view into whole
// tensors (K = k[Start·D:] and Stride = Nk for k of [B, Hkv, Nk, D]).
type KV struct {
	K, V     []float32
	Start, N int
	Stride   int
}

func (b *KV) stride() int {
	if b.Stride == 0 {
		return b.N
	}
	return b.Stride
}

// FoldBlocks folds the key/value blocks into the state in the given order.
// The result is bit-identical to one Fold per block in that order, but each
// tile of query rows is transposed, and its part of the state loaded and
// stored, once for all the blocks instead of once per block, and the
// threads meet once: a rank holding several blocks folds them in one call.
//
// q holds the state's query rows, head (b, h) from row (b·Hq+h)·qStride;
// qStride 0 means s.Rows (q is [B, Hq, Rows, D]). Like KV.Stride, a larger
// stride lets q be a view into a whole tensor.
//
// The end of ctx stops the fold between tiles of query rows and returns
// ctx.Err(); the state is then partly folded and must be discarded.
func (s *State) FoldBlocks(ctx context.Context, p *Params, q []float32, qStart, qStride int, blocks []KV) error {
	if qStride == 0 {
		qStride = s.Rows
	}
	if err := s.checkQ(p, q, qStart, qStride); err != nil {
		return err
	}
	for i := range blocks {
		if err := checkKV(p, &blocks[i]); err != nil {
			if len(blocks) > 1 {
				return fmt.Errorf("block %d: %w", i, err)
			}
			return err
		}
	}
	if s.Rows == 0 || len(blocks) == 0 {
		return nil
	}
	im := active
	if im == amxImpl && p.Precision == PrecisionBF16 {
		return s.foldAMX(ctx, p, q, qStart, qStride, blocks)
	}
	mi := newMaskInfo(p)
	br, bc, nr := im.br, im.bc, im.nr
	qTiles := (s.Rows + br - 1) / br
	bhN := p.B * p.Hq
	units := bhN * qTiles
	scale := p.EffectiveScale()
	group := p.Group()
	d := p.D
	dp := roundUp(d, nr)
	bf := p.Precision == PrecisionBF16

	// Units run key/value head by key/value head and, within one, last
	// query tile first, the query heads of a group next to each other:
	// the cores then fold the same head's keys and values at the same
	// time (one reads them from memory, the others from the shared
	// cache), and under a causal mask the units that see the most keys
	// start first and the small ones end the run, which balances the
	// cores.
	done := ctx.Done()
	var stopped atomic.Bool
	parallelFor(units, p.Threads, func(sc *scratch, u int) {
		if done != nil {
			select {
			case <-done:
				stopped.Store(true)
				return
			default:
			}
		}
		kvh, r := u/(qTiles*group), u%(qTiles*group)
		t := qTiles - 1 - r/group
		bh := kvh*group + r%group
		b, h := bh/p.Hq, bh%p.Hq
		kvHead := b*p.Hkv + h/group
		r0 := t * br
		rows := min(br, s.Rows-r0)
		rp := roundUp(rows, nr)
		row0 := bh*s.Rows + r0 // in the state
		qRow0 := bh*qStride + r0
		sc.ensure(rp, bc, d, dp)
		if bf {
			sc.kr, sc.vr = grow(sc.kr, bc*d), grow(sc.vr, bc*dp)
		}
		lo, hi := sc.lo[:rows], sc.hi[:rows]
		var sp spans
		mi.spans(qStart+r0, sc.rlo[:rows], sc.rhi[:rows], &sp)
		if !sp.seesAny(blocks) {
			return // no row of this unit sees any of these keys
		}

		// Qᵀ, scaled, zero-padded to rp columns and stored as panels of pw
		// columns, each panel [d × pw] contiguous so that the GEMM streams
		// it from L1 without cache-set conflicts:
		// qt[(i/pw)·pw·d + t·pw + i%pw] = scale·q[i][t].
		pw := nr
		if pw == 1 {
			pw = rp
		}
		qt := sc.qt[:d*rp]
		clear(qt)
		for i := 0; i < rows; i++ {
			qi := q[(qRow0+i)*d : (qRow0+i+1)*d]
			pq := qt[(i/pw)*pw*d+i%pw:]
			if bf {
				for t, x := range qi {
					pq[t*pw] = bf16(scale * x)
				}
				continue
			}
			for t, x := range qi {
				pq[t*pw] = scale * x
			}
		}
		mT, lT, alpha := sc.m[:rp], sc.l[:rp], sc.alpha[:rp]
		copy(mT, s.M[row0:row0+rows])
		copy(lT, s.L[row0:row0+rows])
		for i := rows; i < rp; i++ {
			mT[i], lT[i] = negInf, 0
		}
		oS := s.O[row0*d : (row0+rows)*d]
		oT := oS
		if dp != d {
			oT = sc.o[:rows*dp]
			clear(oT)
			for i := 0; i < rows; i++ {
				copy(oT[i*dp:i*dp+d], oS[i*d:i*d+d])
			}
		}
		touched := false
		for _, blk := range blocks {
			if !sp.sees(blk) {
				continue
			}
			k, v, kStart, nk := blk.K, blk.V, blk.Start, blk.N
			kvBase := kvHead * blk.stride() * d
			for c0 := 0; c0 < nk; c0 += bc {
				c1 := min(c0+bc, nk)
				cols := c1 - c0
				class := sp.classify(kStart+c0, kStart+c1, lo, hi)
				if class == tileHidden {
					continue
				}
				touched = true
				// Sᵀ[j][i] = k[c0+j]·(scale·q[i]).
				st := sc.s[:cols*rp]
				kb := k[kvBase+c0*d : kvBase+c1*d]
				if bf {
					kr := sc.kr[:cols*d]
					im.roundBF16(kr, kb)
					kb = kr
				}
				vNow := v[kvBase+c0*d : kvBase+c1*d]
				var kNext []float32
				if c1 < nk {
					kNext = k[kvBase+c1*d : kvBase+min(c1+bc, nk)*d]
				}
				if class == tilePartial {
					pt := partialTile{im: im, sc: sc, rows: rows, rp: rp, pw: pw, d: d, dp: dp, cols: cols,
						base: int32(kStart + c0), bf: bf, qt: qt, kb: kb, v: vNow, kNext: kNext,
						o: oT, m: mT, l: lT, alpha: alpha, lo: lo, hi: hi}
					pt.fold()
					continue
				}
				// While it computes Sᵀ, the GEMM prefetches this tile's V
				// (a part per panel of Qᵀ); while it computes P·V, the
				// next tile's K: both arrive in L2 before they are read.
				np := rp / pw
				// A full tile takes its column maxima from the GEMM.
				fused := im.gemmNNMax != nil
				mx := sc.mx[:rp]
				if fused {
					copy(mx, mT)
				}
				for j0 := 0; j0 < rp; j0 += pw {
					part := vNow[len(vNow)*(j0/pw)/np : len(vNow)*(j0/pw+1)/np]
					if fused {
						im.gemmNNMax(cols, pw, d, kb, d, qt[j0*d:], pw, st[j0:], rp, mx[j0:j0+pw], part)
						continue
					}
					im.gemmNN(cols, pw, d, kb, d, qt[j0*d:], pw, st[j0:], rp, false, part)
				}
				if fused {
					im.softmaxColsPre(st, rp, cols, mT, lT, alpha, mx)
				} else {
					im.softmaxCols(st, rp, cols, mT, lT, alpha)
				}
				// O = diag(alpha)·O + Pᵀᵀ·V.
				vb, ldv := tileV(im, sc, vNow, cols, d, dp, bf)
				if bf {
					// L above summed P in float32; the product sees
					// bfloat16 P.
					im.roundBF16(st[:cols*rp], st[:cols*rp])
				}
				im.gemmTN(rows, dp, cols, st, rp, vb, ldv, oT, dp, alpha, kNext)
			}
		}
		if !touched {
			return
		}
		copy(s.M[row0:row0+rows], mT)
		copy(s.L[row0:row0+rows], lT)
		if dp != d {
			for i := 0; i < rows; i++ {
				copy(oS[i*d:i*d+d], oT[i*dp:i*dp+d])
			}
		}
	})
	if stopped.Load() {
		return ctx.Err()
	}
	return nil
}

func roundUp(x, m int) int { return (x + m - 1) / m * m }

// strided reports whether x holds bh heads of rows×d values, head i at
// row offset i·stride: len(x) >= ((bh-1)·stride + rows)·d.
func strided(x []float32, bh, rows, stride, d int) bool {
	if bh == 0 || rows == 0 {
		return true
	}
	return len(x) >= ((bh-1)*stride+rows)*d
}

func (s *State) checkQ(p *Params, q []float32, qStart, qStride int) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if s.B != p.B || s.H != p.Hq || s.D != p.D {
		return invalid("state is [%d,%d,%d,%d], expected B=%d Hq=%d D=%d", s.B, s.H, s.Rows, s.D, p.B, p.Hq, p.D)
	}
	if qStart < 0 || qStart+s.Rows > p.N {
		return invalid("query rows [%d,%d) outside the sequence of %d", qStart, qStart+s.Rows, p.N)
	}
	switch bh := p.B * p.Hq; {
	case qStride == s.Rows:
		if want := bh * s.Rows * p.D; len(q) != want {
			return invalid("q has %d values, expected %d ([%d,%d,%d,%d])", len(q), want, p.B, p.Hq, s.Rows, p.D)
		}
	case qStride < s.Rows:
		return invalid("query stride %d rows, expected >= the state's %d rows", qStride, s.Rows)
	case !strided(q, bh, s.Rows, qStride, p.D):
		return invalid("q has %d values, too few for %d heads of %d rows %d rows apart (D=%d)", len(q), bh, s.Rows, qStride, p.D)
	}
	return nil
}

func checkKV(p *Params, b *KV) error {
	if b.N < 0 || b.Start < 0 || b.Start+b.N > p.Nk {
		return invalid("key rows [%d,%d) outside the sequence of %d", b.Start, b.Start+b.N, p.Nk)
	}
	bh := p.B * p.Hkv
	switch stride := b.stride(); {
	case stride == b.N:
		want := bh * b.N * p.D
		if len(b.K) != want {
			return invalid("k has %d values, expected %d ([%d,%d,%d,%d])", len(b.K), want, p.B, p.Hkv, b.N, p.D)
		}
		if len(b.V) != want {
			return invalid("v has %d values, expected %d ([%d,%d,%d,%d])", len(b.V), want, p.B, p.Hkv, b.N, p.D)
		}
	case stride < b.N:
		return invalid("key stride %d rows, expected >= the block's %d rows", stride, b.N)
	case !strided(b.K, bh, b.N, stride, p.D):
		return invalid("k has %d values, too few for %d heads of %d rows %d rows apart (D=%d)", len(b.K), bh, b.N, stride, p.D)
	case !strided(b.V, bh, b.N, stride, p.D):
		return invalid("v has %d values, too few for %d heads of %d rows %d rows apart (D=%d)", len(b.V), bh, b.N, stride, p.D)
	}
	return nil
}

// Merge folds o, a state of the same rows over a disjoint key range, into s:
//
//	M' = max(Ms, Mo); a = exp(Ms-M'); b = exp(Mo-M')
//	L  = Ls·a + Lo·b;  O = Os·a + Oo·b
func (s *State) Merge(o *State) error {
	if s.B != o.B || s.H != o.H || s.Rows != o.Rows || s.D != o.D {
		return invalid("merging state [%d,%d,%d,%d] into [%d,%d,%d,%d]", o.B, o.H, o.Rows, o.D, s.B, s.H, s.Rows, s.D)
	}
	d := s.D
	for i := range s.M {
		m1, m2 := s.M[i], o.M[i]
		if math.IsInf(float64(m2), -1) {
			continue
		}
		if math.IsInf(float64(m1), -1) {
			s.M[i], s.L[i] = m2, o.L[i]
			copy(s.O[i*d:i*d+d], o.O[i*d:i*d+d])
			continue
		}
		m := max(m1, m2)
		a, b := exp32(m1-m), exp32(m2-m)
		s.M[i] = m
		s.L[i] = s.L[i]*a + o.L[i]*b
		so, oo := s.O[i*d:i*d+d], o.O[i*d:i*d+d]
		for t := range so {
			so[t] = so[t]*a + oo[t]*b
		}
	}
	return nil
}

// Finalize writes O/L into out ([B, H, Rows, D]) and M + log L into lse
// ([B, H, Rows], natural log) when lse is not nil. Rows that saw no key get
// 0 and -inf.
func (s *State) Finalize(out, lse []float32) error {
	if len(out) != len(s.O) {
		return invalid("output has %d values, expected %d", len(out), len(s.O))
	}
	if lse != nil && len(lse) != len(s.M) {
		return invalid("lse has %d values, expected %d", len(lse), len(s.M))
	}
	d := s.D
	for i, l := range s.L {
		o := out[i*d : i*d+d]
		if l == 0 || math.IsInf(float64(s.M[i]), -1) {
			clear(o)
			if lse != nil {
				lse[i] = negInf
			}
			continue
		}
		inv := 1 / l
		for t, x := range s.O[i*d : i*d+d] {
			o[t] = x * inv
		}
		if lse != nil {
			lse[i] = s.M[i] + float32(math.Log(float64(l)))
		}
	}
	return nil
}

// MergeOutputs combines two finalized partial results over disjoint key
// ranges, (o1, lse1) and (o2, lse2), into (o1, lse1):
//
//	lse = log(exp(lse1) + exp(lse2));  o1 = o1·exp(lse1-lse) + o2·exp(lse2-lse)
//
// Rows with lse = -inf on both sides stay 0 and -inf.
func MergeOutputs(o1, lse1, o2, lse2 []float32, d int) error {
	if len(lse1) != len(lse2) || len(o1) != len(o2) || len(o1) != len(lse1)*d {
		return invalid("merging outputs of %d/%d values and %d/%d rows with D = %d", len(o1), len(o2), len(lse1), len(lse2), d)
	}
	for i := range lse1 {
		a, b := lse1[i], lse2[i]
		if math.IsInf(float64(b), -1) {
			continue
		}
		x, y := o1[i*d:i*d+d], o2[i*d:i*d+d]
		if math.IsInf(float64(a), -1) {
			lse1[i] = b
			copy(x, y)
			continue
		}
		m := max(a, b)
		l := m + float32(math.Log(math.Exp(float64(a-m))+math.Exp(float64(b-m))))
		wa, wb := exp32(a-l), exp32(b-l)
		for t := range x {
			x[t] = x[t]*wa + y[t]*wb
		}
		lse1[i] = l
	}
	return nil
}

// Attention computes o = softmax(q·kᵀ·scale + mask)·v for the whole problem,
// on all cores; lse ([B, Hq, N]) is written when not nil.
// q is [B, Hq, N, D], k and v are [B, Hkv, Nk, D], o is [B, Hq, N, D].
func Attention(p *Params, q, k, v, o, lse []float32) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if want := p.B * p.Hq * p.N * p.D; len(o) != want {
		return invalid("o has %d values, expected %d", len(o), want)
	}
	s := &State{B: p.B, H: p.Hq, Rows: p.N, D: p.D,
		M: make([]float32, p.B*p.Hq*p.N), L: make([]float32, p.B*p.Hq*p.N), O: o}
	s.Reset()
	if err := s.Fold(p, q, 0, k, v, 0, p.Nk); err != nil {
		return err
	}
	// Finalize in place: O is o.
	return s.Finalize(o, lse)
}

func exp32(x float32) float32 { return float32(math.Exp(float64(x))) }

// scratch is one goroutine's tile buffers.
type scratch struct {
	s, qt, o, vp     []float32
	kr, vr           []float32 // bfloat16-rounded K and V tiles
	m, l, alpha, mx  []float32
	lo, hi, rlo, rhi []int32
}

func grow(x []float32, n int) []float32 {
	if len(x) < n {
		return make([]float32, n)
	}
	return x
}

func (sc *scratch) ensure(rp, bc, d, dp int) {
	sc.s = grow(sc.s, rp*bc)
	sc.qt = grow(sc.qt, rp*d)
	sc.o = grow(sc.o, rp*dp)
	sc.vp = grow(sc.vp, bc*dp)
	sc.m = grow(sc.m, rp)
	sc.l = grow(sc.l, rp)
	sc.alpha = grow(sc.alpha, rp)
	sc.mx = grow(sc.mx, rp)
	if len(sc.lo) < rp {
		sc.lo, sc.hi = make([]int32, rp), make([]int32, rp)
		sc.rlo, sc.rhi = make([]int32, rp), make([]int32, rp)
	}
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// parallelFor runs fn(sc, i) for i in [0, n) on up to threads goroutines
// (GOMAXPROCS when 0), each with its own scratch.
func parallelFor(n, threads int, fn func(sc *scratch, i int)) {
	if threads <= 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	threads = min(threads, n)
	if threads <= 1 {
		sc := scratchPool.Get().(*scratch)
		for i := 0; i < n; i++ {
			fn(sc, i)
		}
		scratchPool.Put(sc)
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < threads; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := scratchPool.Get().(*scratch)
			defer scratchPool.Put(sc)
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(sc, i)
			}
		}()
	}
	wg.Wait()
}

// String describes the state's shape.
func (s *State) String() string {
	return fmt.Sprintf("State[B=%d H=%d rows=%d D=%d]", s.B, s.H, s.Rows, s.D)
}
