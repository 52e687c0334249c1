package kernels

import (
	"math"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
)

// bf16Ref rounds x to the nearest bfloat16 by comparing the two candidates
// in float64 (ties to the even one), independently of the bit trick.
func bf16Ref(x float32) float32 {
	if x != x {
		return float32(math.NaN())
	}
	b := math.Float32bits(x)
	lo := b &^ 0xffff
	if lo == b {
		return x
	}
	hi := lo + 0x10000
	dl := math.Abs(float64(x) - float64(math.Float32frombits(lo)))
	dh := math.Abs(float64(math.Float32frombits(hi)) - float64(x))
	if lo&0x7fffffff == 0x7f7f0000 { // hi is infinity: the midpoint to it is 0x7f7f8000
		dh = math.Abs(0x1p128 - math.Abs(float64(x)))
	}
	switch {
	case dl < dh, dl == dh && (lo>>16)&1 == 0:
		return math.Float32frombits(lo)
	}
	return math.Float32frombits(hi)
}

// bf16Specials are values around every case of the rounding.
func bf16Specials() []float32 {
	var xs []float32
	for _, b := range []uint32{
		0, 0x8000, 0x7fff, 0x8001, 0x18000, 0x28000, // ties to even around 0 and the denormals
		0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, // ties at 1
		0x7f7f7fff, 0x7f7f8000, 0x7f7fffff, // the largest finite values: round down, tie up to inf, inf
		0x7f800000, 0x7f800001, 0x7fc00000, 0x7fffffff, 0x7f80ffff, // inf, NaNs (signalling, quiet)
		0x00000001, 0x007fffff, 0x00800000, // denormals and the smallest normal
	} {
		xs = append(xs, math.Float32frombits(b), math.Float32frombits(b|0x80000000))
	}
	return xs
}

func TestKernelPrimBF16Specials(t *testing.T) {
	xs := bf16Specials()
	for _, x := range xs {
		got, want := bf16(x), bf16Ref(x)
		if math.Float32bits(got) != math.Float32bits(want) && !(got != got && want != want) {
			t.Fatalf("bf16(%#08x) = %#08x, want %#08x", math.Float32bits(x), math.Float32bits(got), math.Float32bits(want))
		}
		if got != got && math.Float32bits(got)&0x00400000 == 0 {
			t.Fatalf("bf16(%#08x) = %#08x, not a quiet NaN", math.Float32bits(x), math.Float32bits(got))
		}
		if got != got && math.Float32bits(got)>>31 != math.Float32bits(x)>>31 {
			t.Fatalf("bf16(%#08x) = %#08x: sign lost", math.Float32bits(x), math.Float32bits(got))
		}
	}
	r := testrand.New(4)
	for i := 0; i < 1<<16; i++ {
		x := math.Float32frombits(uint32(r.Intn(1 << 31)))
		if i%2 == 1 {
			x = -x
		}
		if got, want := bf16(x), bf16Ref(x); math.Float32bits(got) != math.Float32bits(want) && !(got != got && want != want) {
			t.Fatalf("bf16(%#08x) = %#08x, want %#08x", math.Float32bits(x), math.Float32bits(got), math.Float32bits(want))
		}
	}
}

// TestKernelPrimRoundBF16Lengths checks the assembly rounding against the
// generic one bit for bit on every length 0..300, out of place and in
// place, with guards, on normal values mixed with the special ones.
func TestKernelPrimRoundBF16Lengths(t *testing.T) {
	forEachSIMD(t, func(t *testing.T, im *impl) {
		r := testrand.New(3)
		sp := bf16Specials()
		for n := 0; n <= 300; n++ {
			src := r.Slice(n, testrand.Normal)
			for i := range src {
				if r.Intn(4) == 0 {
					src[i] = sp[r.Intn(len(sp))]
				}
			}
			want := make([]float32, n)
			roundBF16Generic(want, src)
			all, dst := testrand.Guarded(n, guard)
			im.roundBF16(dst, src)
			if !testrand.Intact(all, guard) {
				t.Fatalf("n=%d: wrote outside dst", n)
			}
			same(t, n, "out of place", dst, want)
			all, x := testrand.Guarded(n, guard)
			copy(x, src)
			im.roundBF16(x, x)
			if !testrand.Intact(all, guard) {
				t.Fatalf("n=%d in place: wrote outside the slice", n)
			}
			same(t, n, "in place", x, want)
		}
	})
}

func same(t *testing.T, n int, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("n=%d %s: [%d] = %#08x, want %#08x", n, what, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
		}
	}
}

// FuzzKernelRoundBF16 compares every implementation's rounding with the
// float64 reference on arbitrary bit patterns.
func FuzzKernelRoundBF16(f *testing.F) {
	f.Add([]byte{0, 0x80, 0x80, 0x3f, 0xff, 0xff, 0x7f, 0x7f, 1, 0, 0x80, 0x7f})
	f.Add(make([]byte, 4*37))
	f.Fuzz(func(t *testing.T, data []byte) {
		src := make([]float32, len(data)/4)
		for i := range src {
			src[i] = math.Float32frombits(uint32(data[4*i]) | uint32(data[4*i+1])<<8 | uint32(data[4*i+2])<<16 | uint32(data[4*i+3])<<24)
		}
		for _, name := range order {
			dst := make([]float32, len(src))
			impls[name].roundBF16(dst, src)
			for i, x := range src {
				got, want := dst[i], bf16Ref(x)
				if math.Float32bits(got) != math.Float32bits(want) && !(got != got && want != want) {
					t.Fatalf("%s: bf16(%#08x) = %#08x, want %#08x", name, math.Float32bits(x), math.Float32bits(got), math.Float32bits(want))
				}
			}
		}
	})
}

// TestKernelPeakBF16 runs the VDPBF16PS peak loop (raw-encoded: a wrong
// encoding faults or hangs here) where the CPU has AVX512_BF16.
func TestKernelPeakBF16(t *testing.T) {
	g, ok := PeakBF16GFLOPS(20 * time.Millisecond)
	if ok != (archBF16Peak != nil) {
		t.Fatalf("PeakBF16GFLOPS ok = %v without the loop registered", ok)
	}
	if !ok {
		t.Skip("no AVX512_BF16 on this CPU or build")
	}
	if !(g > 0) || math.IsInf(g, 0) {
		t.Fatalf("PeakBF16GFLOPS = %g", g)
	}
	t.Logf("VDPBF16PS %.0f GFLOP/s, FMA %.0f GFLOP/s", g, PeakGFLOPS(20*time.Millisecond))
}
