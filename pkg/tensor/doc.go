// Package tensor holds the float32 Tensor type and reads and writes the file
// formats users bring: .npy and .safetensors.
//
// A Tensor is row-major float32 data with a shape. Attention inputs are
// [B, H, N, D]; As4D maps the rank-2 [N, D] and rank-3 [H, N, D] forms onto it
// (DESIGN §2), Rows and PutRows cut and paste blocks of the sequence axis,
// and CheckFinite names the first NaN or Inf of an input.
//
// Reading: ReadNPY takes float32, float64 and float16 .npy files in either
// byte order (C order, format versions 1.0 to 3.0); ReadSafetensors takes
// F32, F64, F16 and BF16 tensors. Everything is converted to float32. Open
// picks the reader by file extension and Load also accepts
// "file.safetensors:name". The parsers treat files as hostile: every length
// is checked against the file size before anything is allocated, so a read
// allocates a bounded multiple of the file size (the float32 data is at most
// twice its input; a .safetensors header costs at most about 10 bytes per
// header byte, reached only by headers packed with empty entries). The .npy
// header is parsed as a strict subset of Python literals, never evaluated;
// the .safetensors header by a strict scanner for the JSON it may hold, and
// its offsets must tile the data section exactly. Errors name the file, the
// field and what was expected, and wrap ErrFormat (malformed or truncated)
// or ErrUnsupported (valid but not readable here, such as integer dtypes or
// Fortran order).
//
// Writing: WriteNPY writes the float32 little-endian C-order files np.save
// writes, byte for byte, through a temporary file renamed into place.
// EncodeSafetensors and WriteSafetensors write .safetensors files.
//
// Conversions: Float32ToBF16 and Float32ToFloat16 round to nearest-even and
// keep NaNs; BF16ToFloat32 and Float16ToFloat32 are exact. AppendValues and
// DecodeValues convert whole slices (the wire's optional bf16 payloads).
//
// This package imports nothing of this module.
package tensor
