package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

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
