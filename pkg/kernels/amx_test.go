package kernels_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// useAMX switches to the "amx" implementation for the test, or skips it
// where the CPU or the OS does not run AMX.
func useAMX(t *testing.T) {
	t.Helper()
	if !slices.Contains(kernels.Impls(), "amx") {
		t.Skip("no AMX here (implementations: ", kernels.Impls(), ")")
	}
	restore, err := kernels.Use("amx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restore)
}

// amxErrs are the largest errors seen against float64, relative to the
// bounds' scales (max|v| and max(1, |LSE|)).
type amxErrs struct{ o, lse float64 }

// checkAMX runs p in bfloat16 on AMX and checks it against the float64
// reference (the documented bfloat16 bounds) and against the float32-FMA
// bfloat16 path of "avx512" (same rounded inputs; the sums' order, the
// rounding of P at a different running maximum and AMX's flushing of
// denormals differ).
func checkAMX(t *testing.T, p problem, seed uint64, errs *amxErrs) {
	t.Helper()
	q, k, v := p.inputs(seed)
	wantO, wantLSE := p.ref().Attention(q, k, v)
	vmax, ls := maxAbs32(v), lseScale(wantLSE)
	o, lse := bf16Run(t, p, q, k, v)
	eo, el := attnref.MaxAbsDiff(o, wantO), attnref.MaxAbsDiff(lse, wantLSE)
	if !(eo <= bf16OutBound*vmax) {
		t.Fatalf("amx %v: bf16 max |o - ref| = %g > %g", p, eo, bf16OutBound*vmax)
	}
	if !(el <= bf16LSEBound*ls) {
		t.Fatalf("amx %v: bf16 max |lse - ref| = %g > %g", p, el, bf16LSEBound*ls)
	}
	if errs != nil {
		errs.o, errs.lse = max(errs.o, eo/vmax), max(errs.lse, el/ls)
	}
	restore, err := kernels.Use("avx512")
	if err != nil {
		t.Fatal(err)
	}
	fo, flse := bf16Run(t, p, q, k, v)
	restore()
	if e := maxDiff32(o, fo); !(e <= bf16U*vmax) {
		t.Fatalf("amx %v: bf16 max |o - avx512| = %g > %g", p, e, bf16U*vmax)
	}
	if e := maxDiff32(lse, flse); !(e <= 1e-5*ls) {
		t.Fatalf("amx %v: bf16 max |lse - avx512| = %g", p, e)
	}
}

// TestKernelAMXTileEdges runs the AMX path at and around the edges of its
// tiles: query rows and keys around 16 and 32 (AMX tiles), 64, 128 (keys
// per tile) and 192 (query rows per unit), head dimensions that are and
// are not multiples of 32 (zero padding) up to the limit, every mask on
// some, GQA and cross-attention.
func TestKernelAMXTileEdges(t *testing.T) {
	useAMX(t)
	lens := []int{1, 15, 16, 17, 31, 33, 63, 64, 65, 129}
	var errs amxErrs
	i := 0
	for _, n := range lens {
		for _, nk := range append(lens, 127, 128, 257) {
			for _, d := range []int{33, 128} {
				i++
				ms := []kernels.Mask{{}, {Causal: true}}
				if i%4 == 0 {
					ms = masksFor(n, nk)
				}
				hh := [][2]int{{1, 1}, {4, 2}, {3, 1}}[i%3]
				for _, m := range ms {
					checkAMX(t, problem{b: 1 + i%2, hq: hh[0], hkv: hh[1], n: n, nk: nk, d: d, mask: m}, uint64(i), &errs)
				}
			}
		}
	}
	for _, d := range []int{1, 31, 32, 33, 64, 128, 255, kernels.MaxHeadDim} {
		for _, nn := range [][2]int{{1, 1}, {17, 33}, {65, 129}, {193, 300}, {385, 130}} {
			for _, m := range []kernels.Mask{{}, {Causal: true}} {
				i++
				checkAMX(t, problem{b: 1, hq: 2, hkv: 1, n: nn[0], nk: nn[1], d: d, mask: m}, uint64(i), &errs)
			}
		}
	}
	t.Logf("largest errors: |o - ref| = %.3g·max|v|, |lse - ref| = %.3g·max(1, |lse|)", errs.o, errs.lse)
}

// TestKernelAMXAccuracy states the AMX path's error where many keys are
// summed (the bound of TestKernelBF16Accuracy) and that it ran: its
// results are not bit-identical to the FMA path's.
func TestKernelAMXAccuracy(t *testing.T) {
	useAMX(t)
	var errs amxErrs
	for _, d := range []int{16, 128, 256} {
		for _, n := range []int{700, 1500} {
			if testing.Short() && n > 700 {
				continue
			}
			for _, m := range []kernels.Mask{{}, {Causal: true}} {
				checkAMX(t, problem{b: 1, hq: 1, hkv: 1, n: n, nk: n, d: d, mask: m}, uint64(n+d), &errs)
			}
		}
	}
	t.Logf("largest errors: |o - ref| = %.3g·max|v|, |lse - ref| = %.3g·max(1, |lse|)", errs.o, errs.lse)
	p := problem{b: 1, hq: 2, hkv: 2, n: 200, nk: 200, d: 64}
	q, k, v := p.inputs(1)
	o, _ := bf16Run(t, p, q, k, v)
	restore, err := kernels.Use("avx512")
	if err != nil {
		t.Fatal(err)
	}
	fo, _ := bf16Run(t, p, q, k, v)
	restore()
	if maxDiff32(o, fo) == 0 {
		t.Fatal("amx and avx512 bf16 outputs are bit-identical: did the AMX path run?")
	}
}

// TestKernelAMXCanceled: a canceled bf16 fold on AMX stops and says so.
func TestKernelAMXCanceled(t *testing.T) {
	useAMX(t)
	p := problem{b: 1, hq: 2, hkv: 1, n: 100, nk: 100, d: 32}
	prm := p.params()
	prm.Precision = kernels.PrecisionBF16
	q, k, v := p.inputs(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := kernels.NewState(1, 2, 100, 32)
	if err := s.FoldBlocks(ctx, prm, q, 0, 0, []kernels.KV{{K: k, V: v, N: 100}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("FoldBlocks with a canceled context: err = %v, expected context.Canceled", err)
	}
}
