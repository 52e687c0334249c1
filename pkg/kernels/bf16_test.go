package kernels_test

import (
	"errors"
	"math"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// bf16U is bfloat16's unit roundoff: 8 significant bits, ties to even.
var bf16U = math.Ldexp(1, -8)

// bf16 bounds against the float64 reference for unit-normal q, k, v
// (see the package documentation): the largest errors measured over
// D in {16, 128, 256}, N in {64, 700}, causal and not, were
// 0.53·2⁻⁸·max|v| for the output and 0.0066 for the LSE; the tests assert
// about twice that and more.
var (
	bf16OutBound = 2 * bf16U // × max|v|
	bf16LSEBound = math.Ldexp(1, -6)
)

func maxAbs32(x []float32) float64 {
	m := 0.0
	for _, v := range x {
		m = math.Max(m, math.Abs(float64(v)))
	}
	return m
}

// bf16Run computes p in bfloat16 precision with the implementation in use,
// checking the guards around o and lse.
func bf16Run(t *testing.T, p problem, q, k, v []float32) (o, lse []float32) {
	t.Helper()
	oAll, o := testrand.Guarded(p.b*p.hq*p.n*p.d, 16)
	lseAll, lse := testrand.Guarded(p.b*p.hq*p.n, 16)
	prm := p.params()
	prm.Precision = kernels.PrecisionBF16
	if err := kernels.Attention(prm, q, k, v, o, lse); err != nil {
		t.Fatalf("%s %v: %v", kernels.Impl(), p, err)
	}
	if !testrand.Intact(oAll, 16) || !testrand.Intact(lseAll, 16) {
		t.Fatalf("%s %v: wrote outside the output", kernels.Impl(), p)
	}
	return o, lse
}

// checkBF16 checks p in bfloat16 precision with every implementation
// against the float64 reference on the float32 inputs, and the SIMD
// implementations against the generic one.
func checkBF16(t *testing.T, p problem, seed uint64) {
	t.Helper()
	q, k, v := p.inputs(seed)
	wantO, wantLSE := p.ref().Attention(q, k, v)
	vmax := maxAbs32(v)
	var genO, genLSE []float32
	for _, name := range kernels.Impls() {
		restore, err := kernels.Use(name)
		if err != nil {
			t.Fatal(err)
		}
		o, lse := bf16Run(t, p, q, k, v)
		restore()
		if e := attnref.MaxAbsDiff(o, wantO); !(e <= bf16OutBound*vmax) {
			t.Fatalf("%s %v: bf16 max |o - ref| = %g > %g", name, p, e, bf16OutBound*vmax)
		}
		if e := attnref.MaxAbsDiff(lse, wantLSE); !(e <= bf16LSEBound*lseScale(wantLSE)) {
			t.Fatalf("%s %v: bf16 max |lse - ref| = %g > %g", name, p, e, bf16LSEBound*lseScale(wantLSE))
		}
		if name == "generic" {
			genO, genLSE = o, lse
			continue
		}
		// Same rounded inputs; the tiles differ (the running maximum, so
		// the scale of P before its rounding, and the order of the sums).
		if e := maxDiff32(o, genO); !(e <= bf16U*vmax) {
			t.Fatalf("%s %v: bf16 max |o - generic| = %g > %g", name, p, e, bf16U*vmax)
		}
		if e := maxDiff32(lse, genLSE); !(e <= 1e-5*lseScale(wantLSE)) {
			t.Fatalf("%s %v: bf16 max |lse - generic| = %g", name, p, e)
		}
	}
}

// maxDiff32 is the largest |a[i] - b[i]|; +inf when they disagree on
// infinities or NaN.
func maxDiff32(a, b []float32) float64 {
	m := 0.0
	for i := range a {
		x, y := float64(a[i]), float64(b[i])
		if x == y {
			continue
		}
		d := math.Abs(x - y)
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = math.Max(m, d)
	}
	return m
}

// TestKernelBF16Conformance checks bfloat16 precision against the float64
// reference and across implementations: every mask, ragged lengths (tails
// of every tile and register tile), odd and padded head dimensions, GQA.
func TestKernelBF16Conformance(t *testing.T) {
	lens := []int{1, 7, 65, 200}
	dims := []int{1, 3, 64, 80, 128}
	i := 0
	for _, n := range lens {
		for _, nk := range lens {
			for _, d := range dims {
				i++
				if n != nk && i%3 != 0 {
					continue
				}
				for _, m := range masksFor(n, nk) {
					hh := [][2]int{{1, 1}, {4, 2}, {3, 1}}[i%3]
					checkBF16(t, problem{b: 1 + i%2, hq: hh[0], hkv: hh[1], n: n, nk: nk, d: d, mask: m}, uint64(i))
				}
			}
		}
	}
}

// TestKernelBF16Accuracy states the bound at sizes where many keys are
// summed (one head, so the float64 reference stays cheap).
func TestKernelBF16Accuracy(t *testing.T) {
	for _, d := range []int{16, 128, 256} {
		for _, n := range []int{700, 1500} {
			if testing.Short() && n > 700 {
				continue
			}
			for _, m := range []kernels.Mask{{}, {Causal: true}} {
				checkBF16(t, problem{b: 1, hq: 1, hkv: 1, n: n, nk: n, d: d, mask: m}, uint64(n+d))
			}
		}
	}
}

// TestKernelBF16PreRounded: inputs already in bfloat16 (as decoded from a
// bf16 wire format) give bit-identical results, since the rounding is
// idempotent (D = 64: scale 1/8 is a power of two, so scale·q rounds as q).
func TestKernelBF16PreRounded(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		p := problem{b: 1, hq: 4, hkv: 2, n: 150, nk: 170, d: 64, mask: kernels.Mask{Causal: true}}
		q, k, v := p.inputs(5)
		o1, l1 := bf16Run(t, p, q, k, v)
		rq, rk, rv := bf16Slice(q), bf16Slice(k), bf16Slice(v)
		o2, l2 := bf16Run(t, p, rq, rk, rv)
		for i := range o1 {
			if math.Float32bits(o1[i]) != math.Float32bits(o2[i]) {
				t.Fatalf("o[%d]: %g from float32 inputs, %g from bf16 inputs", i, o1[i], o2[i])
			}
		}
		for i := range l1 {
			if math.Float32bits(l1[i]) != math.Float32bits(l2[i]) {
				t.Fatalf("lse[%d]: %g from float32 inputs, %g from bf16 inputs", i, l1[i], l2[i])
			}
		}
	})
}

// bf16Slice rounds to bfloat16 as pkg/transport's BF16 encoding does.
func bf16Slice(x []float32) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		b := math.Float32bits(v)
		if b&0x7fffffff > 0x7f800000 {
			y[i] = math.Float32frombits((b | 0x00400000) &^ 0xffff)
			continue
		}
		b += 0x7fff + (b>>16)&1
		y[i] = math.Float32frombits(b &^ 0xffff)
	}
	return y
}

// TestKernelBF16Extreme: large logits, constant and tiny inputs stay finite
// and within the bound scaled by the logits; fully masked rows give 0 and
// -inf; NaN inputs give NaN outputs where they are seen.
func TestKernelBF16Extreme(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		for _, mode := range []testrand.Mode{testrand.Large, testrand.Constant, testrand.Tiny} {
			p := problem{b: 1, hq: 2, hkv: 1, n: 130, nk: 130, d: 64, mask: kernels.Mask{Causal: true}, mode: mode}
			q, k, v := p.inputs(9)
			wantO, wantLSE := p.ref().Attention(q, k, v)
			o, lse := bf16Run(t, p, q, k, v)
			// Large logits (×30) move by up to 30·2⁻⁸ through the rounding
			// of q, which can shift the winning key: bound the output by
			// the values' range and the LSE relative to its size.
			bo := bf16OutBound * maxAbs32(v)
			if mode == testrand.Large {
				bo = 2 * maxAbs32(v)
			}
			if e := attnref.MaxAbsDiff(o, wantO); !(e <= bo) {
				t.Fatalf("%v: max |o - ref| = %g > %g", p, e, bo)
			}
			if e := attnref.MaxAbsDiff(lse, wantLSE); !(e <= 4*bf16U*lseScale(wantLSE)) {
				t.Fatalf("%v: max |lse - ref| = %g", p, e)
			}
		}
		// Rows that see no key.
		p := problem{b: 1, hq: 1, hkv: 1, n: 100, nk: 40, d: 16, mask: kernels.Mask{Causal: true}}
		q, k, v := p.inputs(3)
		o, lse := bf16Run(t, p, q, k, v)
		for i := 0; i < 60; i++ {
			if !math.IsInf(float64(lse[i]), -1) || maxAbs32(o[i*16:i*16+16]) != 0 {
				t.Fatalf("row %d sees no key: lse %g, o %v", i, lse[i], o[i*16:i*16+16])
			}
		}
		// A NaN in v reaches every row that sees it (as in float32, the
		// assembly's 0·NaN may also reach masked rows of the same tile).
		v[20*16+3] = float32(math.NaN())
		o, _ = bf16Run(t, p, q, k, v)
		for i := 80; i < 100; i++ {
			if !math.IsNaN(float64(o[i*16+3])) {
				t.Fatalf("row %d sees the NaN value: o = %g", i, o[i*16+3])
			}
		}
	})
}

// TestKernelBF16FoldBlocks: bfloat16 FoldBlocks on strided views equals
// one Fold per block, bit for bit, as in float32.
func TestKernelBF16FoldBlocks(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		p := problem{b: 2, hq: 4, hkv: 2, n: 90, nk: 300, d: 40, mask: kernels.Mask{Windowed: true, Left: 100, Right: 30}}
		prm := p.params()
		prm.Precision = kernels.PrecisionBF16
		q, k, v := p.inputs(11)
		cuts := []int{0, 37, 37, 200, 300}
		one := kernels.NewState(p.b, p.hq, p.n, p.d)
		all := kernels.NewState(p.b, p.hq, p.n, p.d)
		var blocks []kernels.KV
		for i := 0; i+1 < len(cuts); i++ {
			a, e := cuts[i], cuts[i+1]
			kk := sliceRows(k, p.b*p.hkv, p.nk, p.d, a, e)
			vv := sliceRows(v, p.b*p.hkv, p.nk, p.d, a, e)
			if err := one.Fold(prm, q, 0, kk, vv, a, e-a); err != nil {
				t.Fatal(err)
			}
			blocks = append(blocks, kernels.KV{K: k[a*p.d:], V: v[a*p.d:], Start: a, N: e - a, Stride: p.nk})
		}
		if err := all.FoldBlocks(t.Context(), prm, q, 0, 0, blocks); err != nil {
			t.Fatal(err)
		}
		sameBits(t, "bf16 FoldBlocks vs Fold", all, one)
		// And bf16 is not f32: the precision is honoured.
		f32 := kernels.NewState(p.b, p.hq, p.n, p.d)
		prm.Precision = kernels.PrecisionF32
		if err := f32.FoldBlocks(t.Context(), prm, q, 0, 0, blocks); err != nil {
			t.Fatal(err)
		}
		if maxDiff32(f32.O, all.O) == 0 {
			t.Fatal("bf16 and f32 states are identical")
		}
	})
}

func TestKernelPrecisionParse(t *testing.T) {
	for s, want := range map[string]kernels.Precision{"": kernels.PrecisionF32, "f32": kernels.PrecisionF32,
		"fp32": kernels.PrecisionF32, "float32": kernels.PrecisionF32, "bf16": kernels.PrecisionBF16, "bfloat16": kernels.PrecisionBF16} {
		got, err := kernels.ParsePrecision(s)
		if err != nil || got != want {
			t.Fatalf("ParsePrecision(%q) = %v, %v; want %v", s, got, err, want)
		}
		if s == want.String() {
			continue
		}
		if back, err := kernels.ParsePrecision(want.String()); err != nil || back != want {
			t.Fatalf("ParsePrecision(%q.String()) = %v, %v", want, back, err)
		}
	}
	for _, s := range []string{"fp16", "BF16 ", "f64", "tf32"} {
		if _, err := kernels.ParsePrecision(s); !errors.Is(err, kernels.ErrInvalid) || !contains(err.Error(), "expected f32 or bf16") {
			t.Fatalf("ParsePrecision(%q): %v", s, err)
		}
	}
	// The limit and just past it.
	p := problem{b: 1, hq: 1, hkv: 1, n: 4, nk: 4, d: 8}.params()
	p.Precision = kernels.PrecisionBF16
	if err := p.Validate(); err != nil {
		t.Fatalf("bf16: %v", err)
	}
	p.Precision = kernels.PrecisionBF16 + 1
	if err := p.Validate(); !errors.Is(err, kernels.ErrInvalid) || !contains(err.Error(), "precision = 2") {
		t.Fatalf("precision 2: %v", err)
	}
	if s := (kernels.PrecisionBF16 + 1).String(); s != "Precision(2)" {
		t.Fatalf("String of an unknown precision: %q", s)
	}
}
