// Command _asm generates the SIMD kernels of package kernels with avo.
//
//	cd pkg/kernels/_asm && go run . -out ../kernels_amd64.s -stubs ../stubs_amd64.go -pkg kernels
//
// Every kernel is generated twice from the same code: once for AVX-512 (zmm,
// 16 lanes, a 6×64 register tile) and once for AVX2+FMA (ymm, 8 lanes, a 6×16
// register tile). The reference loop of each kernel is its stub's doc comment;
// the Go wrappers in the package hold the dispatch and the edge handling.
package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/ir"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// isa describes one instruction set target.
type isa struct {
	name string // suffix of the generated functions
	w    int    // float32 lanes per vector
	mr   int    // rows of the register tile
	nv   int    // vectors per row of the register tile
	vec  func() VecVirtual
	// peakAcc is the number of independent FMA chains in the peak loop.
	peakAcc int
}

var isas = []isa{
	{name: "Avx512", w: 16, mr: 6, nv: 4, vec: ZMM, peakAcc: 24},
	{name: "Avx2", w: 8, mr: 6, nv: 2, vec: YMM, peakAcc: 12},
}

// Constants, 16 lanes each (64 bytes); AVX2 code reads the first 32 bytes.
var consts = map[string]Mem{}

func constF32(name string, v float32) Mem {
	m := GLOBL(name, RODATA|NOPTR)
	for i := 0; i < 16; i++ {
		DATA(4*i, U32(math.Float32bits(v))) // F32 prints integral values as integers
	}
	consts[name] = m
	return m
}

func constU32(name string, v uint32) Mem {
	m := GLOBL(name, RODATA|NOPTR)
	for i := 0; i < 16; i++ {
		DATA(4*i, U32(v))
	}
	consts[name] = m
	return m
}

var (
	cHi, cLo, cLog2e, cMagic, cMagicI, cC1, cC2, c127, cOne, cNegMax Mem
	cP                                                               [6]Mem
	cTailMask                                                        Mem
	cBFOne, cBFHalf, cBFHi, cBFAbs, cBFInf, cBFQuiet                 Mem
)

func main() {
	ConstraintExpr("!noasm,gc")

	// exp constants (Cephes expf): x = n·ln2 + r, |r| <= ln2/2,
	// exp(r) = 1 + r + r²·P(r).
	cHi = constF32("expHi", 89)   // exp(89) overflows float32: +inf
	cLo = constF32("expLo", -104) // exp(-104) rounds to 0 (below half the smallest denormal)
	cLog2e = constF32("expLog2e", float32(math.Log2E))
	cMagic = constF32("expMagic", 12582912) // 1.5·2²³: adding it rounds to an integer
	cMagicI = constU32("expMagicBits", 0x4B400000)
	cC1 = constF32("expC1", 0.693359375)
	cC2 = constF32("expC2", -2.12194440e-4)
	for i, p := range []float32{1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1} {
		cP[i] = constF32(fmt.Sprintf("expP%d", i), p)
	}
	c127 = constU32("expBias", 127)
	cOne = constF32("expOne", 1)
	cNegMax = constF32("negMaxF32", -math.MaxFloat32)
	// cTailMask is 8 all-ones words then 8 zero words: the 8 words at
	// offset 4·(8-r) select the first r lanes (AVX2 masked tails).
	// bfloat16 rounding (RNE on the bit pattern, as pkg/transport does).
	cBFOne = constU32("bf16One", 1)
	cBFHalf = constU32("bf16Half", 0x7fff)
	cBFHi = constU32("bf16Hi", 0xffff0000)
	cBFAbs = constU32("bf16Abs", 0x7fffffff)
	cBFInf = constU32("bf16Inf", 0x7f800000)
	cBFQuiet = constU32("bf16Quiet", 0x00400000)
	cTailMask = GLOBL("tailMask", RODATA|NOPTR)
	for i := 0; i < 16; i++ {
		v := uint32(0)
		if i < 8 {
			v = 0xFFFFFFFF
		}
		DATA(4*i, U32(v))
	}

	for _, is := range isas {
		gemmNN(is)
		gemmTN(is)
		softmaxCols(is)
		expF32(is)
		dsoftmax(is)
		roundBF16(is)
		fmaPeak(is)
	}
	dpbf16Peak()
	Generate()
}

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

func gemmNN(is isa) {
	name := "gemmNN" + is.name
	TEXT(name, NOSPLIT, "func(mr, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool)")
	Doc(fmt.Sprintf("%s computes one register tile of C = A·B (acc false) or C += A·B (acc true),", name),
		fmt.Sprintf("A row-major [mr×k], B row-major [k×%d], C row-major [mr×%d], 1 <= mr <= %d:", is.w*is.nv, is.w*is.nv, is.mr),
		"",
		fmt.Sprintf("\tfor i < mr, j < %d:", is.w*is.nv),
		"\t\tc[i*ldc+j] = (acc ? c[i*ldc+j] : 0) + Σ_{p<k} a[i*lda+p]·b[p*ldb+j]",
		"",
		"The caller checks the slice bounds.")
	mr := Load(Param("mr"), GP64())
	for r := is.mr; r >= 1; r-- {
		CMPQ(mr, U32(r))
		JEQ(LabelRef(fmt.Sprintf("%s_mr%d", name, r)))
	}
	RET()
	for r := is.mr; r >= 1; r-- {
		Label(fmt.Sprintf("%s_mr%d", name, r))
		gemmBlock(is, name, r, false)
	}
}

func gemmTN(is isa) {
	name := "gemmTN" + is.name
	TEXT(name, NOSPLIT, "func(mr, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, alpha []float32)")
	Doc(fmt.Sprintf("%s computes one register tile of C = diag(alpha)·C + Aᵀ·B with A", name),
		fmt.Sprintf("stored k-major [k×lda], B row-major [k×%d], C row-major [mr×%d], 1 <= mr <= %d:", is.w*is.nv, is.w*is.nv, is.mr),
		"",
		fmt.Sprintf("\tfor i < mr, j < %d:", is.w*is.nv),
		"\t\tc[i*ldc+j] = alpha[i]·c[i*ldc+j] + Σ_{p<k} a[p*lda+i]·b[p*ldb+j]",
		"",
		"The caller checks the slice bounds.")
	mr := Load(Param("mr"), GP64())
	for r := is.mr; r >= 1; r-- {
		CMPQ(mr, U32(r))
		JEQ(LabelRef(fmt.Sprintf("%s_mr%d", name, r)))
	}
	RET()
	for r := is.mr; r >= 1; r-- {
		Label(fmt.Sprintf("%s_mr%d", name, r))
		gemmBlock(is, name, r, true)
	}
}

// gemmBlock emits the register tile of r rows; tn selects the k-major A
// with the alpha row scale on C, else row-major A with the acc flag.
func gemmBlock(is isa, name string, r int, tn bool) {
	lbl := func(s string) string { return fmt.Sprintf("%s_%s%d", name, s, r) }
	k := Load(Param("k"), GP64())
	a := Load(Param("a").Base(), GP64())
	lda := Load(Param("lda"), GP64())
	SHLQ(U8(2), lda)
	b := Load(Param("b").Base(), GP64())
	ldb := Load(Param("ldb"), GP64())
	SHLQ(U8(2), ldb)
	c := Load(Param("c").Base(), GP64())
	ldc := Load(Param("ldc"), GP64())
	SHLQ(U8(2), ldc)

	z := make([][]VecVirtual, r)
	for i := range z {
		z[i] = make([]VecVirtual, is.nv)
		for v := range z[i] {
			z[i][v] = is.vec()
		}
	}
	vb := 4 * is.w // bytes per vector
	cp := GP64()
	if tn {
		al := Load(Param("alpha").Base(), GP64())
		MOVQ(c, cp)
		t := is.vec()
		for i := 0; i < r; i++ {
			VBROADCASTSS(Mem{Base: al, Disp: 4 * i}, t)
			for v := 0; v < is.nv; v++ {
				VMULPS(Mem{Base: cp, Disp: v * vb}, t, z[i][v])
			}
			if i+1 < r {
				ADDQ(ldc, cp)
			}
		}
	} else {
		acc := Load(Param("acc"), GP8())
		CMPB(acc, U8(0))
		JEQ(LabelRef(lbl("zero")))
		MOVQ(c, cp)
		for i := 0; i < r; i++ {
			for v := 0; v < is.nv; v++ {
				VMOVUPS(Mem{Base: cp, Disp: v * vb}, z[i][v])
			}
			if i+1 < r {
				ADDQ(ldc, cp)
			}
		}
		JMP(LabelRef(lbl("body")))
		Label(lbl("zero"))
		for i := 0; i < r; i++ {
			for v := 0; v < is.nv; v++ {
				VXORPS(z[i][v], z[i][v], z[i][v])
			}
		}
		Label(lbl("body"))
	}

	// Addresses of A's row i at step p.
	var rowMem func(i int) Mem
	var a3 GPVirtual
	if tn {
		rowMem = func(i int) Mem { return Mem{Base: a, Disp: 4 * i} }
	} else {
		if r > 3 {
			a3 = GP64()
			LEAQ(Mem{Base: a, Index: lda, Scale: 2}, a3)
			ADDQ(lda, a3)
		}
		rowMem = func(i int) Mem {
			base := a
			if i >= 3 {
				base, i = a3, i-3
			}
			switch i {
			case 0:
				return Mem{Base: base}
			case 1:
				return Mem{Base: base, Index: lda, Scale: 1}
			}
			return Mem{Base: base, Index: lda, Scale: 2}
		}
	}

	TESTQ(k, k)
	JEQ(LabelRef(lbl("store")))
	bv := make([]VecVirtual, is.nv)
	for v := range bv {
		bv[v] = is.vec()
	}
	t := is.vec()
	Label(lbl("loop"))
	for v := 0; v < is.nv; v++ {
		VMOVUPS(Mem{Base: b, Disp: v * vb}, bv[v])
	}
	for i := 0; i < r; i++ {
		VBROADCASTSS(rowMem(i), t)
		for v := 0; v < is.nv; v++ {
			VFMADD231PS(bv[v], t, z[i][v])
		}
	}
	if tn {
		ADDQ(lda, a)
	} else {
		ADDQ(U8(4), a)
		if r > 3 {
			ADDQ(U8(4), a3)
		}
	}
	ADDQ(ldb, b)
	DECQ(k)
	JNE(LabelRef(lbl("loop")))

	Label(lbl("store"))
	MOVQ(c, cp)
	for i := 0; i < r; i++ {
		for v := 0; v < is.nv; v++ {
			VMOVUPS(z[i][v], Mem{Base: cp, Disp: v * vb})
		}
		if i+1 < r {
			ADDQ(ldc, cp)
		}
	}
	VZEROUPPER()
	RET()
}

func softmaxCols(is isa) {
	name := "softmaxCols" + is.name
	TEXT(name, NOSPLIT, "func(s []float32, lds, rows int, m, l, alpha []float32)")
	Doc(fmt.Sprintf("%s updates the online softmax of len(m) columns (a multiple of %d)", name, is.w),
		"over rows rows of s, replacing s by the unnormalised probabilities:",
		"",
		"\tfor i < len(m):",
		"\t\tmx := max(m[i], max_{j<rows} s[j*lds+i])",
		"\t\tsh := max(mx, -MaxFloat32) // a column with no visible key shifts by a finite value",
		"\t\talpha[i] = exp(m[i] - sh)",
		"\t\tfor j < rows: s[j*lds+i] = exp(s[j*lds+i] - sh)",
		"\t\tl[i] = l[i]·alpha[i] + Σ_j s[j*lds+i]",
		"\t\tm[i] = mx",
		"",
		"with exp as in expF32. The caller checks the slice bounds.")
	sp := Load(Param("s").Base(), GP64())
	lds := Load(Param("lds"), GP64())
	SHLQ(U8(2), lds)
	mp := Load(Param("m").Base(), GP64())
	lp := Load(Param("l").Base(), GP64())
	ap := Load(Param("alpha").Base(), GP64())
	cols := Load(Param("m").Len(), GP64())
	vb := 4 * is.w
	ek := newExpK(is)

	Label(name + "_strip")
	CMPQ(cols, U32(is.w))
	JL(LabelRef(name + "_done"))
	rows := Load(Param("rows"), GP64())
	p := GP64()
	MOVQ(sp, p)
	mold := is.vec()
	mx := is.vec()
	mx2 := is.vec()
	VMOVUPS(Mem{Base: mp}, mold)
	VMOVUPS(mold, mx)
	VMOVUPS(mold, mx2)
	// Pass 1: column maxima, two rows at a time.
	n := GP64()
	MOVQ(rows, n)
	Label(name + "_max2")
	CMPQ(n, U8(2))
	JL(LabelRef(name + "_max1"))
	VMAXPS(Mem{Base: p}, mx, mx)
	VMAXPS(Mem{Base: p, Index: lds, Scale: 1}, mx2, mx2)
	LEAQ(Mem{Base: p, Index: lds, Scale: 2}, p)
	SUBQ(U8(2), n)
	JMP(LabelRef(name + "_max2"))
	Label(name + "_max1")
	TESTQ(n, n)
	JEQ(LabelRef(name + "_maxdone"))
	VMAXPS(Mem{Base: p}, mx, mx)
	Label(name + "_maxdone")
	VMAXPS(mx2, mx, mx)
	VMOVUPS(mx, Mem{Base: mp})
	sh := is.vec()
	VMOVUPS(cNegMax, sh)
	VMAXPS(mx, sh, sh)
	// alpha = exp(m_old - sh)
	VSUBPS(sh, mold, mold)
	exp(is, ek, mold)
	VMOVUPS(mold, Mem{Base: ap})

	// Pass 2: exponentials and their sum, two rows at a time.
	sum := is.vec()
	sum2 := is.vec()
	VXORPS(sum, sum, sum)
	VXORPS(sum2, sum2, sum2)
	MOVQ(sp, p)
	MOVQ(rows, n)
	Label(name + "_exp2")
	CMPQ(n, U8(2))
	JL(LabelRef(name + "_exp1"))
	x := is.vec()
	y := is.vec()
	VMOVUPS(Mem{Base: p}, x)
	VMOVUPS(Mem{Base: p, Index: lds, Scale: 1}, y)
	VSUBPS(sh, x, x)
	VSUBPS(sh, y, y)
	exp(is, ek, x)
	exp(is, ek, y)
	VMOVUPS(x, Mem{Base: p})
	VMOVUPS(y, Mem{Base: p, Index: lds, Scale: 1})
	VADDPS(x, sum, sum)
	VADDPS(y, sum2, sum2)
	LEAQ(Mem{Base: p, Index: lds, Scale: 2}, p)
	SUBQ(U8(2), n)
	JMP(LabelRef(name + "_exp2"))
	Label(name + "_exp1")
	TESTQ(n, n)
	JEQ(LabelRef(name + "_expdone"))
	x1 := is.vec()
	VMOVUPS(Mem{Base: p}, x1)
	VSUBPS(sh, x1, x1)
	exp(is, ek, x1)
	VMOVUPS(x1, Mem{Base: p})
	VADDPS(x1, sum, sum)
	Label(name + "_expdone")
	VADDPS(sum2, sum, sum)
	// l = l·alpha + sum
	lv := is.vec()
	VMOVUPS(Mem{Base: lp}, lv)
	VFMADD132PS(Mem{Base: ap}, sum, lv) // lv = lv·alpha + sum
	VMOVUPS(lv, Mem{Base: lp})

	ADDQ(U32(vb), sp)
	ADDQ(U32(vb), mp)
	ADDQ(U32(vb), lp)
	ADDQ(U32(vb), ap)
	SUBQ(U32(is.w), cols)
	JMP(LabelRef(name + "_strip"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

func expF32(is isa) {
	name := "expF32" + is.name
	TEXT(name, NOSPLIT, "func(x []float32)")
	Doc(fmt.Sprintf("%s replaces every x[i] by exp(x[i]), a few ulp from the correctly", name),
		"rounded value; -inf and x < -104 give 0, x > 89 gives +inf, NaN stays NaN:",
		"",
		"\tfor i := range x: x[i] = float32(math.Exp(float64(x[i])))")
	p := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())
	ek := newExpK(is)
	Label(name + "_loop")
	CMPQ(n, U32(is.w))
	JL(LabelRef(name + "_tail"))
	x := is.vec()
	VMOVUPS(Mem{Base: p}, x)
	exp(is, ek, x)
	VMOVUPS(x, Mem{Base: p})
	ADDQ(U32(4*is.w), p)
	SUBQ(U32(is.w), n)
	JMP(LabelRef(name + "_loop"))
	Label(name + "_tail")
	TESTQ(n, n)
	JEQ(LabelRef(name + "_done"))
	y := is.vec()
	if is.w == 16 {
		// k = (1<<n)-1 selects the n remaining lanes.
		one := GP32()
		MOVL(U32(1), one)
		cnt := GP64()
		MOVQ(n, cnt)
		SHLXL(cnt.As32(), one, one)
		DECL(one)
		km := K()
		KMOVW(one, km)
		VMOVUPS_Z(Mem{Base: p}, km, y)
		exp(is, ek, y)
		VMOVUPS(y, km, Mem{Base: p})
	} else {
		tbl := GP64()
		LEAQ(cTailMask, tbl)
		off := GP64()
		MOVQ(U32(8), off)
		SUBQ(n, off)
		msk := is.vec()
		VMOVUPS(Mem{Base: tbl, Index: off, Scale: 4}, msk)
		VMASKMOVPS(Mem{Base: p}, msk, y)
		exp(is, ek, y)
		VMASKMOVPS(y, msk, Mem{Base: p})
	}
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// dsoftmax is the elementwise step of the backward pass, row by row: the
// probabilities P = exp(S - lse) replace the scores, and the score
// gradients scale·P·(dP - Δ) replace dP. Two vectors a step, then one.
func dsoftmax(is isa) {
	name := "dsoftmax" + is.name
	TEXT(name, NOSPLIT, "func(s, dp []float32, ld, rows, cols int, lse, delta []float32, scale float32)")
	Doc(fmt.Sprintf("%s turns rows of scores and their gradients (cols a multiple of %d,", name, is.w),
		"leading dimension ld) into probabilities and score gradients:",
		"",
		"\tfor i < rows, j < cols:",
		"\t\tp := exp(s[i*ld+j] - lse[i]);  s[i*ld+j] = p",
		"\t\tdp[i*ld+j] = (p·scale)·(dp[i*ld+j] - delta[i])",
		"",
		"with exp as in expF32. The caller checks the slice bounds.")
	sp := Load(Param("s").Base(), GP64())
	dpp := Load(Param("dp").Base(), GP64())
	ld := Load(Param("ld"), GP64())
	SHLQ(U8(2), ld)
	rows := Load(Param("rows"), GP64())
	lp := Load(Param("lse").Base(), GP64())
	dl := Load(Param("delta").Base(), GP64())
	sx := Load(Param("scale"), XMM())
	sc := is.vec()
	VBROADCASTSS(sx, sc)
	ek := newExpK(is)
	vb := 4 * is.w
	TESTQ(rows, rows)
	JEQ(LabelRef(name + "_done"))
	Label(name + "_row")
	n := Load(Param("cols"), GP64())
	l := is.vec()
	dv := is.vec()
	VBROADCASTSS(Mem{Base: lp}, l)
	VBROADCASTSS(Mem{Base: dl}, dv)
	p := GP64()
	q := GP64()
	MOVQ(sp, p)
	MOVQ(dpp, q)
	Label(name + "_two")
	CMPQ(n, U32(2*is.w))
	JL(LabelRef(name + "_one"))
	x, x2, y, y2 := is.vec(), is.vec(), is.vec(), is.vec()
	VMOVUPS(Mem{Base: p}, x)
	VMOVUPS(Mem{Base: p, Disp: vb}, x2)
	VSUBPS(l, x, x)
	VSUBPS(l, x2, x2)
	exp(is, ek, x)
	exp(is, ek, x2)
	VMOVUPS(x, Mem{Base: p})
	VMOVUPS(x2, Mem{Base: p, Disp: vb})
	VMOVUPS(Mem{Base: q}, y)
	VMOVUPS(Mem{Base: q, Disp: vb}, y2)
	VSUBPS(dv, y, y)
	VSUBPS(dv, y2, y2)
	VMULPS(sc, x, x)
	VMULPS(sc, x2, x2)
	VMULPS(x, y, y)
	VMULPS(x2, y2, y2)
	VMOVUPS(y, Mem{Base: q})
	VMOVUPS(y2, Mem{Base: q, Disp: vb})
	ADDQ(U32(2*vb), p)
	ADDQ(U32(2*vb), q)
	SUBQ(U32(2*is.w), n)
	JMP(LabelRef(name + "_two"))
	Label(name + "_one")
	TESTQ(n, n)
	JEQ(LabelRef(name + "_next"))
	x1, y1 := is.vec(), is.vec()
	VMOVUPS(Mem{Base: p}, x1)
	VSUBPS(l, x1, x1)
	exp(is, ek, x1)
	VMOVUPS(x1, Mem{Base: p})
	VMOVUPS(Mem{Base: q}, y1)
	VSUBPS(dv, y1, y1)
	VMULPS(sc, x1, x1)
	VMULPS(x1, y1, y1)
	VMOVUPS(y1, Mem{Base: q})
	ADDQ(U32(vb), p)
	ADDQ(U32(vb), q)
	SUBQ(U32(is.w), n)
	JMP(LabelRef(name + "_one"))
	Label(name + "_next")
	ADDQ(ld, sp)
	ADDQ(ld, dpp)
	ADDQ(U8(4), lp)
	ADDQ(U8(4), dl)
	DECQ(rows)
	JNE(LabelRef(name + "_row"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

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

func fmaPeak(is isa) {
	name := "fmaPeak" + is.name
	TEXT(name, NOSPLIT, "func(n int)")
	Doc(fmt.Sprintf("%s runs n iterations of %d independent %d-lane FMAs (%d FLOP per iteration),", name, is.peakAcc, is.w, 2*is.w*is.peakAcc),
		"for measuring the core's peak.")
	n := Load(Param("n"), GP64())
	x := is.vec()
	VXORPS(x, x, x)
	acc := make([]VecVirtual, is.peakAcc)
	for i := range acc {
		acc[i] = is.vec()
		VXORPS(acc[i], acc[i], acc[i])
	}
	TESTQ(n, n)
	JEQ(LabelRef(name + "_done"))
	Label(name + "_loop")
	for i := range acc {
		VFMADD231PS(x, x, acc[i])
	}
	DECQ(n)
	JNE(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}

// evexRR returns the EVEX encoding of a 512-bit register-register
// instruction of map 0F38 with W0: opcode op, prefix pp (1: 66, 2: F3,
// 3: F2), dst the ModRM.reg operand, src1 the EVEX.vvvv one, src2 the
// ModRM.rm one (Intel order: op dst, src1, src2).
func evexRR(op, pp byte, dst, src1, src2 int) []byte {
	inv := func(r, bit int) byte { return byte(^r>>bit) & 1 }
	p0 := inv(dst, 3)<<7 | inv(src2, 4)<<6 | inv(src2, 3)<<5 | inv(dst, 4)<<4 | 2 // map 0F38
	p1 := byte(^src1&15)<<3 | 4 | pp                                              // W0
	p2 := byte(2)<<5 | inv(src1, 4)<<3                                            // L'L = 512, no mask
	return []byte{0x62, p0, p1, p2, op, 0xC0 | byte(dst&7)<<3 | byte(src2&7)}
}

// rawBytes emits an instruction the Go assembler does not know as BYTE
// directives, with a comment naming it. Its registers must be physical:
// the register allocator does not see them.
func rawBytes(asm string, b []byte) {
	Comment(asm)
	for _, x := range b {
		Instruction(&ir.Instruction{Opcode: "BYTE", Operands: []Op{U8(x)}})
	}
}

// dpbf16Peak is fmaPeak with VDPBF16PS (AVX512_BF16, 64 FLOP each: 16
// lanes of two products and two adds), which neither avo nor the Go
// assembler knows: it is emitted as bytes (encodings checked against GNU
// as), on physical registers Z0, Z1 and accumulators Z8..Z31.
func dpbf16Peak() {
	name := "dpbf16PeakAvx512"
	TEXT(name, NOSPLIT, "func(n int)")
	Doc(fmt.Sprintf("%s runs n iterations of 24 independent VDPBF16PS zmm (1536 FLOP per", name),
		"iteration), for measuring the core's bfloat16 dot-product peak; needs AVX512_BF16.")
	n := Load(Param("n"), GP64())
	VXORPS(Z0, Z0, Z0)
	VXORPS(Z1, Z1, Z1)
	accs := []VecPhysical{Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15, Z16, Z17, Z18, Z19,
		Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31}
	for _, z := range accs {
		VXORPS(z, z, z)
	}
	TESTQ(n, n)
	JEQ(LabelRef(name + "_done"))
	Label(name + "_loop")
	for i := range accs {
		rawBytes(fmt.Sprintf("VDPBF16PS Z0, Z1, Z%d (Z%d += Z1·Z0 in bf16 pairs)", 8+i, 8+i), evexRR(0x52, 2, 8+i, 1, 0))
	}
	DECQ(n)
	JNE(LabelRef(name + "_loop"))
	Label(name + "_done")
	VZEROUPPER()
	RET()
}
