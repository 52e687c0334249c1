// Package kernels computes exact blockwise attention on raw float32 slices.
//
// The unit of work is a State: the online-softmax state (running max, running
// sum, unnormalised accumulator) of a block of query rows. State.Fold adds a
// block of keys and values at any global position, State.Merge combines two
// states over disjoint key ranges, and State.Finalize produces the output and
// the log-sum-exp. Attention does the whole problem at once. Masks (causal,
// sliding window, packed documents, in any combination) are evaluated on
// global positions, so any rank can fold any block; tiles a mask hides
// entirely are skipped without touching their memory.
//
// The tile primitives (a small GEMM, scale-and-max, exp-and-sum) are chosen
// once at init from the CPU's features: plain Go always compiles and is the
// reference; SIMD assembly sits behind `//go:build !noasm && gc`. Use forces
// an implementation in tests; Impls lists them.
//
// This package imports nothing of this module.
package kernels
