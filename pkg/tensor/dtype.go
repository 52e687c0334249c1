package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

// DType is a floating-point element type of a file or wire payload. Tensors
// in memory are always float32; the other types are converted on read and
// (for the wire) on write.
type DType uint8

// The element types this package reads and writes.
const (
	Float16  DType = iota + 1 // IEEE 754 binary16
	BFloat16                  // bfloat16: the top 16 bits of a float32
	Float32                   // IEEE 754 binary32
	Float64                   // IEEE 754 binary64
)

// Size is the number of bytes of one element (0 for an invalid DType).
func (d DType) Size() int {
	switch d {
	case Float16, BFloat16:
		return 2
	case Float32:
		return 4
	case Float64:
		return 8
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case Float16:
		return "float16"
	case BFloat16:
		return "bfloat16"
	case Float32:
		return "float32"
	case Float64:
		return "float64"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Float32ToBF16 rounds f to the nearest bfloat16, ties to even. Values beyond
// the largest bfloat16 round to ±Inf; a NaN stays a (quiet) NaN with its sign.
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: truncating could give Inf
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BF16ToFloat32 converts a bfloat16 to float32 (exact).
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float16ToFloat32 converts an IEEE binary16 value to float32. The
// conversion is exact, subnormals included; NaN payloads are kept.
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch exp {
	case 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case 0: // zero or subnormal: man·2^-24, exact in float32
		v := float32(man) * (1.0 / (1 << 24))
		return math.Float32frombits(sign | math.Float32bits(v))
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
}

// Float32ToFloat16 rounds f to the nearest IEEE binary16, ties to even,
// including subnormal results. Values beyond the largest float16 (65504)
// round to ±Inf; a NaN stays a (quiet) NaN with its sign.
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00 | uint16(man>>13)
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 { // subnormal or zero result
		if e < -10 {
			return sign
		}
		full := man | 0x800000
		shift := uint(14 - e)
		r := full >> shift
		rem := full & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && r&1 == 1 {
			r++
		}
		return sign | uint16(r)
	}
	r := uint16(e)<<10 | uint16(man>>13)
	rem := man & 0x1fff
	if rem > 0x1000 || rem == 0x1000 && r&1 == 1 {
		r++ // a carry into the exponent is the right result, up to Inf
	}
	return sign | r
}

// AppendValues appends src encoded as dt in the given byte order to dst
// (float32 values are rounded to nearest-even for Float16 and BFloat16).
func AppendValues(dst []byte, src []float32, dt DType, order binary.AppendByteOrder) []byte {
	n := len(dst)
	dst = slices.Grow(dst, len(src)*dt.Size())[:n+len(src)*dt.Size()]
	out := dst[n:]
	if order != binary.LittleEndian {
		out = out[:0]
	}
	switch dt {
	case Float16:
		if order == binary.LittleEndian {
			for i, x := range src {
				binary.LittleEndian.PutUint16(out[2*i:], Float32ToFloat16(x))
			}
			break
		}
		for _, x := range src {
			out = order.AppendUint16(out, Float32ToFloat16(x))
		}
	case BFloat16:
		if order == binary.LittleEndian {
			for i, x := range src {
				binary.LittleEndian.PutUint16(out[2*i:], Float32ToBF16(x))
			}
			break
		}
		for _, x := range src {
			out = order.AppendUint16(out, Float32ToBF16(x))
		}
	case Float32:
		if order == binary.LittleEndian {
			for i, x := range src {
				binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
			}
			break
		}
		for _, x := range src {
			out = order.AppendUint32(out, math.Float32bits(x))
		}
	case Float64:
		if order == binary.LittleEndian {
			for i, x := range src {
				binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(float64(x)))
			}
			break
		}
		for _, x := range src {
			out = order.AppendUint64(out, math.Float64bits(float64(x)))
		}
	}
	return dst
}

// DecodeValues converts len(dst) elements of type dt in the given byte
// order from src into dst; float64 values are rounded to nearest float32.
// src must hold exactly len(dst)·dt.Size() bytes.
func DecodeValues(dst []float32, src []byte, dt DType, order binary.ByteOrder) error {
	if dt.Size() == 0 {
		return fmt.Errorf("%w: dtype %v", ErrUnsupported, dt)
	}
	if len(src) != len(dst)*dt.Size() {
		return fmt.Errorf("%w: %d bytes for %d %v values, want %d", ErrShape, len(src), len(dst), dt, len(dst)*dt.Size())
	}
	le := order == binary.LittleEndian
	switch dt {
	case Float16:
		if le {
			for i := range dst {
				dst[i] = Float16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
			}
			break
		}
		for i := range dst {
			dst[i] = Float16ToFloat32(order.Uint16(src[2*i:]))
		}
	case BFloat16:
		if le {
			for i := range dst {
				dst[i] = BF16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
			}
			break
		}
		for i := range dst {
			dst[i] = BF16ToFloat32(order.Uint16(src[2*i:]))
		}
	case Float32:
		if le {
			for i := range dst {
				dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
			}
			break
		}
		for i := range dst {
			dst[i] = math.Float32frombits(order.Uint32(src[4*i:]))
		}
	case Float64:
		if le {
			for i := range dst {
				dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(src[8*i:])))
			}
			break
		}
		for i := range dst {
			dst[i] = float32(math.Float64frombits(order.Uint64(src[8*i:])))
		}
	}
	return nil
}
