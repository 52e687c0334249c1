package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

func softmaxCols(is isa) { softmaxColsGen(is, false) }

// softmaxColsGen emits softmaxCols, or with pre softmaxColsPre, which
// takes the new column maxima (as softmaxCols's first pass computes them)
// in mx instead of computing them.
func softmaxColsGen(is isa, pre bool) {
	name := "softmaxCols" + is.name
	sig := "func(s []float32, lds, rows int, m, l, alpha []float32)"
	if pre {
		name = "softmaxColsPre" + is.name
		sig = "func(s []float32, lds, rows int, m, l, alpha, mx []float32)"
	}
	TEXT(name, NOSPLIT, sig)
	if pre {
		Doc(fmt.Sprintf("%s is softmaxCols%s with the first pass's maxima given:", name, is.name),
			"mx[i] = max(m[i], max_j s[j*lds+i]) for i < len(m). The caller checks the slice bounds.")
	} else {
		softmaxColsDoc(is, name)
	}
	softmaxColsBody(is, name, pre)
}

func softmaxColsDoc(is isa, name string) {
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
		"with exp within 6 ulp and 0 below exp(-87) (expFast in _asm/exp.go; expF32 is",
		"more accurate).",
		"The caller checks the slice bounds.")
}

func softmaxColsBody(is isa, name string, pre bool) {
	sp := Load(Param("s").Base(), GP64())
	lds := Load(Param("lds"), GP64())
	SHLQ(U8(2), lds)
	var xp Register
	if pre {
		xp = Load(Param("mx").Base(), GP64())
	}
	mp := Load(Param("m").Base(), GP64())
	lp := Load(Param("l").Base(), GP64())
	ap := Load(Param("alpha").Base(), GP64())
	cols := Load(Param("m").Len(), GP64())
	vb := 4 * is.w
	ek := newExpFastK(is)
	exp := expFast

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
	n := GP64()
	if pre {
		VMOVUPS(Mem{Base: xp}, mx)
		ADDQ(U32(vb), xp)
		JMP(LabelRef(name + "_maxstore"))
	}
	VMOVUPS(mold, mx)
	VMOVUPS(mold, mx2)
	// Pass 1: column maxima, two rows at a time.
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
	Label(name + "_maxstore")
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
