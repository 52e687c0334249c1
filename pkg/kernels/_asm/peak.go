package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/ir"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

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
