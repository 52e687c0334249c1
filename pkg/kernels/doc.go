// Package kernels computes exact blockwise attention on raw float32 slices.
//
// The unit of work is a State: the online-softmax state (running max, running
// sum, unnormalised accumulator) of a block of query rows. State.Fold adds a
// block of keys and values at any global position; State.FoldBlocks adds
// several in one pass over the query tiles (bit-identical to one Fold each),
// on strided views of q, k and v if asked (KV.Stride), and stops between
// tiles when its context ends. State.Merge combines two
// states over disjoint key ranges, and State.Finalize produces the output and
// the log-sum-exp. Attention does the whole problem at once. Masks (causal,
// sliding window, packed documents, in any combination) are evaluated on
// global positions, so any rank can fold any block; tiles a mask hides
// entirely are skipped without touching their memory. MatMulT is the GEMM of
// the projections (y = x·Wᵀ) on the same micro-kernel.
//
// # Tile loop
//
// Fold splits the work into units of br query rows of one (batch, head),
// run on all cores key/value head by key/value head (the cores then stream
// the same K and V at the same time), last query tile first within one
// (under a causal mask those see the most keys). A unit packs its queries
// once, transposed and pre-scaled (Qᵀ·scale, zero-padded to the register
// tile width), then for every tile of bc keys:
//
//	Sᵀ = K·(scale·Q)ᵀ                  gemmNN, K read in place
//	mask the partial tiles with -inf   (diagonal and window edges only)
//	online softmax down the columns    softmaxCols: max, alpha, exp, sum
//	O  = diag(alpha)·O + P·V           gemmTN, P read k-major from Sᵀ, V in place
//
// A partial tile runs a panel of 64 queries (the register tile width) at a
// time over only the keys some query of the panel sees, masking the rest of
// each query's keys; under a causal mask the diagonal tile thus computes a
// third of its pairs less. On tiles that need no mask, the AVX-512 GEMM
// folds the column maxima of Sᵀ from its registers (gemmNNMax) and the
// softmax skips its max pass (softmaxColsPre); the maxima are the same
// values, so the results are the same bits. While computing Sᵀ the GEMM prefetches the tile's V
// into L2, and while computing P·V the next tile's K (one PREFETCHT1 per
// four steps of k; the backward prefetches the next query tile's Q and
// dO the same way).
//
// Computing the scores transposed puts one query per SIMD lane, so the
// softmax needs no horizontal reductions, and P comes out k-major, as the
// register-tiled GEMM wants its left operand; the rescaling of O by alpha is
// fused into the GEMM's load of O. Nothing of K or V is copied (except for
// head dimensions that are not a multiple of the tile width).
//
// # Precision
//
// Params.Precision = PrecisionBF16 rounds scale·Q (once per query tile),
// each tile of K and V, and the probabilities P (after the softmax has
// summed them into L in float32) to bfloat16, ties to even, as
// pkg/transport's BF16 encoding does; the products of two bfloat16 values
// are exact in float32, and everything else (the sums, M, L, the state,
// the output, the LSE) stays float32. Rounding is idempotent, so inputs
// that arrive as bfloat16 and are widened give bit-identical results
// (when scale is a power of two, also for Q).
//
// Where the CPU has AMX-BF16 and AVX512_BF16 and Linux grants the tile
// data (arch_prctl ARCH_REQ_XCOMP_PERM), the "amx" implementation (the
// default there) runs both products on AMX tiles, TDPBF16PS, 16×16
// float32 accumulators over pairs of bfloat16 (amx_amd64.s, hand-encoded;
// every call configures and releases the tiles, so no tile state meets Go
// code). FoldBlocks then rounds and packs K and Vᵀ once per call for every
// key/value head (shared by all query tiles; Vᵀ a tile of keys at a time;
// heads a group at a time, at most 256 MiB of bfloat16 copies),
// Q once per query tile, and for each tile of keys:
//
//	Sᵀ = bf16(K)·bf16(scale·Q)ᵀ              amxGemm (prefetches V's tile)
//	mask the partial tiles with -inf         as above
//	online softmax down the columns          softmaxCols (AVX-512, float32)
//	Pᵀ in bfloat16 pairs                     packPairsBF16 (VCVTNE2PS2BF16)
//	Oᵀ = diag(alpha)·Oᵀ + bf16(V)ᵀ·bf16(P)ᵀ  scaleCols, amxGemm (prefetches the next K)
//
// with Oᵀ the query tile's float32 accumulator (transposed from and back
// to the state once per tile). L sums the float32 P, as on every other
// path; only the product sees bf16(P). It differs from the FMA path
// below in the order of the float32 sums and in AMX's treatment of
// denormals (inputs as zero, results flushed), which moves results by
// far less than the bound; on the Xeon it was built on it runs at 2-3×
// the float32 kernel (N=16384, D=128, H=8). Elsewhere (and with
// RINGATTN_KERNEL naming another implementation) PrecisionBF16 runs on
// the float32 FMA kernels, on every CPU and in the generic code alike:
// it is what AVX512_BF16's VDPBF16PS computes, up to the order of the
// sums and its flushing of denormals, but VDPBF16PS zmm retires one per
// two cycles against two FMAs per cycle on that Xeon, so its peak is
// half the FMA's (BenchmarkKernelPeak reports both, see PeakBF16GFLOPS)
// and a VDPBF16PS kernel would run at about half the float32 speed. The
// rounding costs a few percent of the float32 time.
//
// Error against a float64 computation on the float32 inputs, unit-normal
// q, k, v, measured over D in {16, 128, 256}, N in {64, 700}, causal and
// not: at most 0.53·2⁻⁸·max|v| on the output (0.009) and 0.0066 on the
// LSE, against 1e-4 for float32 (AMX, N in {700, 1500}: 0.43·2⁻⁸·max|v|
// and 0.0006; at the tile edges, rows seeing few keys: 2⁻⁸·max|v| and
// 0.0063); 2⁻⁸ is bfloat16's unit roundoff (8
// significant bits). The tests assert 2⁻⁷·max|v| and 2⁻⁶ (times
// max(1, |LSE|)) on every mask, ragged lengths and odd head dimensions.
// The error is largest on rows that see few keys (a row seeing one key
// returns bf16(v)); logits of magnitude x move by up to about x·2⁻⁸.
//
// # Backward
//
// AttentionBackward computes, in float32 whatever Params.Precision says, the gradients of sum(O·dO) with respect to q,
// k and v, FlashAttention-2's backward from O, LSE and dO: Δ = rowsum(dO∘O),
// and for each visible (query tile, key tile) P = exp(scale·Q·Kᵀ − LSE),
// dV += Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − Δ), dQ += scale·dS·K,
// dK += scale·dSᵀ·Q. BackwardBlock does one (query rows, key block) pair for
// a ring and adds into dQ and the block's dK/dV. Work units of (key tile,
// key/value head) keep dK/dV in their own accumulators; each dQ tile
// receives key tiles in key order, so results are bit-identical for any
// thread count. The five products run on gemmNN/gemmTN; dsoftmax (assembly)
// is the elementwise step P = exp(S − lse), dS = scale·P·(dP − Δ). Rows that
// see no key get zero gradients; tiles the mask hides are skipped.
//
// # Implementations
//
//   - "generic": plain Go. It always compiles, and it is the reference the
//     assembly is tested against.
//   - "avx2": AVX2+FMA assembly, 6×16 register tile (12 ymm accumulators).
//   - "avx512": AVX-512 assembly (F, BW, DQ, VL), 6×64 register tile
//     (24 zmm accumulators); exp scales with VSCALEFPS.
//   - "amx": "avx512", plus the bfloat16 forward pass on AMX tiles (see
//     Precision); registered, as the default, only where AMX runs.
//
// The assembly is generated with avo from ./_asm (its own go.mod) into
// kernels_amd64.s and stubs_amd64.go, whose doc comments give every
// kernel's reference loop; it builds with `!noasm && gc` on amd64. exp is a
// Cephes-style polynomial after range reduction, within 1 ulp of the
// correctly rounded result over the float32 range (tested), 0 for -inf and
// x < -104, +inf above 89, NaN for NaN. The forward's online softmax
// (softmaxCols) uses a cheaper exp of its arguments x <= 0: one constant in
// the range reduction and a degree-5 polynomial, within 6 ulp for results
// above 1e-30 (11 instructions against 15), and 0 below exp(-87): no
// denormal probabilities, whose microcode assists made the masked tiles of
// a causal mask cost about twice a full one. The best implementation the CPU
// supports (golang.org/x/sys/cpu) is picked at init; the environment variable
// RINGATTN_KERNEL=generic (or avx2, avx512) at start-up picks another, and
// Use switches in tests and benchmarks; Impls lists what this CPU has.
// Build with -tags noasm for the generic code alone.
//
// Under the race detector the Go wrappers read (and write) exactly the
// elements each assembly kernel touches, so races through assembly are seen.
//
// PeakGFLOPS measures one core's FMA throughput with the widest vector unit,
// for reporting kernel speed as a fraction of the machine's peak;
// PeakBF16GFLOPS that of VDPBF16PS where the CPU has AVX512_BF16.
//
// This package imports nothing of this module.
package kernels
