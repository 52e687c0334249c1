// Command _asm generates the SIMD kernels of package kernels with avo.
//
//	cd pkg/kernels/_asm && go run . -out ../kernels_amd64.s -stubs ../stubs_amd64.go -pkg kernels
//
// Every kernel is generated twice from the same code: once for AVX-512 (zmm,
// 16 lanes, a 6×64 register tile) and once for AVX2+FMA (ymm, 8 lanes, a 6×16
// register tile). The reference loop of each kernel is its stub's doc comment;
// the Go wrappers in the package hold the dispatch and the edge handling.
//
// main.go holds the targets, the constants and the order of generation;
// gemm.go, softmax.go (with expF32 and the backward's dsoftmax), exp.go,
// bf16.go and peak.go the kernels.
package main

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
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
	cLn2, cLoFast                                                    Mem
	cQ                                                               [4]Mem
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
	// expFast: x = n·ln2 + r with one constant, exp(r) = 1 + r + r²·Q(r),
	// Q of degree 3 fitted for the least maximum relative error.
	cLn2 = constF32("expLn2", float32(math.Ln2))
	cLoFast = constF32("expLoFast", -87) // exp(-87) = 1.4·2⁻¹²⁶ is normal
	for i, q := range []float32{8.3125205711e-03, 4.1890181601e-02, 1.6667114198e-01, 4.9999231100e-01} {
		cQ[i] = constF32(fmt.Sprintf("expQ%d", i), q)
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
		if is.w == 16 {
			gemmNNMax(is)
			softmaxColsGen(is, true)
		}
		expF32(is)
		dsoftmax(is)
		roundBF16(is)
		fmaPeak(is)
	}
	dpbf16Peak()
	Generate()
}
