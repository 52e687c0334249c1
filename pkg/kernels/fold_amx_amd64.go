//go:build !noasm && gc

package kernels

import (
	"context"
	"sync/atomic"
	"unsafe"
)

// Tile sizes of the AMX forward pass.
const (
	amxBR = 192 // query rows per work unit
	amxBC = 128 // keys per tile
)

// amxPackBytes bounds the bfloat16 copies of K and Vᵀ that one FoldBlocks
// call holds at a time (a variable for tests).
var amxPackBytes = 256 << 20

// foldAMX is FoldBlocks in PrecisionBF16 on AMX (the arguments are
// checked): the tile loop of FoldBlocks, transposed as there (Sᵀ, one
// query per column), with both products on AMX tiles:
//
//	Sᵀ = bf16(K)·bf16(scale·Q)ᵀ       amxGemm, float32 sums
//	mask the partial tiles with -inf   as FoldBlocks
//	online softmax down the columns    softmaxCols (AVX-512): M, L of float32 P
//	Oᵀ = diag(alpha)·Oᵀ + bf16(V)ᵀ·bf16(P)ᵀ   scaleCols, packPairsBF16, amxGemm
//
// K and Vᵀ are rounded and packed once per call (amxKV), a group of
// key/value heads at a time, and shared by the query tiles of those
// heads; each unit (foldAMXUnit) packs its Q as pairs.
// Oᵀ is the unit's float32 accumulator, transposed from and back to the
// state once per unit. Tiles start at each block's first key, so the
// result of several blocks is bit-identical to one call per block.
func (s *State) foldAMX(ctx context.Context, p *Params, q []float32, qStart, qStride int, blocks []KV) error {
	im := amxImpl
	mi := newMaskInfo(p)
	d := p.D
	dp := roundUp(d, 32)
	hs := p.B * p.Hkv

	// The blocks some row of the state sees, and the bytes one key/value
	// head of them packs into.
	var all spans
	mi.spans(qStart, make([]int32, s.Rows), make([]int32, s.Rows), &all)
	seen := make([]bool, len(blocks))
	perHead := 0
	for i := range blocks {
		if b := &blocks[i]; b.N > 0 && all.sees(*b) {
			seen[i] = true
			perHead += 4 * roundUp(b.N, amxBC) * dp
		}
	}
	if perHead == 0 {
		return ctx.Err() // no row sees a key: the state stays as it is
	}
	// Key/value heads are packed and folded a group at a time, so that
	// the packed copies stay within amxPackBytes (at least one head).
	hg := max(1, min(hs, amxPackBytes/perHead))
	packs := make([]amxKV, len(blocks))
	for i := range blocks {
		if seen[i] {
			nkp := roundUp(blocks[i].N, amxBC)
			packs[i] = amxKV{nkp: nkp, k: getU16(hg * nkp * dp), vt: getU16(hg * nkp * dp)}
		}
	}
	defer func() {
		for i := range packs {
			putU16(packs[i].k)
			putU16(packs[i].vt)
		}
	}()

	qTiles := (s.Rows + amxBR - 1) / amxBR
	scale := p.EffectiveScale()
	group := p.Group()
	done := ctx.Done()
	var stopped atomic.Bool
	var jobs [][2]int // (block, key/value head)
	for g0 := 0; g0 < hs && !stopped.Load(); g0 += hg {
		g1 := min(g0+hg, hs)
		jobs = jobs[:0]
		for i := range blocks {
			for h := g0; seen[i] && h < g1; h++ {
				jobs = append(jobs, [2]int{i, h})
			}
		}
		parallelFor(len(jobs), p.Threads, func(_ *scratch, j int) {
			i, h := jobs[j][0], jobs[j][1]
			packs[i].pack(&blocks[i], h, h-g0, d, dp)
		})
		// The query heads of key/value heads [g0, g1): (b·Hq + h)/group
		// is key/value head b·Hkv + h/group.
		bhN := (g1 - g0) * group
		parallelFor(bhN*qTiles, p.Threads, func(_ *scratch, u int) {
			if done != nil {
				select {
				case <-done:
					stopped.Store(true)
					return
				default:
				}
			}
			// Last query tile first, as FoldBlocks.
			bh := g0*group + u%bhN
			s.foldAMXUnit(p, mi, q, qStart, qStride, blocks, packs, qTiles-1-u/bhN, bh, bh/group-g0, scale, im)
		})
	}
	if stopped.Load() {
		return ctx.Err()
	}
	return nil
}

// foldAMXUnit folds query tile t of head bh (the state's b·Hq + h), whose
// keys and values are packed as head slot of packs.
func (s *State) foldAMXUnit(p *Params, mi *maskInfo, q []float32, qStart, qStride int, blocks []KV, packs []amxKV, t, bh, slot int, scale float32, im *impl) {
	br, bc := amxBR, amxBC
	d := p.D
	dp := roundUp(d, 32)
	as := amxScratchPool.Get().(*amxScratch)
	defer amxScratchPool.Put(as)
	r0 := t * br
	rows := min(br, s.Rows-r0)
	rp := roundUp(rows, 32)
	row0 := bh*s.Rows + r0
	qRow0 := bh*qStride + r0
	as.ensure(rp, bc, dp)
	lo, hi := as.lo[:rows], as.hi[:rows]
	var sp spans
	mi.spans(qStart+r0, as.rlo[:rows], as.rhi[:rows], &sp)
	if !sp.seesAny(blocks) {
		return
	}

	// Q as pairs of columns: qp[t2·rp + i] holds bf16(scale·q[i][2t2])
	// and bf16(scale·q[i][2t2+1]), zero-padded to rp rows and dp columns.
	qp := as.qp[:dp/2*rp]
	clear(qp)
	for i := 0; i < rows; i++ {
		qi := q[(qRow0+i)*d : (qRow0+i+1)*d]
		for t2 := 0; 2*t2 < d; t2++ {
			w := uint32(bf16Bits(scale * qi[2*t2]))
			if 2*t2+1 < d {
				w |= uint32(bf16Bits(scale*qi[2*t2+1])) << 16
			}
			qp[t2*rp+i] = w
		}
	}
	mT, lT, alpha := as.m[:rp], as.l[:rp], as.alpha[:rp]
	copy(mT, s.M[row0:row0+rows])
	copy(lT, s.L[row0:row0+rows])
	for i := rows; i < rp; i++ {
		mT[i], lT[i] = negInf, 0
	}
	// Oᵀ, zero-padded to dp rows and rp columns.
	oS := s.O[row0*d : (row0+rows)*d]
	oT := as.ot[:dp*rp]
	clear(oT)
	for i := 0; i < rows; i++ {
		for t, x := range oS[i*d : (i+1)*d] {
			oT[t*rp+i] = x
		}
	}
	touched := false
	for bi := range blocks {
		blk := &blocks[bi]
		if !sp.sees(*blk) {
			continue
		}
		pk := &packs[bi]
		kp := pk.k[slot*pk.nkp*dp : (slot+1)*pk.nkp*dp]
		vt := pk.vt[slot*pk.nkp*dp : (slot+1)*pk.nkp*dp]
		for c0 := 0; c0 < blk.N; c0 += bc {
			c1 := min(c0+bc, blk.N)
			cols := c1 - c0
			cp := roundUp(cols, 32)
			class := sp.classify(blk.Start+c0, blk.Start+c1, lo, hi)
			if class == tileHidden {
				continue
			}
			touched = true
			st := as.s[:cp*rp]
			_ = kp[(c0+cp)*dp-1] // the rows amxGemm reads
			// Meanwhile, prefetch this tile's Vᵀ into L2; during P·V,
			// the next tile's K.
			vc := vt[c0*dp : (c0+bc)*dp] // Vᵀ of this tile, rows bc apart
			amxGemm(&kp[c0*dp], 2*dp, &qp[0], 4*rp, &st[0], 4*rp, cp/32, rp/32, dp/32, false, u16Bytes(vc), 2*len(vc))
			if class == tilePartial {
				base := int32(blk.Start + c0)
				for j := 0; j < cols; j++ {
					kj := base + int32(j)
					row := st[j*rp : j*rp+rows]
					for i := range row {
						if kj < lo[i] || kj >= hi[i] {
							row[i] = negInf
						}
					}
				}
			}
			im.softmaxCols(st, rp, cols, mT, lT, alpha)
			// L summed the float32 P; the product sees bf16(P), and the
			// keys past the block none.
			clear(st[cols*rp:])
			pp := as.pp[:cp/2*rp]
			packPairsBF16(&st[0], 4*rp, &pp[0], 4*rp, cp/2, rp)
			if !allOnes(alpha) {
				scaleColsAvx512(&oT[0], 4*rp, dp, rp, &alpha[0])
			}
			kNext := kp[min(c0+bc, pk.nkp)*dp : min(c0+2*bc, pk.nkp)*dp]
			amxGemm(&vc[0], 2*bc, &pp[0], 4*rp, &oT[0], 4*rp, dp/32, rp/32, cp/32, true, u16Bytes(kNext), 2*len(kNext))
		}
	}
	if !touched {
		return
	}
	copy(s.M[row0:row0+rows], mT)
	copy(s.L[row0:row0+rows], lT)
	for i := 0; i < rows; i++ {
		o := oS[i*d : (i+1)*d]
		for t := range o {
			o[t] = oT[t*rp+i]
		}
	}
}

// u16Bytes points at x's first byte, or is nil when x is empty.
func u16Bytes(x []uint16) *byte {
	if len(x) == 0 {
		return nil
	}
	return (*byte)(unsafe.Pointer(&x[0]))
}

func allOnes(x []float32) bool {
	for _, v := range x {
		if v != 1 {
			return false
		}
	}
	return true
}
