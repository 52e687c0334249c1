package kernels

import (
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
)

// BackwardRows is the query side of one backward step: rows
// [Start, Start+Rows) of the query sequence, for every batch and head.
// Q, DO and DQ are [B, Hq, Rows, D]; LSE and Delta are [B, Hq, Rows].
// LSE is the forward's log-sum-exp (natural log, -inf for a row that sees
// no key) and Delta is rowsum(dO∘O) (see BackwardDelta).
type BackwardRows struct {
	Start, Rows int
	Q, DO       []float32
	// Stride, when not 0, is how many rows apart the heads of Q and DO
	// are: head i from row i·Stride, so they can be views of a larger
	// tensor (the last head may end at its last row). 0 means Rows.
	Stride     int
	LSE, Delta []float32
	// DQ receives the rows' query gradient; BackwardBlock adds to it.
	DQ []float32
}

// stride is how many rows apart the heads of Q and DO are.
func (r *BackwardRows) stride() int {
	if r.Stride == 0 {
		return r.Rows
	}
	return r.Stride
}

// AttentionBackward computes the gradients of sum(o·do) for the whole
// problem, o = softmax(q·kᵀ·scale + mask)·v with lse its log-sum-exp, as
// Attention returns them: q, o, do and dq are [B, Hq, N, D], lse is
// [B, Hq, N], k, v, dk and dv are [B, Hkv, Nk, D]. dq, dk and dv are
// overwritten; for grouped heads dk and dv are summed over the query heads
// of a group; rows that see no key get a zero gradient. It runs on
// p.Threads goroutines and its result does not depend on their number or
// scheduling (bit-identical for the same inputs). It is equivalent to
//
//	delta := BackwardDelta(o, do)
//	dq, dk, dv = 0
//	p.BackwardBlock(&BackwardRows{Start: 0, Rows: N, q, do, lse, delta, dq}, KV{k, v, 0, Nk}, dk, dv)
func AttentionBackward(p *Params, q, k, v, o, lse, do, dq, dk, dv []float32) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if !fitsInt(p.B, p.Hq, p.N, p.D) || !fitsInt(p.B, p.Hkv, p.Nk, p.D) {
		return invalid("shape B=%d Hq=%d Hkv=%d N=%d Nk=%d D=%d has more values than an int holds", p.B, p.Hq, p.Hkv, p.N, p.Nk, p.D)
	}
	nq, nkv, rows := p.B*p.Hq*p.N*p.D, p.B*p.Hkv*p.Nk*p.D, p.B*p.Hq*p.N
	for _, x := range []struct {
		name string
		x    []float32
		want int
	}{{"o", o, nq}, {"do", do, nq}, {"dq", dq, nq}, {"lse", lse, rows}, {"dk", dk, nkv}, {"dv", dv, nkv}} {
		if len(x.x) != x.want {
			return invalid("%s has %d values, expected %d", x.name, len(x.x), x.want)
		}
	}
	delta := make([]float32, rows)
	r := &BackwardRows{Start: 0, Rows: p.N, Q: q, DO: do, LSE: lse, Delta: delta, DQ: dq}
	kv := KV{K: k, V: v, Start: 0, N: p.Nk}
	if err := p.checkBackward(r, &kv, dk, dv, p.Nk); err != nil {
		return err
	}
	if err := BackwardDelta(o, do, delta, p.D); err != nil {
		return err
	}
	clear(dq)
	clear(dk)
	clear(dv)
	if p.N > 0 && p.Nk > 0 {
		p.backward(r, &kv, dk, dv, p.Nk)
	}
	return nil
}

// BackwardDelta computes delta[i] = Σ_t o[i·d+t]·do[i·d+t] (summed in
// float64) for every row i: the Δ = rowsum(dO∘O) of the backward pass.
func BackwardDelta(o, do, delta []float32, d int) error {
	if d < 1 {
		return invalid("head dim D = %d, expected >= 1", d)
	}
	if len(o) != len(delta)*d || len(do) != len(o) {
		return invalid("delta of %d rows needs o and do of %d values (D = %d), got %d and %d",
			len(delta), len(delta)*d, d, len(o), len(do))
	}
	for i := range delta {
		var s float64
		oi, di := o[i*d:i*d+d], do[i*d:i*d+d]
		for t, x := range oi {
			s += float64(x) * float64(di[t])
		}
		delta[i] = float32(s)
	}
	return nil
}

// BackwardBlock adds to r.DQ, dk and dv the gradient contributions of the
// query rows r and the key/value block kv (FlashAttention-2's backward on
// one (query block, key block) pair); summed over the key blocks of a
// partition of the keys it gives the gradients of sum(O·dO). dk and dv are
// laid out like kv.K and kv.V (same Stride). It is equivalent to, for
// every batch, query head h (key/value head h/group), row i of r and key j
// of kv that the mask lets i see:
//
//	S    = scale·q_i·k_j
//	P    = exp(S - lse_i)            0 when lse_i = -inf
//	dP   = dO_i·v_j
//	dS   = P·(dP - Δ_i)
//	dv_j += P·dO_i
//	dk_j += scale·dS·q_i
//	dq_i += scale·dS·k_j
//
// Tiles the mask hides entirely are skipped without reading their memory.
// Each row of dq accumulates its keys in increasing key order, and each
// key of dk and dv its query rows in increasing order per query head, so
// calling BackwardBlock on the blocks of a partition of the keys in
// increasing key order is bit-identical to one call on their union, as is
// splitting the query rows (in order) when Hq = Hkv. It runs on p.Threads
// goroutines; the result does not depend on their number or scheduling.
func (p *Params) BackwardBlock(r *BackwardRows, kv KV, dk, dv []float32) error {
	return p.BackwardBlockTo(r, kv, dk, dv, kv.stride())
}

// BackwardBlockTo is BackwardBlock with dk and dv laid out apart from
// kv: head i of dk and dv from row i·gradStride (0: kv.N, contiguous), so
// K and V can be read in place from views of a larger tensor while the
// gradients go to a buffer of their own, or the other way round. The
// values are those of BackwardBlock on copies.
func (p *Params) BackwardBlockTo(r *BackwardRows, kv KV, dk, dv []float32, gradStride int) error {
	if gradStride == 0 {
		gradStride = kv.N
	}
	if gradStride < kv.N {
		return invalid("gradient stride %d below the block's %d keys", gradStride, kv.N)
	}
	if err := p.checkBackward(r, &kv, dk, dv, gradStride); err != nil {
		return err
	}
	if r.Rows == 0 || kv.N == 0 {
		return nil
	}
	p.backward(r, &kv, dk, dv, gradStride)
	return nil
}

func (p *Params) checkBackward(r *BackwardRows, kv *KV, dk, dv []float32, gradStride int) error {
	if err := p.Validate(); err != nil {
		return err
	}
	if r.Rows < 0 || r.Start < 0 || r.Start+r.Rows > p.N {
		return invalid("query rows [%d,%d) outside the sequence of %d", r.Start, r.Start+r.Rows, p.N)
	}
	if !fitsInt(p.B, p.Hq, r.Rows, p.D) || !fitsInt(p.B, p.Hkv, p.Nk, p.D) {
		return invalid("shape B=%d Hq=%d Hkv=%d rows=%d Nk=%d D=%d has more values than an int holds", p.B, p.Hq, p.Hkv, r.Rows, p.Nk, p.D)
	}
	nq, rows := p.B*p.Hq*r.Rows*p.D, p.B*p.Hq*r.Rows
	if r.Stride != 0 {
		if r.Stride < r.Rows {
			return invalid("query stride %d below the %d rows", r.Stride, r.Rows)
		}
		if !fitsInt(p.B, p.Hq, r.Stride, p.D) {
			return invalid("query stride %d: B=%d Hq=%d D=%d have more values than an int holds", r.Stride, p.B, p.Hq, p.D)
		}
		for _, x := range []struct {
			name string
			x    []float32
		}{{"q", r.Q}, {"do", r.DO}} {
			if !strided(x.x, p.B*p.Hq, r.Rows, r.Stride, p.D) {
				return invalid("%s has %d values, too few for %d heads of %d rows %d rows apart (D=%d)", x.name, len(x.x), p.B*p.Hq, r.Rows, r.Stride, p.D)
			}
		}
	}
	for _, x := range []struct {
		name string
		x    []float32
		want int
	}{{"q", r.Q, nq}, {"do", r.DO, nq}, {"dq", r.DQ, nq}, {"lse", r.LSE, rows}, {"delta", r.Delta, rows}} {
		if r.Stride != 0 && (x.name == "q" || x.name == "do") {
			continue
		}
		if len(x.x) != x.want {
			return invalid("%s has %d values, expected %d ([%d,%d,%d...])", x.name, len(x.x), x.want, p.B, p.Hq, r.Rows)
		}
	}
	if err := checkKV(p, kv); err != nil {
		return err
	}
	bh := p.B * p.Hkv
	if !strided(dk, bh, kv.N, gradStride, p.D) {
		return invalid("dk has %d values, too few for %d heads of %d rows %d rows apart (D=%d)", len(dk), bh, kv.N, gradStride, p.D)
	}
	if !strided(dv, bh, kv.N, gradStride, p.D) {
		return invalid("dv has %d values, too few for %d heads of %d rows %d rows apart (D=%d)", len(dv), bh, kv.N, gradStride, p.D)
	}
	return nil
}

// fitsInt reports whether the product of the non-negative xs fits in an int.
func fitsInt(xs ...int) bool {
	prod := uint64(1)
	for _, x := range xs {
		hi, lo := bits.Mul64(prod, uint64(x))
		if hi != 0 || lo > math.MaxInt {
			return false
		}
		prod = lo
	}
	return true
}

// backward runs the tile loop of BackwardBlock on checked arguments, head
// i of dk and dv from row i·gradStride.
//
// Work units are (key tile, key/value head), key tile major. A unit packs
// scale·Kᵀ and Vᵀ of its tile once, keeps the tile's dK and dV in its own
// accumulators, and sweeps the query heads of its group and their query
// tiles in order; per visible (query tile, key tile) pair:
//
//	S  = Q·(scale·K)ᵀ                 gemmNN, Q in place, one query per row
//	mask the partial tiles with -inf
//	dP = dO·Vᵀ                        gemmNN, dO in place
//	P  = exp(S - lse); dS = scale·P∘(dP - Δ)   dsoftmax, row by row
//	dV += Pᵀ·dO                       gemmTN, P read k-major
//	dK += dSᵀ·Q                       gemmTN
//	dQ += dS·K                        gemmNN, K in place, in key tile order
//
// dQ of a query tile is shared by the units of all key tiles: they add to
// it in key tile order, each waiting for its turn (the previous visible key
// tile of that query tile is done), so the sum is the same whatever the
// scheduling. Units of lower key tiles are taken first and wait only on
// lower ones, so the waits end.
func (p *Params) backward(r *BackwardRows, kv *KV, dk, dv []float32, gradStride int) {
	im := active
	mi := newMaskInfo(p)
	br, bc := bwdTiles(im)
	nr := im.nr
	d := p.D
	dp := roundUp(d, nr)
	rows := r.Rows
	bhq := p.B * p.Hq
	qTiles := (rows + br - 1) / br
	kTiles := (kv.N + bc - 1) / bc
	scale := p.EffectiveScale()
	group := p.Group()
	kStart, kEnd := kv.Start, kv.Start+kv.N

	// Visible key ranges of every row (the same for every head).
	rlo, rhi := make([]int32, rows), make([]int32, rows)
	sps := make([]spans, qTiles)
	for t := range sps {
		r0, r1 := t*br, min(t*br+br, rows)
		mi.spans(r.Start+r0, rlo[r0:r1], rhi[r0:r1], &sps[t])
	}
	// lse with +inf for rows that see no key: exp(S - lse) is then 0.
	lse := make([]float32, bhq*rows)
	for i, x := range r.LSE {
		if math.IsInf(float64(x), -1) {
			x = float32(math.Inf(1))
		}
		lse[i] = x
	}
	// Q, dO and dQ with rows padded to dp columns when D is not a multiple
	// of the register tile width.
	q, do, dq, ldq := r.Q, r.DO, r.DQ, d
	qStride := r.stride()
	if dp != d {
		q, do, dq, ldq = padRows(r.Q, d, dp), padRows(r.DO, d, dp), padRows(r.DQ, d, dp), dp
	}
	// turn[bh·qTiles + t] is the key tile whose turn it is to add to dQ of
	// query tile t of head bh (kTiles when none is left).
	turn := make([]atomic.Int32, bhq*qTiles)
	for t := range sps {
		first := int32(nextVisible(&sps[t], -1, kStart, kEnd, bc))
		for bh := 0; bh < bhq; bh++ {
			turn[bh*qTiles+t].Store(first)
		}
	}
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	waitTurn := func(i int, j int32) {
		if turn[i].Load() == j {
			return
		}
		mu.Lock()
		for turn[i].Load() != j {
			cond.Wait()
		}
		mu.Unlock()
	}
	passTurn := func(i int, next int32) {
		turn[i].Store(next)
		mu.Lock()
		cond.Broadcast()
		mu.Unlock()
	}

	bhkv := p.B * p.Hkv
	stride := kv.stride()
	ds := im.dsoftmax
	// dQ += dS·K runs over the keys in halves of at most 96: a 96-key
	// panel of K (96 rows × 64 columns) stays within 24 KiB of L1 (all
	// 192: 48 KiB; 141 against 129-133 GFLOP per CPU-second in two of
	// three alternating runs at N=4096 with K read in place, the third
	// within the load's noise; with K packed into panels the two measure
	// alike). The accumulator chain is the same, so the bits are too.
	kSplit := cols96(im)
	bwdParallel(kTiles*bhkv, p.Threads, func(sc *bwdScratch, u int) {
		j := u / bhkv
		bkv := u % bhkv
		c0, c1 := j*bc, min(j*bc+bc, kv.N)
		cols := c1 - c0
		pw := nr
		if pw == 1 {
			pw = cols
		}
		cp := roundUp(cols, pw)
		k0, k1 := kStart+c0, kStart+c1
		seen := false
		for t := range sps {
			if sps[t].sees(KV{Start: k0, N: cols}) {
				seen = true
				break
			}
		}
		if !seen {
			return
		}
		sc.ensure(br, cols, cp, d, dp)
		kvBase := bkv * stride * d
		kb := kv.K[kvBase+c0*d : kvBase+c1*d]
		vb := kv.V[kvBase+c0*d : kvBase+c1*d]
		// scale·Kᵀ and Vᵀ as panels of pw columns, [d × pw] each, zero-padded.
		kt, vt := sc.kt[:d*cp], sc.vt[:d*cp]
		clear(kt[(cp-pw)*d:])
		clear(vt[(cp-pw)*d:])
		for c := 0; c < cols; c++ {
			kc, vc := kb[c*d:c*d+d], vb[c*d:c*d+d]
			off := (c/pw)*pw*d + c%pw
			for t := range kc {
				kt[off+t*pw] = scale * kc[t]
				vt[off+t*pw] = vc[t]
			}
		}
		// K for dQ += dS·K: with register tiles of nr > 1 columns, as
		// panels of nr columns, [cols × nr] each, contiguous and
		// zero-padded (in place, rows of K are 4·D bytes apart and a
		// panel's rows share L1 sets); the generic code reads K in place.
		km, ldk, kpw := kb, d, dp
		if nr > 1 {
			km, ldk, kpw = sc.kp[:cols*dp], nr, nr
			for c := 0; c < cols; c++ {
				kc := kb[c*d : c*d+d]
				for pn := 0; pn < dp; pn += nr {
					dst := km[pn*cols+c*nr : pn*cols+c*nr+nr]
					n := copy(dst, kc[min(pn, d):min(pn+nr, d)])
					clear(dst[n:])
				}
			}
		}
		// The tile's dK and dV accumulate in place, its rows of dk and dv
		// being contiguous; with rows padded to dp columns, in the
		// unit's own accumulators, copied in and out.
		gBase := bkv * gradStride * d
		dkOut, dvOut := dk[gBase+c0*d:gBase+c1*d], dv[gBase+c0*d:gBase+c1*d]
		dkAcc, dvAcc := dkOut, dvOut
		if dp != d {
			dkAcc, dvAcc = sc.dk[:cols*dp], sc.dv[:cols*dp]
			clear(dkAcc)
			clear(dvAcc)
			for c := 0; c < cols; c++ {
				copy(dkAcc[c*dp:c*dp+d], dkOut[c*d:c*d+d])
				copy(dvAcc[c*dp:c*dp+d], dvOut[c*d:c*d+d])
			}
		}
		ones := sc.ones[:max(cols, br)]
		// The dQ product of a pair waits for its turn while the next pair
		// is computed: one pair is pending at a time, its dS in the
		// other of the two dS buffers. Pairs on different query tiles or
		// heads may add in any order; each dQ tile still receives its key
		// tiles in order.
		var pend struct {
			ok       bool
			ti, row0 int
			nrow     int
			next     int32
			buf      int
		}
		flush := func() {
			if !pend.ok {
				return
			}
			waitTurn(pend.ti, int32(j))
			dqs := dq[pend.row0*ldq : (pend.row0+pend.nrow)*ldq]
			dS := sc.dp[pend.buf]
			for pn := 0; pn < dp; pn += kpw {
				kp := km[pn*cols:]
				if kpw == dp {
					kp = km // in place
				}
				for p0 := 0; p0 < cols; p0 += kSplit {
					im.gemmNN(pend.nrow, kpw, min(kSplit, cols-p0), dS[p0:], cp, kp[p0*ldk:], ldk, dqs[pn:], ldq, true, nil)
				}
			}
			passTurn(pend.ti, pend.next)
			pend.ok = false
		}
		b, kvh := bkv/p.Hkv, bkv%p.Hkv
		for g := 0; g < group; g++ {
			bh := b*p.Hq + kvh*group + g
			for t := range sps {
				sp := &sps[t]
				if !sp.sees(KV{Start: k0, N: cols}) {
					continue
				}
				r0 := t * br
				nrow := min(br, rows-r0)
				lo, hi := sc.lo[:nrow], sc.hi[:nrow]
				class := sp.classify(k0, k1, lo, hi)
				if class == tileHidden {
					continue
				}
				if pend.ok && turn[pend.ti].Load() == int32(j) {
					flush() // its turn came: no wait
				}
				buf := 0
				if pend.ok && pend.buf == 0 {
					buf = 1
				}
				row0, qrow0 := bh*rows+r0, bh*qStride+r0
				qs := q[qrow0*ldq : (qrow0+nrow)*ldq]
				dos := do[qrow0*ldq : (qrow0+nrow)*ldq]
				s, dpt := sc.s[:nrow*cp], sc.dp[buf][:nrow*cp]
				// Meanwhile the next query tile's Q and dO are prefetched
				// into L2, a part per panel.
				var nextQ, nextDO []float32
				if t+1 < len(sps) {
					r1 := qrow0 + nrow
					n1 := min(br, rows-(t+1)*br)
					nextQ, nextDO = q[r1*ldq:(r1+n1)*ldq], do[r1*ldq:(r1+n1)*ldq]
				}
				np := cp / pw
				for j0 := 0; j0 < cp; j0 += pw {
					pa, pb := len(nextQ)*(j0/pw)/np, len(nextQ)*(j0/pw+1)/np
					im.gemmNN(nrow, pw, d, qs, ldq, kt[j0*d:], pw, s[j0:], cp, false, nextQ[pa:pb])
					im.gemmNN(nrow, pw, d, dos, ldq, vt[j0*d:], pw, dpt[j0:], cp, false, nextDO[pa:pb])
				}
				if class == tilePartial {
					for i := 0; i < nrow; i++ {
						a, e := int(lo[i])-k0, int(hi[i])-k0
						row := s[i*cp : i*cp+cols]
						fillNegInf(row[:a])
						fillNegInf(row[e:])
					}
				}
				ds(s, dpt, cp, nrow, cp, lse[row0:row0+nrow], r.Delta[row0:row0+nrow], scale)
				im.gemmTN(cols, dp, nrow, s, cp, dos, ldq, dvAcc, dp, ones, nil)
				im.gemmTN(cols, dp, nrow, dpt, cp, qs, ldq, dkAcc, dp, ones, nil)
				flush()
				pend.ok, pend.ti, pend.row0, pend.nrow, pend.buf = true, bh*qTiles+t, row0, nrow, buf
				pend.next = int32(nextVisible(sp, j, kStart, kEnd, bc))
			}
		}
		flush()
		if dp != d {
			for c := 0; c < cols; c++ {
				copy(dkOut[c*d:c*d+d], dkAcc[c*dp:c*dp+d])
				copy(dvOut[c*d:c*d+d], dvAcc[c*dp:c*dp+d])
			}
		}
	})
	if dp != d {
		unpadRows(r.DQ, dq, d, dp)
	}
}

// bwdTiles returns the query rows and keys of the backward's tiles: the
// forward's, with at most 128 query rows. A (128 × 192) tile keeps the
// B panels of the dK, dV products (128 rows × 64 columns) within 32 KiB;
// at D=128, N=4096 it measured 146 GFLOP per CPU-second against 140 for
// (192 × 192), three alternating runs each on the shared 2-core machine.
func bwdTiles(im *impl) (br, bc int) {
	return min(im.br, 128), im.bc
}

// cols96 is the key count of one dQ product (see backward).
func cols96(im *impl) int {
	if im.nr == 1 {
		return math.MaxInt // the generic GEMM streams rows; no panels
	}
	return 96
}

// nextVisible returns the first key tile after tile j (tiles of bc keys
// from kStart, up to kEnd) that some row of sp sees, or the number of
// tiles when there is none.
func nextVisible(sp *spans, j, kStart, kEnd, bc int) int {
	tiles := (kEnd - kStart + bc - 1) / bc
	x0 := kStart + (j+1)*bc
	if x0 >= kEnd {
		return tiles
	}
	if best := sp.FirstSeen(x0); best < kEnd {
		return (best - kStart) / bc
	}
	return tiles
}

func fillNegInf(x []float32) {
	for i := range x {
		x[i] = negInf
	}
}

// padRows copies rows of d values into rows of dp values, zero-padded.
func padRows(x []float32, d, dp int) []float32 {
	n := len(x) / d
	y := make([]float32, n*dp)
	for i := 0; i < n; i++ {
		copy(y[i*dp:i*dp+d], x[i*d:i*d+d])
	}
	return y
}

// unpadRows copies the first d values of every row of y (dp apart) into x.
func unpadRows(x, y []float32, d, dp int) {
	n := len(x) / d
	for i := 0; i < n; i++ {
		copy(x[i*d:i*d+d], y[i*dp:i*dp+d])
	}
}

// dsoftmaxGeneric turns a tile of scores into probabilities and score
// gradients, row by row:
//
//	for i < rows, j < cols:
//		p := exp(s[i*ld+j] - lse[i]);  s[i*ld+j] = p
//		dp[i*ld+j] = scale·p·(dp[i*ld+j] - delta[i])
func dsoftmaxGeneric(s, dp []float32, ld, rows, cols int, lse, delta []float32, scale float32) {
	for i := 0; i < rows; i++ {
		si, di := s[i*ld:i*ld+cols], dp[i*ld:i*ld+cols]
		l, dl := lse[i], delta[i]
		for j, x := range si {
			e := exp32(x - l)
			si[j] = e
			di[j] = scale * e * (di[j] - dl)
		}
	}
}
