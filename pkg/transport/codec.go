package transport

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"unsafe"
)

// littleEndian is true when float32 memory already is the wire layout, so
// f32 encoding is a copy.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// f32Bytes views v's memory as bytes (only used when littleEndian).
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v))
}

// bytesF32 views b, little-endian float32s, as a []float32 without copying
// when it can (a little-endian machine and b 4-byte aligned); ok is false
// otherwise and the caller decodes.
func bytesF32(b []byte) (v []float32, ok bool) {
	if len(b)%4 != 0 || !littleEndian {
		return nil, false
	}
	if len(b) == 0 {
		return []float32{}, true
	}
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4), true
}

// Encoding is how float32 values are laid out on the wire and in the store.
type Encoding uint8

const (
	// F32 is raw little-endian IEEE float32 (4 bytes per value); the zero
	// value and the default.
	F32 Encoding = 0
	// BF16 is little-endian bfloat16 (the top 16 bits of a float32, rounded
	// to nearest even; 2 bytes per value). Lossy: about 3 significant digits.
	BF16 Encoding = 1
)

// String returns "f32" or "bf16".
func (e Encoding) String() string {
	switch e {
	case F32:
		return "f32"
	case BF16:
		return "bf16"
	}
	return fmt.Sprintf("Encoding(%d)", uint8(e))
}

// ParseEncoding parses "f32" (or "") and "bf16".
func ParseEncoding(s string) (Encoding, error) {
	switch s {
	case "", "f32", "float32":
		return F32, nil
	case "bf16", "bfloat16":
		return BF16, nil
	}
	return 0, fmt.Errorf("%w: encoding %q: want f32 or bf16", ErrInvalidConfig, s)
}

// ElemBytes is the size of one encoded value.
func (e Encoding) ElemBytes() int {
	if e == BF16 {
		return 2
	}
	return 4
}

func (e Encoding) valid() bool { return e == F32 || e == BF16 }

// castagnoli is the CRC32C table (hardware-accelerated on amd64/arm64).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the Castagnoli CRC of b.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// encodeTo writes src into dst (len(dst) == len(src)*enc.ElemBytes()).
func encodeTo(dst []byte, src []float32, enc Encoding) {
	if enc == BF16 {
		for i, v := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], f32ToBF16(v))
		}
		return
	}
	if littleEndian {
		copy(dst, f32Bytes(src))
		return
	}
	for i, v := range src {
		binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
	}
}

// encode returns src encoded.
func encode(src []float32, enc Encoding) []byte {
	b := make([]byte, len(src)*enc.ElemBytes())
	encodeTo(b, src, enc)
	return b
}

// decodeTo reads len(dst) values from src.
func decodeTo(dst []float32, src []byte, enc Encoding) {
	if enc == BF16 {
		for i := range dst {
			dst[i] = bf16ToF32(binary.LittleEndian.Uint16(src[2*i:]))
		}
		return
	}
	if littleEndian {
		copy(f32Bytes(dst), src)
		return
	}
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

// f32ToBF16 rounds to the nearest bfloat16, ties to even; NaNs stay NaN
// (quiet), infinities stay infinite.
func f32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x0040
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
