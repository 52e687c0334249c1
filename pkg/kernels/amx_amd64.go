//go:build !noasm && gc

package kernels

import (
	"math"
	"sync"

	"golang.org/x/sys/cpu"
)

// amxGemm computes, on AMX tiles (TDPBF16PS), C (+)= A·B for mt×nt blocks
// of 32×32 values of C over kt steps of 32 of the inner dimension:
//
//	for i < 32·mt, j < 32·nt:
//		c[i][j] = (acc ? c[i][j] : 0) + Σ_{p<32·kt} a[i][p]·b[p/2][j].half(p%2)
//
// A is bfloat16, row-major, rows lda bytes apart; B is bfloat16 in pairs
// (VNNI): b[r][j] is a uint32 holding the B values of rows 2r (low half)
// and 2r+1 (high half) of column j, rows ldb bytes apart; C is float32,
// rows ldc bytes apart. The products are exact; the sums are float32
// (round to nearest even), denormal inputs count as zero and denormal
// results flush to zero. mt, nt, kt >= 1; the caller checks the bounds.
// It configures the tiles, and releases them, within the call. Each of
// its mt·nt·kt steps prefetches (PREFETCHT1) the next KiB of [pf, pf+pfn)
// (a hint; pfn may be 0): the caller points it at what it reads next.
//
//go:noescape
func amxGemm(a *uint16, lda int, b *uint32, ldb int, c *float32, ldc int, mt, nt, kt int, acc bool, pf *byte, pfn int)

// packPairsBF16 rounds the float32 rows of s (lds bytes apart) to
// bfloat16 (VCVTNE2PS2BF16: ties to even, denormals to zero) and
// interleaves them in pairs of rows, as amxGemm's B wants them:
//
//	for r < pairs, j < n: dst[r][j] = bf16(s[2r][j]) | bf16(s[2r+1][j])<<16
//
// with dst's rows ldd bytes apart; n is a multiple of 16, pairs >= 1.
//
//go:noescape
func packPairsBF16(s *float32, lds int, dst *uint32, ldd int, pairs, n int)

// scaleColsAvx512 multiplies every row of o (rows ldo bytes apart) by
// alpha elementwise: o[i][j] *= alpha[j] for i < rows, j < n (a multiple
// of 16), rows >= 1.
//
//go:noescape
func scaleColsAvx512(o *float32, ldo int, rows, n int, alpha *float32)

// amxImpl is the "amx" implementation when this CPU and OS run AMX: the
// avx512 primitives, and the bfloat16 forward pass on AMX tiles
// (State.foldAMX). Nil otherwise.
var amxImpl *impl

// registerAMX registers "amx" (the new default) when the CPU has
// AMX-TILE, AMX-BF16 and AVX512_BF16 besides AVX-512 and the OS lets this
// process use the tile data (amxPermit).
func registerAMX() {
	x := &cpu.X86
	if !x.HasAMXTile || !x.HasAMXBF16 || !x.HasAVX512BF16 || !x.HasAVX512F || !x.HasAVX512BW || !x.HasAVX512DQ || !x.HasAVX512VL {
		return
	}
	if !amxPermit() {
		return
	}
	amxImpl = avx512.impl("amx")
	register(amxImpl)
}

// bf16Bits is the bfloat16 encoding of bf16(x) (ties to even, quiet NaN),
// the rounding of the float32 kernels.
func bf16Bits(x float32) uint16 { return uint16(math.Float32bits(bf16(x)) >> 16) }

// amxKV is one block's keys and values, a group of key/value heads, in
// bfloat16 as the AMX products read them; packed once per FoldBlocks call
// and shared by all the query tiles. Vᵀ is stored a tile of amxBC keys at a time, so
// that the rows of a tile are 2·amxBC bytes apart (not the whole block's
// length, whose power-of-two strides would crowd the tile into a few L1
// sets).
type amxKV struct {
	nkp int      // keys rounded up to amxBC
	k   []uint16 // [heads][nkp][dp]: bf16(k), zero-padded
	vt  []uint16 // [heads][nkp/amxBC][dp][amxBC]: bf16(v)ᵀ, zero-padded
}

// pack fills head slot of the packed block with head h of blk (D = d,
// dp = d rounded up to 32).
func (pk *amxKV) pack(blk *KV, h, slot, d, dp int) {
	n, nkp := blk.N, pk.nkp
	off := h * blk.stride() * d
	kb, vb := blk.K[off:off+n*d], blk.V[off:off+n*d]
	kp := pk.k[slot*nkp*dp : (slot+1)*nkp*dp]
	for j := 0; j < nkp; j++ {
		row := kp[j*dp : (j+1)*dp]
		if j >= n {
			clear(row)
			continue
		}
		for t, x := range kb[j*d : (j+1)*d] {
			row[t] = bf16Bits(x)
		}
		clear(row[d:])
	}
	const bc = amxBC
	for c0 := 0; c0 < nkp; c0 += bc {
		vt := pk.vt[(slot*nkp+c0)*dp : (slot*nkp+c0+bc)*dp]
		cols := max(0, min(bc, n-c0))
		for j := 0; j < cols; j++ {
			for t, x := range vb[(c0+j)*d : (c0+j+1)*d] {
				vt[t*bc+j] = bf16Bits(x)
			}
		}
		for t := 0; t < dp; t++ {
			if t >= d {
				clear(vt[t*bc : (t+1)*bc])
				continue
			}
			clear(vt[t*bc+cols : (t+1)*bc])
		}
	}
}

// u16Pool recycles the packed blocks' buffers between calls.
var u16Pool sync.Pool

func getU16(n int) []uint16 {
	if b, ok := u16Pool.Get().(*[]uint16); ok && cap(*b) >= n {
		return (*b)[:n]
	}
	return make([]uint16, n)
}

func putU16(b []uint16) {
	if b != nil {
		u16Pool.Put(&b)
	}
}

// amxScratch is one work unit's buffers.
type amxScratch struct {
	qp, pp           []uint32 // packed Q and P
	s, ot            []float32
	m, l, alpha      []float32
	lo, hi, rlo, rhi []int32
}

func growU32(x []uint32, n int) []uint32 {
	if len(x) < n {
		return make([]uint32, n)
	}
	return x
}

func (as *amxScratch) ensure(rp, bc, dp int) {
	as.qp = growU32(as.qp, dp/2*rp)
	as.pp = growU32(as.pp, bc/2*rp)
	as.s = grow(as.s, bc*rp)
	as.ot = grow(as.ot, dp*rp)
	as.m, as.l, as.alpha = grow(as.m, rp), grow(as.l, rp), grow(as.alpha, rp)
	if len(as.lo) < rp {
		as.lo, as.hi = make([]int32, rp), make([]int32, rp)
		as.rlo, as.rhi = make([]int32, rp), make([]int32, rp)
	}
}

var amxScratchPool = sync.Pool{New: func() any { return new(amxScratch) }}
