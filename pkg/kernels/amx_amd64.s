//go:build !noasm && gc

// Hand-written AMX (TDPBF16PS) and AVX512_BF16 kernels of the bfloat16
// forward pass on AMX machines (see amx_amd64.go). Go's assembler does not
// know the AMX instructions, so they are spelled as bytes below, each
// checked against GNU as 2.x / objdump (AT&T syntax in the comments; the
// registers are fixed, so every encoding is a constant). Every function
// that touches tile data configures the tiles, computes and releases them
// (TILERELEASE) within one call: assembly is never preempted
// asynchronously, so no tile state outlives a call or meets Go code.

#include "textflag.h"

// ldtilecfg (%rax)
#define LDTILECFG_AX BYTE $0xc4; BYTE $0xe2; BYTE $0x78; BYTE $0x49; BYTE $0x00
// tilerelease
#define TILERELEASE BYTE $0xc4; BYTE $0xe2; BYTE $0x78; BYTE $0x49; BYTE $0xc0
// tilezero %tmm0 .. %tmm3
#define TILEZERO_0 BYTE $0xc4; BYTE $0xe2; BYTE $0x7b; BYTE $0x49; BYTE $0xc0
#define TILEZERO_1 BYTE $0xc4; BYTE $0xe2; BYTE $0x7b; BYTE $0x49; BYTE $0xc8
#define TILEZERO_2 BYTE $0xc4; BYTE $0xe2; BYTE $0x7b; BYTE $0x49; BYTE $0xd0
#define TILEZERO_3 BYTE $0xc4; BYTE $0xe2; BYTE $0x7b; BYTE $0x49; BYTE $0xd8

// The accumulators C0..C3 (tmm0..3), row stride DX:
// tileloadd (%rbx,%rdx,1),%tmm0      tileloadd 0x40(%rbx,%rdx,1),%tmm1
// tileloadd (%r10,%rdx,1),%tmm2      tileloadd 0x40(%r10,%rdx,1),%tmm3
#define LOAD_C0 BYTE $0xc4; BYTE $0xe2; BYTE $0x7b; BYTE $0x4b; BYTE $0x04; BYTE $0x13
#define LOAD_C1 BYTE $0xc4; BYTE $0xe2; BYTE $0x7b; BYTE $0x4b; BYTE $0x4c; BYTE $0x13; BYTE $0x40
#define LOAD_C2 BYTE $0xc4; BYTE $0xc2; BYTE $0x7b; BYTE $0x4b; BYTE $0x14; BYTE $0x12
#define LOAD_C3 BYTE $0xc4; BYTE $0xc2; BYTE $0x7b; BYTE $0x4b; BYTE $0x5c; BYTE $0x12; BYTE $0x40
// tilestored %tmm0,(%rbx,%rdx,1)     tilestored %tmm1,0x40(%rbx,%rdx,1)
// tilestored %tmm2,(%r10,%rdx,1)     tilestored %tmm3,0x40(%r10,%rdx,1)
#define STORE_C0 BYTE $0xc4; BYTE $0xe2; BYTE $0x7a; BYTE $0x4b; BYTE $0x04; BYTE $0x13
#define STORE_C1 BYTE $0xc4; BYTE $0xe2; BYTE $0x7a; BYTE $0x4b; BYTE $0x4c; BYTE $0x13; BYTE $0x40
#define STORE_C2 BYTE $0xc4; BYTE $0xc2; BYTE $0x7a; BYTE $0x4b; BYTE $0x14; BYTE $0x12
#define STORE_C3 BYTE $0xc4; BYTE $0xc2; BYTE $0x7a; BYTE $0x4b; BYTE $0x5c; BYTE $0x12; BYTE $0x40

// The operands: A0 (tmm4) and A1 (tmm5) at R8 and R10, row stride R9;
// B0 (tmm6) and B1 (tmm7) at R11 and R11+64, row stride R12:
// tileloadd (%r8,%r9,1),%tmm4        tileloadd (%r10,%r9,1),%tmm5
// tileloadd (%r11,%r12,1),%tmm6      tileloadd 0x40(%r11,%r12,1),%tmm7
#define LOAD_A0 BYTE $0xc4; BYTE $0x82; BYTE $0x7b; BYTE $0x4b; BYTE $0x24; BYTE $0x08
#define LOAD_A1 BYTE $0xc4; BYTE $0x82; BYTE $0x7b; BYTE $0x4b; BYTE $0x2c; BYTE $0x0a
#define LOAD_B0 BYTE $0xc4; BYTE $0x82; BYTE $0x7b; BYTE $0x4b; BYTE $0x34; BYTE $0x23
#define LOAD_B1 BYTE $0xc4; BYTE $0x82; BYTE $0x7b; BYTE $0x4b; BYTE $0x7c; BYTE $0x23; BYTE $0x40

// Cij += Ai·Bj:
// tdpbf16ps %tmm6,%tmm4,%tmm0        tdpbf16ps %tmm7,%tmm4,%tmm1
// tdpbf16ps %tmm6,%tmm5,%tmm2        tdpbf16ps %tmm7,%tmm5,%tmm3
#define TDP_C0 BYTE $0xc4; BYTE $0xe2; BYTE $0x4a; BYTE $0x5c; BYTE $0xc4
#define TDP_C1 BYTE $0xc4; BYTE $0xe2; BYTE $0x42; BYTE $0x5c; BYTE $0xcc
#define TDP_C2 BYTE $0xc4; BYTE $0xe2; BYTE $0x4a; BYTE $0x5c; BYTE $0xd5
#define TDP_C3 BYTE $0xc4; BYTE $0xe2; BYTE $0x42; BYTE $0x5c; BYTE $0xdd

// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes
// (bytes 16..31: colsb of tmm0..7 as uint16; bytes 48..55: rows).
DATA amxcfg<>+0(SB)/8, $0x0000000000000001
DATA amxcfg<>+8(SB)/8, $0
DATA amxcfg<>+16(SB)/8, $0x0040004000400040
DATA amxcfg<>+24(SB)/8, $0x0040004000400040
DATA amxcfg<>+32(SB)/8, $0
DATA amxcfg<>+40(SB)/8, $0
DATA amxcfg<>+48(SB)/8, $0x1010101010101010
DATA amxcfg<>+56(SB)/8, $0
GLOBL amxcfg<>(SB), RODATA|NOPTR, $64

// func amxGemm(a *uint16, lda int, b *uint32, ldb int, c *float32, ldc int, mt int, nt int, kt int, acc bool, pf *byte, pfn int)
//
// Loops: 32 rows of A and C (mt), 32 columns of B and C (nt), 32 steps
// of k (kt): C0..C3 += A0·B0, A0·B1, A1·B0, A1·B1. Each k step also
// prefetches (PREFETCHT1) the next KiB of [pf, pf+pfn), a region the
// caller reads next.
TEXT ·amxGemm(SB), NOSPLIT, $24-96
	LEAQ amxcfg<>(SB), AX
	LDTILECFG_AX
	MOVQ a+0(FP), SI
	MOVQ lda+8(FP), R9
	MOVQ ldb+24(FP), R12
	MOVQ c+32(FP), CX
	MOVQ ldc+40(FP), DX
	MOVQ pf+80(FP), R13
	MOVQ pfn+88(FP), AX
	ADDQ R13, AX
	MOVQ AX, pfe-24(SP)
	MOVQ mt+48(FP), AX
	MOVQ AX, mc-8(SP)

mloop:
	MOVQ b+16(FP), DI
	MOVQ CX, BX
	MOVQ nt+56(FP), AX
	MOVQ AX, nc-16(SP)

nloop:
	MOVQ DX, R10
	SHLQ $4, R10
	ADDQ BX, R10
	CMPB acc+72(FP), $0
	JEQ  zero
	LOAD_C0
	LOAD_C1
	LOAD_C2
	LOAD_C3
	JMP  kstart

zero:
	TILEZERO_0
	TILEZERO_1
	TILEZERO_2
	TILEZERO_3

kstart:
	MOVQ SI, R8
	MOVQ R9, R10
	SHLQ $4, R10
	ADDQ SI, R10
	MOVQ DI, R11
	MOVQ kt+64(FP), AX

kloop:
	LOAD_A0
	LOAD_A1
	LOAD_B0
	LOAD_B1
	TDP_C0
	TDP_C1
	TDP_C2
	TDP_C3
	CMPQ R13, pfe-24(SP)
	JAE  nopf
	PREFETCHT1 (R13)
	PREFETCHT1 64(R13)
	PREFETCHT1 128(R13)
	PREFETCHT1 192(R13)
	PREFETCHT1 256(R13)
	PREFETCHT1 320(R13)
	PREFETCHT1 384(R13)
	PREFETCHT1 448(R13)
	PREFETCHT1 512(R13)
	PREFETCHT1 576(R13)
	PREFETCHT1 640(R13)
	PREFETCHT1 704(R13)
	PREFETCHT1 768(R13)
	PREFETCHT1 832(R13)
	PREFETCHT1 896(R13)
	PREFETCHT1 960(R13)
	ADDQ $1024, R13

nopf:
	ADDQ $64, R8
	ADDQ $64, R10
	LEAQ (R11)(R12*8), R11
	LEAQ (R11)(R12*8), R11
	DECQ AX
	JNZ  kloop

	MOVQ DX, R10
	SHLQ $4, R10
	ADDQ BX, R10
	STORE_C0
	STORE_C1
	STORE_C2
	STORE_C3
	ADDQ $128, DI
	ADDQ $128, BX
	DECQ nc-16(SP)
	JNZ  nloop

	// next 32 rows of A and C
	MOVQ R9, AX
	SHLQ $5, AX
	ADDQ AX, SI
	MOVQ DX, AX
	SHLQ $5, AX
	ADDQ AX, CX
	DECQ mc-8(SP)
	JNZ  mloop

	TILERELEASE
	RET

// The interleaving of VCVTNE2PS2BF16's halves: word 2j takes word j (the
// even row), word 2j+1 word 16+j (the odd row).
DATA pairidx<>+0(SB)/8, $0x0011000100100000
DATA pairidx<>+8(SB)/8, $0x0013000300120002
DATA pairidx<>+16(SB)/8, $0x0015000500140004
DATA pairidx<>+24(SB)/8, $0x0017000700160006
DATA pairidx<>+32(SB)/8, $0x0019000900180008
DATA pairidx<>+40(SB)/8, $0x001b000b001a000a
DATA pairidx<>+48(SB)/8, $0x001d000d001c000c
DATA pairidx<>+56(SB)/8, $0x001f000f001e000e
GLOBL pairidx<>(SB), RODATA|NOPTR, $64

// func packPairsBF16(s *float32, lds int, dst *uint32, ldd int, pairs int, n int)
TEXT ·packPairsBF16(SB), NOSPLIT, $0-48
	MOVQ    s+0(FP), SI
	MOVQ    lds+8(FP), R9
	MOVQ    dst+16(FP), DI
	MOVQ    ldd+24(FP), R10
	MOVQ    pairs+32(FP), CX
	MOVQ    n+40(FP), DX
	SHRQ    $4, DX
	VMOVDQU64 pairidx<>(SB), Z31

rloop:
	MOVQ    SI, R8
	LEAQ    (SI)(R9*1), R11
	MOVQ    DI, R12
	MOVQ    DX, BX

jloop:
	VMOVUPS (R11), Z0
	// vcvtne2ps2bf16 (%r8),%zmm0,%zmm1: Z1 = bf16 of (R8)'s row in the
	// low 16 words, of Z0's in the high 16 (Go's assembler lacks it)
	BYTE    $0x62; BYTE $0xd2; BYTE $0x7f; BYTE $0x48; BYTE $0x72; BYTE $0x08
	VPERMW  Z1, Z31, Z1
	VMOVDQU32 Z1, (R12)
	ADDQ    $64, R8
	ADDQ    $64, R11
	ADDQ    $64, R12
	DECQ    BX
	JNZ     jloop
	LEAQ    (SI)(R9*2), SI
	ADDQ    R10, DI
	DECQ    CX
	JNZ     rloop
	VZEROUPPER
	RET

// func scaleColsAvx512(o *float32, ldo int, rows int, n int, alpha *float32)
//
// A group of 16 columns at a time, down the rows; groups whose alpha is
// all ones (the running maxima did not move) are skipped.
TEXT ·scaleColsAvx512(SB), NOSPLIT, $0-40
	MOVQ         o+0(FP), SI
	MOVQ         ldo+8(FP), R9
	MOVQ         n+24(FP), DX
	SHRQ         $4, DX
	MOVQ         alpha+32(FP), DI
	MOVL         $0x3f800000, AX
	VPBROADCASTD AX, Z2

scol:
	VMOVUPS  (DI), Z1
	VCMPPS   $0, Z2, Z1, K1
	KORTESTW K1, K1
	JCS      snext
	MOVQ     SI, R8
	MOVQ     rows+16(FP), CX

srow:
	VMULPS  (R8), Z1, Z0
	VMOVUPS Z0, (R8)
	ADDQ    R9, R8
	DECQ    CX
	JNZ     srow

snext:
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ DX
	JNZ  scol
	VZEROUPPER
	RET

// func xgetbv0() uint64
TEXT ·xgetbv0(SB), NOSPLIT, $0-8
	MOVL $0, CX
	BYTE $0x0f; BYTE $0x01; BYTE $0xd0 // xgetbv
	SHLQ $32, DX
	ORQ  DX, AX
	MOVQ AX, ret+0(FP)
	RET
