//go:build !noasm && gc

package kernels

import (
	"fmt"
	"math"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

func needAMX(tb testing.TB) {
	tb.Helper()
	if amxImpl == nil {
		tb.Skip("no AMX on this CPU/OS")
	}
}

// bf16Slice16 rounds x to bfloat16 encodings.
func bf16Slice16(x []float32) []uint16 {
	y := make([]uint16, len(x))
	for i, v := range x {
		y[i] = bf16Bits(v)
	}
	return y
}

func fromBF16(b uint16) float64 { return float64(math.Float32frombits(uint32(b) << 16)) }

// TestAMXGemm checks amxGemm against a float64 computation on the same
// bfloat16 inputs: the products are exact, so only the float32 sums
// differ (k·2⁻²⁴ relative to Σ|a·b|), and nothing outside C is written.
func TestAMXGemm(t *testing.T) {
	needAMX(t)
	r := testrand.New(1)
	for _, sh := range [][3]int{{1, 1, 1}, {2, 3, 1}, {1, 2, 4}, {4, 2, 8}, {3, 1, 2}} {
		for _, acc := range []bool{false, true} {
			mt, nt, kt := sh[0], sh[1], sh[2]
			m, n, k := 32*mt, 32*nt, 32*kt
			lda, ldb, ldc := k+16, n+16, n+48 // elements; padding is poison
			a := bf16Slice16(r.Slice(m*lda, testrand.Normal))
			b32 := make([]uint32, k/2*ldb)
			for i := range b32 {
				b32[i] = uint32(bf16Bits(float32(r.Float64()-0.5))) | uint32(bf16Bits(float32(r.Float64()-0.5)))<<16
			}
			c := r.Slice(m*ldc, testrand.Normal)
			c0 := append([]float32(nil), c...)
			amxGemm(&a[0], 2*lda, &b32[0], 4*ldb, &c[0], 4*ldc, mt, nt, kt, acc, nil, 0)
			for i := 0; i < m; i++ {
				for j := 0; j < ldc; j++ {
					if j >= n {
						if math.Float32bits(c[i*ldc+j]) != math.Float32bits(c0[i*ldc+j]) {
							t.Fatalf("%v acc=%v: c[%d][%d] outside C written", sh, acc, i, j)
						}
						continue
					}
					want, mag := 0.0, 0.0
					if acc {
						want, mag = float64(c0[i*ldc+j]), math.Abs(float64(c0[i*ldc+j]))
					}
					for p := 0; p < k; p++ {
						w := b32[p/2*ldb+j] >> (16 * uint(p%2))
						x := fromBF16(a[i*lda+p]) * fromBF16(uint16(w))
						want += x
						mag += math.Abs(x)
					}
					if e := math.Abs(float64(c[i*ldc+j]) - want); e > float64(k+1)*0x1p-24*mag {
						t.Fatalf("%v acc=%v: c[%d][%d] = %g, want %g", sh, acc, i, j, c[i*ldc+j], want)
					}
				}
			}
		}
	}
}

// TestAMXPackPairs: pairs of rows rounded (as bf16Bits, for normal
// values) and interleaved; nothing past n columns written.
func TestAMXPackPairs(t *testing.T) {
	needAMX(t)
	r := testrand.New(2)
	for _, sh := range [][2]int{{1, 16}, {3, 32}, {16, 64}, {5, 128}} {
		pairs, n := sh[0], sh[1]
		lds, ldd := n+5, n+16
		s := r.Slice(2*pairs*lds, testrand.Normal)
		s[0] = float32(math.Inf(-1))
		dst := make([]uint32, pairs*ldd)
		for i := range dst {
			dst[i] = 0xdeadbeef
		}
		packPairsBF16(&s[0], 4*lds, &dst[0], 4*ldd, pairs, n)
		for p := 0; p < pairs; p++ {
			for j := 0; j < ldd; j++ {
				want := uint32(0xdeadbeef)
				if j < n {
					want = uint32(bf16Bits(s[2*p*lds+j])) | uint32(bf16Bits(s[(2*p+1)*lds+j]))<<16
				}
				if got := dst[p*ldd+j]; got != want {
					t.Fatalf("%v: dst[%d][%d] = %#x, want %#x", sh, p, j, got, want)
				}
			}
		}
	}
}

// TestAMXScaleCols: o[i][j] *= alpha[j], exactly (groups of ones
// skipped), nothing else written.
func TestAMXScaleCols(t *testing.T) {
	needAMX(t)
	r := testrand.New(3)
	rows, n, ld := 5, 48, 70
	o := r.Slice(rows*ld, testrand.Normal)
	o0 := append([]float32(nil), o...)
	alpha := r.Slice(n, testrand.Normal)
	for j := 16; j < 32; j++ {
		alpha[j] = 1 // a group skipped
	}
	alpha[40] = 1
	scaleColsAvx512(&o[0], 4*ld, rows, n, &alpha[0])
	for i := 0; i < rows; i++ {
		for j := 0; j < ld; j++ {
			want := o0[i*ld+j]
			if j < n {
				want *= alpha[j]
			}
			if o[i*ld+j] != want {
				t.Fatalf("o[%d][%d] = %g, want %g", i, j, o[i*ld+j], want)
			}
		}
	}
}

// BenchmarkAMXGemm times amxGemm on the forward's shapes (L1-resident
// operands): GFLOP/s of one core.
func BenchmarkAMXGemm(b *testing.B) {
	needAMX(b)
	for _, sh := range [][3]int{{4, 2, 4}, {1, 1, 1}, {2, 2, 4}, {4, 2, 2}, {4, 1, 4}, {4, 4, 4}, {8, 2, 4}} {
		mt, nt, kt := sh[0], sh[1], sh[2]
		m, n, k := 32*mt, 32*nt, 32*kt
		a := make([]uint16, m*k)
		bb := make([]uint32, k/2*n)
		c := make([]float32, m*n)
		b.Run(testName(sh), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				amxGemm(&a[0], 2*k, &bb[0], 4*n, &c[0], 4*n, mt, nt, kt, true, nil, 0)
			}
			b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

func testName(sh [3]int) string {
	return fmt.Sprintf("m%dn%dk%d", 32*sh[0], 32*sh[1], 32*sh[2])
}

// TestAMXPackGroups: packing the key/value heads a group at a time
// (amxPackBytes small: one head per group) gives the same bits as all at
// once, with GQA, two blocks and a mask.
func TestAMXPackGroups(t *testing.T) {
	needAMX(t)
	defer func(prev *impl) { active = prev }(active)
	active = amxImpl
	p := &Params{Shape: Shape{B: 2, Hq: 6, Hkv: 3, D: 40}, N: 150, Nk: 300,
		Mask: Mask{Causal: true}, Precision: PrecisionBF16}
	r := testrand.New(4)
	q := r.Slice(2*6*150*40, testrand.Normal)
	k := r.Slice(2*3*300*40, testrand.Normal)
	v := r.Slice(2*3*300*40, testrand.Normal)
	blocks := []KV{{K: k, V: v, Start: 0, N: 170, Stride: 300}, {K: k[170*40:], V: v[170*40:], Start: 170, N: 130, Stride: 300}}
	run := func() *State {
		s := NewState(2, 6, 150, 40)
		if err := s.FoldBlocks(t.Context(), p, q, 0, 0, blocks); err != nil {
			t.Fatal(err)
		}
		return s
	}
	one := run()
	defer func(prev int) { amxPackBytes = prev }(amxPackBytes)
	amxPackBytes = 1
	groups := run()
	for i := range one.O {
		if math.Float32bits(one.O[i]) != math.Float32bits(groups.O[i]) {
			t.Fatalf("O[%d]: %g packed at once, %g a head at a time", i, one.O[i], groups.O[i])
		}
	}
	for i := range one.L {
		if one.L[i] != groups.L[i] || one.M[i] != groups.M[i] {
			t.Fatalf("row %d: M, L = %g, %g at once; %g, %g a head at a time", i, one.M[i], one.L[i], groups.M[i], groups.L[i])
		}
	}
}
