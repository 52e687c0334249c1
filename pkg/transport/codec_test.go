package transport_test

import (
	"errors"
	"math"
	"testing"

	"github.com/ringattn/ringattn/pkg/transport"
)

func TestTransportBF16RoundToNearestEven(t *testing.T) {
	for _, c := range []struct {
		in   uint32 // float32 bits
		want uint16
	}{
		{0x3f800000, 0x3f80}, // 1
		{0x3f808000, 0x3f80}, // 1 + 2^-8: a tie, rounds to even (down)
		{0x3f818000, 0x3f82}, // 1 + 3·2^-8: a tie, rounds to even (up)
		{0x3f808001, 0x3f81}, // just above the tie: up
		{0x3f807fff, 0x3f80}, // just below the tie: down
		{0x80000000, 0x8000}, // -0
		{0x7f800000, 0x7f80}, // +Inf
		{0xff800000, 0xff80}, // -Inf
		{0x7f7fffff, 0x7f80}, // max float32 rounds to +Inf
		{0x00000001, 0x0000}, // smallest subnormal rounds to 0
	} {
		if got := transport.F32ToBF16(math.Float32frombits(c.in)); got != c.want {
			t.Errorf("bf16(%#08x) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	nan := transport.F32ToBF16(math.Float32frombits(0x7f800001)) // signalling NaN with low payload
	if f := transport.BF16ToF32(nan); f == f {
		t.Fatalf("bf16 of a NaN is %v (%#04x), want NaN", f, nan)
	}
	// Every bf16 value converts to float32 and back unchanged.
	for h := range 1 << 16 {
		f := transport.BF16ToF32(uint16(h))
		if f != f {
			continue
		}
		if back := transport.F32ToBF16(f); back != uint16(h) {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
	// Relative error of a round trip is at most half an ulp: 2^-8.
	for _, v := range randVals(3, 10000) {
		if got := transport.BF16ToF32(transport.F32ToBF16(v)); math.Abs(float64(got-v)) > math.Abs(float64(v))/256 {
			t.Fatalf("bf16 round trip of %v = %v: error above 2^-8 relative", v, got)
		}
	}
}

func TestTransportEncodingNames(t *testing.T) {
	for _, c := range []struct {
		s    string
		want transport.Encoding
	}{{"", transport.F32}, {"f32", transport.F32}, {"bf16", transport.BF16}, {"bfloat16", transport.BF16}} {
		got, err := transport.ParseEncoding(c.s)
		if err != nil || got != c.want {
			t.Fatalf("ParseEncoding(%q) = %v, %v; want %v", c.s, got, err, c.want)
		}
	}
	if _, err := transport.ParseEncoding("f16"); !errors.Is(err, transport.ErrInvalidConfig) {
		t.Fatalf("ParseEncoding(f16): %v, want ErrInvalidConfig", err)
	}
	if transport.BF16.String() != "bf16" || transport.F32.ElemBytes() != 4 || transport.BF16.ElemBytes() != 2 {
		t.Fatal("encoding names or sizes wrong")
	}
}
