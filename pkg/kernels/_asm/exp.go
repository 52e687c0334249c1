package main

import (
	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// expK holds the operands of exp's constants: registers loaded once per
// function on AVX-512 (32 registers), memory on AVX2.
type expK struct {
	hi, lo, log2e, c1, c2, one Op
	p                          [6]Op
}

func newExpK(is isa) expK {
	k := expK{hi: cHi, lo: cLo, log2e: cLog2e, c1: cC1, c2: cC2, one: cOne}
	for i := range k.p {
		k.p[i] = cP[i]
	}
	if is.w != 16 {
		return k
	}
	load := func(m Op) Op {
		r := is.vec()
		VMOVUPS(m, r)
		return r
	}
	k.hi, k.lo, k.log2e, k.c1, k.c2, k.one = load(cHi), load(cLo), load(cLog2e), load(cC1), load(cC2), load(cOne)
	for i := range k.p {
		k.p[i] = load(cP[i])
	}
	return k
}

// exp replaces the vector x by exp(x) (a few ulp; -inf and x < -104 give 0,
// x > 89 gives +inf, NaN stays NaN). On AVX-512 the scaling by 2^n is one
// VSCALEFPS; AVX2 builds 2^n1·2^n2 (n1 + n2 = n) from the exponent bits so
// that results in the denormal range are rounded once, correctly.
func exp(is isa, k expK, x VecVirtual) {
	t := is.vec()
	if is.w == 16 {
		VMINPS(x, k.hi, x) // x NaN: returns x
		VMAXPS(x, k.lo, x)
		fx := is.vec()
		VMULPS(k.log2e, x, fx)
		VRNDSCALEPS(U8(0), fx, fx) // n = round(x·log2e)
		VFNMADD231PS(k.c1, fx, x)
		VFNMADD231PS(k.c2, fx, x) // x = r
		p := is.vec()
		VMOVUPS(k.p[0], p)
		for i := 1; i < 6; i++ {
			VFMADD213PS(k.p[i], x, p) // p = p·r + P[i]
		}
		VMULPS(x, x, t)      // r²
		VFMADD213PS(x, t, p) // p = P·r² + r
		VADDPS(k.one, p, p)  // + 1
		VSCALEFPS(fx, p, x)  // p·2^n
		return
	}
	VMOVUPS(k.hi, t)
	VMINPS(x, t, x) // x NaN: returns x
	VMOVUPS(k.lo, t)
	VMAXPS(x, t, x)
	j := is.vec()
	VMOVUPS(cMagic, j)
	VFMADD231PS(k.log2e, x, j) // j = round(x·log2e) + magic
	fx := is.vec()
	VSUBPS(cMagic, j, fx) // fx = n as float
	VFNMADD231PS(k.c1, fx, x)
	VFNMADD231PS(k.c2, fx, x) // x = r
	p := is.vec()
	VMOVUPS(k.p[0], p)
	for i := 1; i < 6; i++ {
		VFMADD213PS(k.p[i], x, p) // p = p·r + P[i]
	}
	VMULPS(x, x, t)       // r²
	VFMADD213PS(x, t, p)  // p = P·r² + r
	VADDPS(k.one, p, p)   // + 1
	VPSUBD(cMagicI, j, j) // n as int32
	VPSRAD(U8(1), j, t)   // n1 = n>>1
	VPSUBD(t, j, j)       // n2 = n - n1
	VPADDD(c127, t, t)
	VPSLLD(U8(23), t, t) // 2^n1
	VPADDD(c127, j, j)
	VPSLLD(U8(23), j, j) // 2^n2
	VMULPS(t, p, p)
	VMULPS(j, p, x)
}

// expFastK holds the operands of expFast's constants (registers on
// AVX-512, memory on AVX2).
type expFastK struct {
	lo, log2e, magic, ln2 Op
	p                     [4]Op
	one                   Op
}

func newExpFastK(is isa) expFastK {
	k := expFastK{lo: cLoFast, log2e: cLog2e, magic: cMagic, ln2: cLn2, one: cOne}
	for i := range k.p {
		k.p[i] = cQ[i]
	}
	if is.w != 16 {
		return k
	}
	load := func(m Op) Op {
		r := is.vec()
		VMOVUPS(m, r)
		return r
	}
	k.lo, k.log2e, k.magic, k.ln2, k.one = load(cLoFast), load(cLog2e), load(cMagic), load(cLn2), load(cOne)
	for i := range k.p {
		k.p[i] = load(cQ[i])
	}
	return k
}

// expFast replaces the vector x <= 0 (or NaN) by exp(x) within 6 ulp for
// x >= -69 (results >= 1e-30); x < -87 (results below the smallest normal)
// and -inf give 0, NaN stays NaN. It takes 11 instructions against exp's
// 15: one rounding by the 1.5·2²³ trick, a one-constant Cody-Waite
// reduction x = n·ln2 + r and a degree-5 minimax polynomial for exp(r),
// |r| <= ln2/2 (relative error 1.1e-7). The forward's online softmax
// uses it; x > 0 is not clamped (exp of a positive x above 88 is wrong).
func expFast(is isa, k expFastK, x VecVirtual) {
	// Results below the smallest normal (x < -87) are flushed to 0 by a
	// mask (NLT: NaN lanes kept) instead of computed: denormal results and
	// operands cost microcode assists, here and in the GEMM that reads P.
	t := is.vec()
	var km Op
	if is.w == 16 {
		km = K()
		VCMPPS(U8(5), k.lo, x, km) // x !< -87
		VMAXPS(x, k.lo, x)
	} else {
		km = is.vec()
		VMOVUPS(k.lo, t)
		VCMPPS(U8(5), t, x, km)
		VMAXPS(x, t, x)
	}
	j := is.vec()
	VMOVUPS(k.magic, j)
	VFMADD231PS(k.log2e, x, j) // j = round(x·log2e) + magic
	fx := is.vec()
	VSUBPS(k.magic, j, fx)     // n as float
	VFNMADD231PS(k.ln2, fx, x) // r = x - n·ln2
	p := is.vec()
	VMOVUPS(k.p[0], p)
	for i := 1; i < 4; i++ {
		VFMADD213PS(k.p[i], x, p) // p = p·r + Q[i]
	}
	VFMADD213PS(k.one, x, p) // p·r + 1
	VFMADD213PS(k.one, x, p) // p·r + 1
	if is.w == 16 {
		VSCALEFPS_Z(fx, p, km, x) // p·2^n, 0 where x < -87
		return
	}
	VPSUBD(cMagicI, j, j) // n as int32
	VPSRAD(U8(1), j, t)   // n1 = n>>1
	VPSUBD(t, j, j)       // n2 = n - n1
	VPADDD(c127, t, t)
	VPSLLD(U8(23), t, t) // 2^n1
	VPADDD(c127, j, j)
	VPSLLD(U8(23), j, j) // 2^n2
	VMULPS(t, p, p)
	VMULPS(j, p, x)
	VANDPS(km, x, x)
}
