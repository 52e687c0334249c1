package tensor

import (
	"encoding/binary"
	"math"
	"sort"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// f16Ref is the value of a binary16 bit pattern computed from its definition.
func f16Ref(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>10)&0x1f, float64(h&0x3ff)
	switch e {
	case 0x1f:
		if m != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	case 0:
		return sign * math.Ldexp(m, -24)
	}
	return sign * math.Ldexp(1024+m, e-25)
}

// TestTensorFloat16Exhaustive checks every binary16 value: the conversion to
// float32 is exact, and converting back gives the same bits.
func TestTensorFloat16Exhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		f := Float16ToFloat32(h)
		ref := f16Ref(h)
		if math.IsNaN(ref) {
			if !math.IsNaN(float64(f)) {
				t.Fatalf("%#04x: got %v, want NaN", h, f)
			}
			if back := Float32ToFloat16(f); back != h|0x0200 {
				t.Fatalf("%#04x NaN: back to %#04x, want the quieted %#04x", h, back, h|0x0200)
			}
			continue
		}
		if float64(f) != ref || math.Signbit(float64(f)) != (h&0x8000 != 0) {
			t.Fatalf("%#04x: got %v, want %v", h, f, ref)
		}
		if back := Float32ToFloat16(f); back != h {
			t.Fatalf("%#04x: round trip gives %#04x", h, back)
		}
	}
}

// nearestEven picks, among sorted candidate values, the one nearest to x with
// ties to the even bit pattern. vals[i] is the value of pattern pats[i].
func nearestEven(x float64, vals []float64, pats []uint16) uint16 {
	i := sort.SearchFloat64s(vals, x) // vals[i-1] < x <= vals[i]
	if i == len(vals) {
		return pats[i-1]
	}
	if i < len(vals) && vals[i] == x {
		return pats[i]
	}
	lo, hi := i-1, i
	dl, dh := x-vals[lo], vals[hi]-x
	switch {
	case dl < dh:
		return pats[lo]
	case dh < dl:
		return pats[hi]
	case pats[lo]&1 == 0:
		return pats[lo]
	}
	return pats[hi]
}

// positive finite values of a 16-bit format in order, plus the value the
// next pattern would have if the exponent went on (where rounding to +Inf
// starts); pattern maxPat+1 is +Inf.
func ladder(maxPat uint16, val func(uint16) float64, next float64) ([]float64, []uint16) {
	var vals []float64
	var pats []uint16
	for p := uint16(0); p <= maxPat; p++ {
		vals = append(vals, val(p))
		pats = append(pats, p)
	}
	return append(vals, next), append(pats, maxPat+1)
}

// TestTensorRoundNearestEven checks Float32ToFloat16 and Float32ToBF16
// against a search over every representable value, on random float32 bit
// patterns, near-tie values and the edges (overflow, subnormals, NaN).
func TestTensorRoundNearestEven(t *testing.T) {
	f16Vals, f16Pats := ladder(0x7bff, f16Ref, 65536)
	bfVals, bfPats := ladder(0x7f7f, func(p uint16) float64 { return float64(BF16ToFloat32(p)) }, math.Ldexp(1, 128))
	r := testrand.New(7)
	var inputs []float32
	for range 200000 {
		inputs = append(inputs, math.Float32frombits(uint32(r.Intn(1<<32))))
	}
	for p := 0; p < 0x7c00; p += 37 { // exact ties and their neighbours for float16
		v := float32(f16Ref(uint16(p)))
		mid := float32((f16Ref(uint16(p)) + f16Ref(uint16(p+1))) / 2)
		inputs = append(inputs, v, mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, 1e9))
	}
	for p := uint32(0); p < 0x7f80; p += 13 { // and for bfloat16
		inputs = append(inputs, math.Float32frombits(p<<16|0x8000), math.Float32frombits(p<<16|0x7fff), math.Float32frombits(p<<16|0x8001))
	}
	inputs = append(inputs, 0, 65504, 65519.99, 65520, 1e-8, 2.98e-8, 2.9802322e-8, 2.9802326e-8, math.MaxFloat32,
		float32(math.Inf(1)), math.SmallestNonzeroFloat32)
	for _, x := range inputs {
		for _, s := range []float32{1, -1} {
			x := x * s
			if math.IsNaN(float64(x)) {
				if h := Float32ToFloat16(x); h&0x7c00 != 0x7c00 || h&0x3ff == 0 || (h&0x8000 != 0) != math.Signbit(float64(x)) {
					t.Fatalf("Float32ToFloat16(NaN %#08x) = %#04x, want a NaN of the same sign", math.Float32bits(x), h)
				}
				if h := Float32ToBF16(x); h&0x7f80 != 0x7f80 || h&0x7f == 0 || (h&0x8000 != 0) != math.Signbit(float64(x)) {
					t.Fatalf("Float32ToBF16(NaN %#08x) = %#04x, want a NaN of the same sign", math.Float32bits(x), h)
				}
				continue
			}
			a := math.Abs(float64(x))
			sign := uint16(0)
			if math.Signbit(float64(x)) {
				sign = 0x8000
			}
			want16 := sign | 0x7c00
			if !math.IsInf(a, 0) {
				want16 = sign | nearestEven(a, f16Vals, f16Pats)
			}
			if got := Float32ToFloat16(x); got != want16 {
				t.Fatalf("Float32ToFloat16(%v) = %#04x, want %#04x", x, got, want16)
			}
			wantBF := sign | 0x7f80
			if !math.IsInf(a, 0) {
				wantBF = sign | nearestEven(a, bfVals, bfPats)
			}
			if got := Float32ToBF16(x); got != wantBF {
				t.Fatalf("Float32ToBF16(%v) = %#04x, want %#04x", x, got, wantBF)
			}
		}
	}
}

func TestTensorEncodeDecodeValues(t *testing.T) {
	src := testrand.New(3).Slice(1000, testrand.Normal)
	src = append(src, 0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()))
	for _, dt := range []DType{Float16, BFloat16, Float32, Float64} {
		for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			enc := AppendValues(nil, src, dt, order.(binary.AppendByteOrder))
			if len(enc) != len(src)*dt.Size() {
				t.Fatalf("%v %v: %d bytes, want %d", dt, order, len(enc), len(src)*dt.Size())
			}
			got := make([]float32, len(src))
			if err := DecodeValues(got, enc, dt, order); err != nil {
				t.Fatal(err)
			}
			for i, x := range src {
				want := x
				switch dt {
				case Float16:
					want = Float16ToFloat32(Float32ToFloat16(x))
				case BFloat16:
					want = BF16ToFloat32(Float32ToBF16(x))
				}
				if math.Float32bits(got[i]) != math.Float32bits(want) && !(math.IsNaN(float64(got[i])) && math.IsNaN(float64(want))) {
					t.Fatalf("%v %v [%d]: got %v, want %v", dt, order, i, got[i], want)
				}
			}
			if err := DecodeValues(got, enc[1:], dt, order); err == nil {
				t.Fatalf("%v: short input accepted", dt)
			} else {
				wantErr(t, err, ErrShape, "bytes for 1005", dt.String())
			}
		}
	}
	wantErr(t, DecodeValues(nil, nil, DType(0), binary.LittleEndian), ErrUnsupported, "DType(0)")
}
