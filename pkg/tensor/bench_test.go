package tensor

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// benchTensor is a [1, 8, 4096, 64] input (8 MiB of float32).
func benchTensor() *Tensor {
	return New(testrand.New(1).Slice(8*4096*64, testrand.Normal), 1, 8, 4096, 64)
}

func BenchmarkTensorDecodeNPY(b *testing.B) {
	x := benchTensor()
	for _, dt := range []DType{Float32, Float16, Float64} {
		file := encodeNPYAs(x, dt, binary.LittleEndian)
		b.Run(dt.String(), func(b *testing.B) {
			b.SetBytes(int64(len(file)))
			for b.Loop() {
				if _, err := DecodeNPY(file); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkTensorEncodeNPY(b *testing.B) {
	x := benchTensor()
	var buf bytes.Buffer
	b.SetBytes(int64(4 * x.Len()))
	for b.Loop() {
		buf.Reset()
		if err := EncodeNPY(&buf, x); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTensorDecodeSafetensors(b *testing.B) {
	x := benchTensor()
	for _, dt := range []DType{Float32, BFloat16} {
		var buf bytes.Buffer
		if err := EncodeSafetensors(&buf, map[string]*Tensor{"q": x}, nil, dt); err != nil {
			b.Fatal(err)
		}
		b.Run(dt.String(), func(b *testing.B) {
			b.SetBytes(int64(buf.Len()))
			for b.Loop() {
				if _, err := DecodeSafetensors(buf.Bytes()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTensorBF16 measures the wire's bf16 conversion, per float32 byte.
func BenchmarkTensorBF16(b *testing.B) {
	x := benchTensor()
	enc := AppendValues(nil, x.Data, BFloat16, binary.LittleEndian)
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(int64(4 * x.Len()))
		for b.Loop() {
			enc = AppendValues(enc[:0], x.Data, BFloat16, binary.LittleEndian)
		}
	})
	b.Run("decode", func(b *testing.B) {
		dst := make([]float32, x.Len())
		b.SetBytes(int64(4 * x.Len()))
		for b.Loop() {
			if err := DecodeValues(dst, enc, BFloat16, binary.LittleEndian); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkTensorRows(b *testing.B) {
	x := benchTensor()
	b.SetBytes(int64(4 * x.Len() / 4))
	for b.Loop() {
		if _, err := x.Rows(1024, 2048); err != nil {
			b.Fatal(err)
		}
	}
}
