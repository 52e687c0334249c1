package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// roundBF16 rounds float32 values to the nearest bfloat16 (ties to even)
// and widens them back, whole vectors only: on the bit pattern b,
// (b + 0x7fff + (b>>16)&1) &^ 0xffff, and NaN (|b| > 0x7f800000) becomes
// (b | 0x400000) &^ 0xffff, a quiet NaN. Two vectors a step, then one.
func roundBF16(is isa) {
	name := "roundBF16" + is.name
	TEXT(name, NOSPLIT, "func(dst, src []float32)")
	Doc(fmt.Sprintf("%s rounds len(dst) values (a multiple of %d) of src to bfloat16,", name, is.w),
		"ties to even, NaN to a quiet NaN, and stores them widened to float32 in dst",
		"(dst and src may be the same slice):",
		"",
		"\tfor i := range dst:",
		"\t\tb := math.Float32bits(src[i])",
		"\t\tif b&0x7fffffff > 0x7f800000 { b |= 0x400000 } else { b += 0x7fff + (b>>16)&1 }",
		"\t\tdst[i] = math.Float32frombits(b &^ 0xffff)",
		"",
		"The caller checks the slice bounds.")
	dp := Load(Param("dst").Base(), GP64())
	sp := Load(Param("src").Base(), GP64())
	n := Load(Param("dst").Len(), GP64())
	vb := 4 * is.w
	one, half, hi, abs, inf, quiet := is.vec(), is.vec(), is.vec(), is.vec(), is.vec(), is.vec()
	VMOVDQU32orU(is, cBFOne, one)
	VMOVDQU32orU(is, cBFHalf, half)
	VMOVDQU32orU(is, cBFHi, hi)
	VMOVDQU32orU(is, cBFAbs, abs)
	VMOVDQU32orU(is, cBFInf, inf)
	VMOVDQU32orU(is, cBFQuiet, quiet)
	round := func(x VecVirtual) {
		t, u := is.vec(), is.vec()
		if is.w == 16 {
			VPSRLD(U8(16), x, t)
			VPANDD(one, t, t)
			VPADDD(half, t, t)
			VPANDD(abs, x, u)
			km := K()
			VPCMPGTD(inf, u, km) // km = |b| > inf: NaN
			VPADDD(t, x, t)
			VPORD(quiet, x, km, t) // NaN lanes: b | quiet
			VPANDD(hi, t, x)
			return
		}
		VPSRLD(U8(16), x, t)
		VPAND(one, t, t)
		VPADDD(half, t, t)
		VPAND(abs, x, u)
		VPCMPGTD(inf, u, u) // all ones where NaN
		VPADDD(t, x, t)
		v := is.vec()
		VPOR(quiet, x, v)
		VPBLENDVB(u, v, t, t) // NaN lanes: b | quiet
		VPAND(hi, t, x)
	}
	Label(name + "_two")
	CMPQ(n, U32(2*is.w))
	JL(LabelRef(name + "_one"))
	x, y := is.vec(), is.vec()
	VMOVDQU32orU(is, Mem{Base: sp}, x)
	VMOVDQU32orU(is, Mem{Base: sp, Disp: vb}, y)
	round(x)
	round(y)
	VMOVDQU32orU(is, x, Mem{Base: dp})
	VMOVDQU32orU(is, y, Mem{Base: dp, Disp: vb})
	ADDQ(U32(2*vb), sp)
	ADDQ(U32(2*vb), dp)
	SUBQ(U32(2*is.w), n)
	JMP(LabelRef(name + "_two"))
	Label(name + "_one")
	TESTQ(n, n)
	JEQ(LabelRef(name + "_done"))
	z := is.vec()
	VMOVDQU32orU(is, Mem{Base: sp}, z)
	round(z)
	VMOVDQU32orU(is, z, Mem{Base: dp})
	ADDQ(U32(vb), sp)
	ADDQ(U32(vb), dp)
	SUBQ(U32(is.w), n)
	JMP(LabelRef(name + "_one"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// VMOVDQU32orU moves a vector of integers: VMOVDQU32 on AVX-512, VMOVDQU on AVX2.
func VMOVDQU32orU(is isa, src, dst Op) {
	if is.w == 16 {
		VMOVDQU32(src, dst)
		return
	}
	VMOVDQU(src, dst)
}
