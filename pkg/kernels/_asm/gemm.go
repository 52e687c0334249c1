package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

func gemmNN(is isa) {
	name := "gemmNN" + is.name
	TEXT(name, NOSPLIT, "func(mr, tiles, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool, pf uintptr)")
	Doc(fmt.Sprintf("%s computes tiles register tiles of C = A·B (acc false) or C += A·B (acc true),", name),
		fmt.Sprintf("A row-major [m×k], B row-major [k×%d], C row-major [m×%d], m = tiles·mr, 1 <= mr <= %d,", is.w*is.nv, is.w*is.nv, is.mr),
		"tiles >= 1:",
		"",
		fmt.Sprintf("\tfor i < m, j < %d:", is.w*is.nv),
		"\t\tc[i*ldc+j] = (acc ? c[i*ldc+j] : 0) + Σ_{p<k} a[i*lda+p]·b[p*ldb+j]",
		"",
		"Every four steps of k it prefetches (PREFETCHT1) the next cache line from pf on,",
		"a hint that never faults: the caller points it at data it reads next.",
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

func gemmNNMax(is isa) {
	name := "gemmNNMax" + is.name
	TEXT(name, NOSPLIT, "func(mr, tiles, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, mx []float32, pf uintptr)")
	Doc(fmt.Sprintf("%s is gemmNN%s with acc false that also folds the column maxima", name, is.name),
		fmt.Sprintf("of C into mx (len(mx) >= %d), row by row in order (VMAXPS, C the second operand):", is.w*is.nv),
		"",
		fmt.Sprintf("	for i < m, j < %d:", is.w*is.nv),
		"		c[i*ldc+j] = Σ_{p<k} a[i*lda+p]·b[p*ldb+j];  mx[j] = max(mx[j], c[i*ldc+j])",
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
		gemmBlockMode(is, name, r, false, true)
	}
}

func gemmTN(is isa) {
	name := "gemmTN" + is.name
	TEXT(name, NOSPLIT, "func(mr, tiles, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, alpha []float32, pf uintptr)")
	Doc(fmt.Sprintf("%s computes tiles register tiles of C = diag(alpha)·C + Aᵀ·B with A", name),
		fmt.Sprintf("stored k-major [k×lda], B row-major [k×%d], C row-major [m×%d], m = tiles·mr,", is.w*is.nv, is.w*is.nv),
		fmt.Sprintf("1 <= mr <= %d, tiles >= 1:", is.mr),
		"",
		fmt.Sprintf("\tfor i < m, j < %d:", is.w*is.nv),
		"\t\tc[i*ldc+j] = alpha[i]·c[i*ldc+j] + Σ_{p<k} a[p*lda+i]·b[p*ldb+j]",
		"",
		"Every four steps of k it prefetches (PREFETCHT1) the next cache line from pf on,",
		"a hint that never faults: the caller points it at data it reads next.",
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

// gemmBlock emits the loop over tiles of r rows; tn selects the k-major A
// with the alpha row scale on C, else row-major A with the acc flag. The
// pointers of the next tile (a, c, alpha) and the tile count live in the
// argument slots between tiles.
func gemmBlock(is isa, name string, r int, tn bool) { gemmBlockMode(is, name, r, tn, false) }

// gemmBlockMode is gemmBlock; colMax (not with tn) zeroes C instead of
// reading acc and folds the column maxima of each tile into mx.
func gemmBlockMode(is isa, name string, r int, tn, colMax bool) {
	lbl := func(s string) string { return fmt.Sprintf("%s_%s%d", name, s, r) }
	lda := Load(Param("lda"), GP64())
	SHLQ(U8(2), lda)
	ldb := Load(Param("ldb"), GP64())
	SHLQ(U8(2), ldb)
	ldc := Load(Param("ldc"), GP64())
	SHLQ(U8(2), ldc)
	pf := Load(Param("pf"), GP64())
	a, a3, b, b3, k, cp := GP64(), GP64(), GP64(), GP64(), GP64(), GP64()

	z := make([][]VecVirtual, r)
	for i := range z {
		z[i] = make([]VecVirtual, is.nv)
		for v := range z[i] {
			z[i][v] = is.vec()
		}
	}
	vb := 4 * is.w // bytes per vector

	Label(lbl("tile"))
	Load(Param("c").Base(), cp)
	if tn {
		al := Load(Param("alpha").Base(), GP64())
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
		ADDQ(U8(4*r), al)
		Store(al, Param("alpha").Base())
	} else if colMax {
		for i := 0; i < r; i++ {
			for v := 0; v < is.nv; v++ {
				VXORPS(z[i][v], z[i][v], z[i][v])
			}
		}
	} else {
		acc := Load(Param("acc"), GP8())
		CMPB(acc, U8(0))
		JEQ(LabelRef(lbl("zero")))
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

	// The k loop runs four steps an iteration, then one at a time. Step
	// u of an iteration reads B at b + u·ldb (b3 = b + 3·ldb) and A's row
	// i at a + 4·u + i·lda (row-major; a3 = a + 3·lda) or at
	// a + u·lda + 4·i (k-major; a3 = a + 3·lda): addressing by
	// displacement and index keeps the integer work of an iteration to
	// five instructions for 4·mr·nv FMAs.
	Load(Param("k"), k)
	Load(Param("a").Base(), a)
	Load(Param("b").Base(), b)
	LEAQ(Mem{Base: b, Index: ldb, Scale: 2}, b3)
	ADDQ(ldb, b3)
	if tn || r > 3 {
		LEAQ(Mem{Base: a, Index: lda, Scale: 2}, a3)
		ADDQ(lda, a3)
	}
	bMem := func(u, v int) Mem {
		switch u {
		case 0:
			return Mem{Base: b, Disp: v * vb}
		case 1:
			return Mem{Base: b, Index: ldb, Scale: 1, Disp: v * vb}
		case 2:
			return Mem{Base: b, Index: ldb, Scale: 2, Disp: v * vb}
		}
		return Mem{Base: b3, Disp: v * vb}
	}
	aMem := func(u, i int) Mem {
		if tn {
			switch u {
			case 0:
				return Mem{Base: a, Disp: 4 * i}
			case 1:
				return Mem{Base: a, Index: lda, Scale: 1, Disp: 4 * i}
			case 2:
				return Mem{Base: a, Index: lda, Scale: 2, Disp: 4 * i}
			}
			return Mem{Base: a3, Disp: 4 * i}
		}
		base := a
		if i >= 3 {
			base, i = a3, i-3
		}
		switch i {
		case 0:
			return Mem{Base: base, Disp: 4 * u}
		case 1:
			return Mem{Base: base, Index: lda, Scale: 1, Disp: 4 * u}
		}
		return Mem{Base: base, Index: lda, Scale: 2, Disp: 4 * u}
	}
	bv := make([]VecVirtual, is.nv)
	for v := range bv {
		bv[v] = is.vec()
	}
	t := is.vec()
	step := func(u int) {
		for v := 0; v < is.nv; v++ {
			VMOVUPS(bMem(u, v), bv[v])
		}
		for i := 0; i < r; i++ {
			VBROADCASTSS(aMem(u, i), t)
			for v := 0; v < is.nv; v++ {
				VFMADD231PS(bv[v], t, z[i][v])
			}
		}
	}
	advance := func(steps int) {
		if tn {
			if steps == 4 {
				LEAQ(Mem{Base: a, Index: lda, Scale: 4}, a)
				LEAQ(Mem{Base: a3, Index: lda, Scale: 4}, a3)
			} else {
				ADDQ(lda, a)
				ADDQ(lda, a3)
			}
		} else {
			ADDQ(U8(4*steps), a)
			if r > 3 {
				ADDQ(U8(4*steps), a3)
			}
		}
		if steps == 4 {
			LEAQ(Mem{Base: b, Index: ldb, Scale: 4}, b)
			LEAQ(Mem{Base: b3, Index: ldb, Scale: 4}, b3)
		} else {
			ADDQ(ldb, b)
			ADDQ(ldb, b3)
		}
	}
	CMPQ(k, U8(4))
	JL(LabelRef(lbl("tail")))
	Label(lbl("loop"))
	for u := 0; u < 4; u++ {
		step(u)
		if u == 1 {
			PREFETCHT1(Mem{Base: pf})
		}
	}
	ADDQ(U8(64), pf)
	advance(4)
	SUBQ(U8(4), k)
	CMPQ(k, U8(4))
	JGE(LabelRef(lbl("loop")))
	Label(lbl("tail"))
	TESTQ(k, k)
	JEQ(LabelRef(lbl("store")))
	Label(lbl("one"))
	step(0)
	advance(1)
	DECQ(k)
	JNE(LabelRef(lbl("one")))

	Label(lbl("store"))
	if colMax {
		mp := Load(Param("mx").Base(), GP64())
		for v := 0; v < is.nv; v++ {
			VMOVUPS(Mem{Base: mp, Disp: v * vb}, bv[v])
			for i := 0; i < r; i++ {
				VMAXPS(z[i][v], bv[v], bv[v])
			}
			VMOVUPS(bv[v], Mem{Base: mp, Disp: v * vb})
		}
	}
	Load(Param("c").Base(), cp)
	for i := 0; i < r; i++ {
		for v := 0; v < is.nv; v++ {
			VMOVUPS(z[i][v], Mem{Base: cp, Disp: v * vb})
		}
		ADDQ(ldc, cp)
	}
	Store(cp, Param("c").Base())
	// The next tile's A: r rows (row-major) or r columns (k-major) on.
	Load(Param("a").Base(), a)
	if tn {
		ADDQ(U8(4*r), a)
	} else {
		for i := 0; i < r; i++ {
			ADDQ(lda, a)
		}
	}
	Store(a, Param("a").Base())
	Load(Param("tiles"), k)
	DECQ(k)
	Store(k, Param("tiles"))
	JNE(LabelRef(lbl("tile")))
	VZEROUPPER()
	RET()
}
