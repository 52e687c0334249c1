package tensor

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// fixtureValues recomputes the values gen_fixtures.py writes.
func fixtureValues(n int, third bool) []float32 {
	out := make([]float32, n)
	for i := range out {
		v := (float64(i) - 5) * 0.375
		if third {
			v /= 3
		}
		out[i] = float32(v)
	}
	return out
}

func TestTensorNPYNumpyFixtures(t *testing.T) {
	for _, tc := range []struct {
		file  string
		shape []int
		third bool // float64 fixture: values /3, rounded to float32
	}{
		{"f32_1d.npy", []int{7}, false},
		{"f32_2d.npy", []int{3, 4}, false},
		{"f32_3d.npy", []int{2, 3, 4}, false},
		{"f32_4d.npy", []int{2, 2, 3, 4}, false},
		{"f32_empty.npy", []int{0, 4}, false},
		{"f32be_2d.npy", []int{3, 4}, false},
		{"f16_3d.npy", []int{2, 3, 4}, false},
		{"f16be_2d.npy", []int{2, 3}, false},
		{"f32_v2.npy", []int{2, 3}, false},
		{"f32_v3.npy", []int{2, 3}, false},
		{"f64_2d.npy", []int{3, 5}, true},
		{"f64be_1d.npy", []int{5}, true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			x, err := ReadNPY(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			n := 1
			for _, d := range tc.shape {
				n *= d
			}
			if !reflect.DeepEqual(x.Shape, tc.shape) || !reflect.DeepEqual(x.Data, fixtureValues(n, tc.third)) {
				t.Fatalf("got %v %v, want %v %v", x.Shape, x.Data, tc.shape, fixtureValues(n, tc.third))
			}
			if err := x.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
	s, err := ReadNPY("testdata/f32_scalar.npy")
	if err != nil || len(s.Shape) != 0 || !reflect.DeepEqual(s.Data, []float32{-1.875}) {
		t.Errorf("scalar: %v %v, %v", s.Shape, s.Data, err)
	}
	sp, err := ReadNPY("testdata/f16_special.npy")
	if err != nil {
		t.Fatal(err)
	}
	want := []float64{0, math.Copysign(0, -1), math.Ldexp(1, -24), -math.Ldexp(1, -24), math.Ldexp(1, -14), 65504,
		math.Inf(1), math.Inf(-1), math.NaN(), 0.333251953125}
	for i, w := range want {
		g := float64(sp.Data[i])
		if !(g == w && math.Signbit(g) == math.Signbit(w)) && !(math.IsNaN(g) && math.IsNaN(w)) {
			t.Errorf("f16_special[%d] = %v, want %v", i, g, w)
		}
	}
}

// TestTensorNPYWriterMatchesNumpy: EncodeNPY writes the bytes np.save wrote.
func TestTensorNPYWriterMatchesNumpy(t *testing.T) {
	for _, f := range []string{"f32_scalar.npy", "f32_1d.npy", "f32_2d.npy", "f32_3d.npy", "f32_4d.npy", "f32_empty.npy"} {
		want, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		x, err := DecodeNPY(want)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := EncodeNPY(&got, x); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: EncodeNPY wrote\n%q\nnumpy wrote\n%q", f, got.Bytes(), want)
		}
	}
	// numpy's own writer for the 2.0 and big-endian headers follows the same rules.
	want, _ := os.ReadFile("testdata/f32be_2d.npy")
	x, _ := DecodeNPY(want)
	got := appendNPYHeader(nil, x.Shape, ">f4", false)
	got = AppendValues(got, x.Data, Float32, binary.BigEndian)
	if !bytes.Equal(got, want) {
		t.Errorf("big-endian header: got\n%q\nwant\n%q", got, want)
	}
	want, _ = os.ReadFile("testdata/f32_fortran.npy")
	if got := appendNPYHeader(nil, []int{3, 4}, "<f4", true); !bytes.Equal(got, want[:len(got)]) {
		t.Errorf("fortran header: got %q, want %q", got, want[:len(got)])
	}
}

// encodeNPYAs writes t in any of the readable dtypes and byte orders, with
// the header numpy writes (for round trips and fuzz seeds).
func encodeNPYAs(t *Tensor, dt DType, order binary.ByteOrder) []byte {
	e := map[binary.ByteOrder]string{binary.LittleEndian: "<", binary.BigEndian: ">"}[order]
	descr := e + map[DType]string{Float16: "f2", Float32: "f4", Float64: "f8"}[dt]
	b := appendNPYHeader(nil, t.Shape, descr, false)
	return AppendValues(b, t.Data, dt, order.(binary.AppendByteOrder))
}

func TestTensorNPYRoundTrip(t *testing.T) {
	r := testrand.New(11)
	dir := t.TempDir()
	for _, shape := range [][]int{{}, {1}, {5}, {0}, {3, 0, 2}, {4, 7}, {2, 3, 5}, {2, 2, 9, 4}, {1, 1, 1, 1, 1, 3}} {
		n := 1
		for _, d := range shape {
			n *= d
		}
		x := New(r.Slice(n, testrand.Normal), shape...)
		if n > 2 {
			x.Data[0] = float32(math.NaN())
			x.Data[1] = float32(math.Inf(-1))
			x.Data[2] = math.Float32frombits(1) // smallest subnormal
		}
		path := filepath.Join(dir, "x.npy")
		if err := WriteNPY(path, x); err != nil {
			t.Fatal(err)
		}
		y, err := ReadNPY(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(y.Shape, x.Shape) || !sameBits(y.Data, x.Data) {
			t.Fatalf("%v: float32 round trip changed the tensor", shape)
		}
		for _, dt := range []DType{Float16, Float64} {
			for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
				y, err := DecodeNPY(encodeNPYAs(x, dt, order))
				if err != nil {
					t.Fatalf("%v %v %v: %v", shape, dt, order, err)
				}
				want := make([]float32, n)
				DecodeValues(want, AppendValues(nil, x.Data, dt, binary.LittleEndian), dt, binary.LittleEndian)
				if !reflect.DeepEqual(y.Shape, x.Shape) || !sameBits(y.Data, want) {
					t.Fatalf("%v %v %v: round trip changed the tensor", shape, dt, order)
				}
			}
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("WriteNPY left %d files in its directory, want 1", len(ents))
	}
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// rawNPY builds a .npy file from a header text and data, for bad inputs.
func rawNPY(major byte, header string, data []byte) []byte {
	b := []byte(npyMagic)
	b = append(b, major, 0)
	if major == 1 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(header)))
	} else {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(header)))
	}
	b = append(b, header...)
	return append(b, data...)
}

func hdr(descr, fortran, shape string) string {
	return "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }\n"
}

type badInput struct {
	name     string
	data     []byte
	sentinel error
	parts    []string
}

func badNPYInputs(t testing.TB) []badInput {
	f32x4 := make([]byte, 16)
	fixture := func(f string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	lenOnly := func(major byte, n uint32) []byte {
		b := append([]byte(npyMagic), major, 0)
		b = binary.LittleEndian.AppendUint32(b, n)
		return append(b, "{}"...)
	}
	return []badInput{
		{"empty", nil, ErrFormat, []string{"file is 0 bytes, want at least 10"}},
		{"short", []byte(npyMagic + "\x01\x00"), ErrFormat, []string{"file is 8 bytes, want at least 10"}},
		{"magic", []byte("\x93NUMPX\x01\x00\x10\x00{}              "), ErrFormat, []string{`not a .npy file: starts with "\x93NUMPX", want "\x93NUMPY"`}},
		{"pickle", []byte("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x00"), ErrFormat, []string{"not a .npy file"}},
		{"version 4", rawNPY(4, hdr("<f4", "False", "(4,)"), f32x4), ErrUnsupported, []string{"format version 4.0, want 1.0, 2.0 or 3.0"}},
		{"version 1.1", append([]byte(npyMagic+"\x01\x01"), make([]byte, 100)...), ErrUnsupported, []string{"version 1.1"}},
		{"v2 short preamble", []byte(npyMagic + "\x02\x00\x00\x00\x00"), ErrFormat, []string{"file is 11 bytes, want at least 12 for a version 2.0 preamble"}},
		{"header past end", append([]byte(npyMagic+"\x01\x00\xff\xff"), "{}"...), ErrFormat, []string{"truncated: header length 65535 runs past the end of the 12-byte file"}},
		{"huge header v2", lenOnly(2, 0xffffffff), ErrFormat, []string{"header length 4294967295 exceeds the limit of 65536 bytes"}},
		{"huge header v3", lenOnly(3, 1<<17), ErrFormat, []string{"header length 131072 exceeds the limit"}},
		{"not a dict", rawNPY(1, "[1, 2]\n", nil), ErrFormat, []string{`byte 0: found '[', want '{'`}},
		{"empty header", rawNPY(1, "", nil), ErrFormat, []string{"header ends at byte 0, want '{'"}},
		{"missing shape", rawNPY(1, "{'descr': '<f4', 'fortran_order': False}\n", nil), ErrFormat, []string{`missing key "shape"`}},
		{"unknown key", rawNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': 1}\n", f32x4), ErrFormat,
			[]string{`unknown key "x", want only 'descr', 'fortran_order' and 'shape'`}},
		{"duplicate key", rawNPY(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}\n", f32x4), ErrFormat,
			[]string{`key "descr" appears twice`}},
		{"key not a string", rawNPY(1, "{descr: '<f4'}\n", nil), ErrFormat, []string{"found 'd', want a quoted string"}},
		{"unterminated string", rawNPY(1, "{'descr: '<f4'}", nil), ErrFormat, []string{"want ':'"}},
		{"open string", rawNPY(1, "{'descr", nil), ErrFormat, []string{"want the closing quote"}},
		{"escape", rawNPY(1, `{'de\'scr': '<f4'}`, nil), ErrFormat, []string{"no escapes"}},
		{"ends early", rawNPY(1, "{'descr': '<f4',", nil), ErrFormat, []string{"header ends at byte 16, want a quoted string"}},
		{"no comma", rawNPY(1, "{'descr': '<f4' 'shape': (4,)}", nil), ErrFormat, []string{"found '\\'', want ',' or '}'"}},
		{"int dtype", rawNPY(1, hdr("<i4", "False", "(4,)"), f32x4), ErrUnsupported, []string{`dtype "<i4", want float16, float32 or float64`}},
		{"native-order dtype", rawNPY(1, hdr("=f4", "False", "(4,)"), f32x4), ErrUnsupported, []string{`dtype "=f4"`}},
		{"object dtype", rawNPY(1, hdr("|O", "False", "(4,)"), f32x4), ErrUnsupported, []string{`dtype "|O"`}},
		{"structured", rawNPY(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,)}", f32x4), ErrUnsupported, []string{"structured dtype"}},
		{"descr number", rawNPY(1, "{'descr': 4, 'fortran_order': False, 'shape': (4,)}", f32x4), ErrFormat, []string{"descr: byte 10: found '4', want a quoted string"}},
		{"fortran", rawNPY(1, hdr("<f4", "True", "(2, 2)"), f32x4), ErrUnsupported, []string{"fortran_order is True, want C order"}},
		{"fortran int", rawNPY(1, hdr("<f4", "1", "(4,)"), f32x4), ErrFormat, []string{"fortran_order: byte 34: found '1', want True or False"}},
		{"fortran word", rawNPY(1, hdr("<f4", "Maybe", "(4,)"), f32x4), ErrFormat, []string{"want True or False"}},
		{"negative dim", rawNPY(1, hdr("<f4", "False", "(-1, 4)"), f32x4), ErrFormat, []string{"shape: dimension 0 is negative, want >= 0"}},
		{"not a tuple", rawNPY(1, hdr("<f4", "False", "(4)"), f32x4), ErrFormat, []string{"shape: (4) is not a tuple, want (4,)"}},
		{"shape list", rawNPY(1, hdr("<f4", "False", "[4]"), f32x4), ErrFormat, []string{"shape: byte 50: found '[', want '('"}},
		{"leading zero", rawNPY(1, hdr("<f4", "False", "(2, 02)"), f32x4), ErrFormat, []string{"shape: dimension 1 is 02, want a decimal integer without leading zeros"}},
		{"float dim", rawNPY(1, hdr("<f4", "False", "(4.0,)"), f32x4), ErrFormat, []string{"found '.', want ',' or ')'"}},
		{"dim overflows int64", rawNPY(1, hdr("<f4", "False", "(99999999999999999999,)"), f32x4), ErrFormat,
			[]string{"dimension 0 is 99999999999999999999, want at most 9223372036854775807"}},
		{"too many dims", rawNPY(1, hdr("<f4", "False", "("+strings.Repeat("1, ", 65)+")"), f32x4), ErrFormat, []string{"more than 64 dimensions"}},
		{"huge shape", rawNPY(1, hdr("<f4", "False", "(1099511627776, 1099511627776)"), f32x4), ErrFormat,
			[]string{"shape (1099511627776, 1099511627776) of float32: more than 2^63 bytes"}},
		{"product overflows", rawNPY(1, hdr("<f8", "False", "(4294967296, 4294967296, 4294967296)"), nil), ErrFormat,
			[]string{"shape (4294967296, 4294967296, 4294967296) of float64: more than 2^63 bytes"}},
		{"huge shape v2", rawNPY(2, hdr("<f2", "False", "(9223372036854775807,)"), f32x4), ErrFormat, []string{"more than 2^63 bytes"}},
		{"large shape", rawNPY(1, hdr("<f4", "False", "(1099511627776,)"), f32x4), ErrFormat, []string{"truncated: 16 data bytes, want 4398046511104 for shape (1099511627776,) of float32"}},
		{"truncated data", rawNPY(1, hdr("<f4", "False", "(5,)"), f32x4), ErrFormat, []string{"truncated: 16 data bytes, want 20 for shape (5,) of float32"}},
		{"trailing data", rawNPY(1, hdr("<f4", "False", "(3,)"), f32x4), ErrFormat, []string{"4 bytes after the data, want none (shape (3,) of float32 is 12 bytes)"}},
		{"garbage after dict", rawNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} x\n", f32x4), ErrFormat,
			[]string{"found 'x', want only spaces and a newline after the closing '}'"}},
		{"nul padding", rawNPY(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}\x00\x00", f32x4), ErrFormat, []string{`found '\x00'`}},
		{"numpy fortran", fixture("f32_fortran.npy"), ErrUnsupported, []string{"fortran_order is True"}},
		{"numpy int32", fixture("i32_2d.npy"), ErrUnsupported, []string{`dtype "<i4"`}},
		{"numpy structured", fixture("structured.npy"), ErrUnsupported, []string{"structured dtype"}},
		{"numpy complex", fixture("c64_1d.npy"), ErrUnsupported, []string{`dtype "<c8"`}},
		{"numpy truncated", fixture("f32_4d.npy")[:300], ErrFormat, []string{"truncated: 172 data bytes, want 192 for shape (2, 2, 3, 4) of float32"}},
		{"numpy header cut", fixture("f32_4d.npy")[:100], ErrFormat, []string{"truncated: header length 118 runs past the end of the 100-byte file"}},
	}
}

// TestTensorNPYRejects: each bad input gets one error of the right kind
// naming the file and the problem, and allocates little more than the input.
func TestTensorNPYRejects(t *testing.T) {
	for _, tc := range badNPYInputs(t) {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			alloc := allocated(func() { _, err = ReadNPYAt(bytes.NewReader(tc.data), int64(len(tc.data)), "bad.npy") })
			wantErr(t, err, tc.sentinel, append([]string{"bad.npy: "}, tc.parts...)...)
			if limit := 4*uint64(len(tc.data)) + 16<<10; alloc > limit {
				t.Errorf("allocated %d bytes for a %d-byte input, want <= %d", alloc, len(tc.data), limit)
			}
		})
	}
}

// allocated is the number of bytes f allocates. ReadMemStats stops the
// world, but unlike runtime/metrics it flushes the per-P caches, so small
// allocations are counted exactly rather than a span at a time.
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestTensorNPYLenientForms accepts header forms numpy's reader accepts.
func TestTensorNPYLenientForms(t *testing.T) {
	d := AppendValues(nil, []float32{1, 2, 3, 4}, Float32, binary.LittleEndian)
	for _, h := range []string{
		"{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 2L), }",       // numpy written by Python 2
		`{"shape": (2, 2), "descr": "<f4", "fortran_order": False}` + "\n\n ", // other quotes, key order, whitespace
		"{'descr':'<f4','fortran_order':False,'shape':(2,2,)}",
		"{\n 'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 2 , 2 ) }",
	} {
		x, err := DecodeNPY(rawNPY(1, h, d))
		if err != nil {
			t.Errorf("%q: %v", h, err)
			continue
		}
		if !reflect.DeepEqual(x.Shape, []int{2, 2}) || !reflect.DeepEqual(x.Data, []float32{1, 2, 3, 4}) {
			t.Errorf("%q: got %v %v", h, x.Shape, x.Data)
		}
	}
}

// shortReader claims more bytes than it has: the reader's errors surface.
type shortReader struct{ b []byte }

func (r shortReader) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(r.b).ReadAt(p, off)
}

func TestTensorNPYReaderErrors(t *testing.T) {
	b, _ := os.ReadFile("testdata/f32_4d.npy")
	_, err := ReadNPYAt(shortReader{b[:200]}, int64(len(b)), "obj/q")
	wantErr(t, err, ErrFormat, "obj/q: reading the data: read 72 of 192 bytes at offset 128", "unexpected EOF")
	_, err = ReadNPY(filepath.Join(t.TempDir(), "missing.npy"))
	if !os.IsNotExist(err) || !strings.Contains(err.Error(), "missing.npy") {
		t.Errorf("missing file: %v", err)
	}
	_, err = ReadNPY(t.TempDir())
	wantErr(t, err, ErrUnsupported, "not a regular file")
}

func TestTensorWriteNPYAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "o.npy")
	a := New([]float32{1, 2, 3}, 3)
	if err := WriteNPY(path, a); err != nil {
		t.Fatal(err)
	}
	bad := &Tensor{Shape: []int{4}, Data: make([]float32, 3)}
	wantErr(t, WriteNPY(path, bad), ErrShape, "o.npy", "3 values for shape [4], want 4")
	if got, err := ReadNPY(path); err != nil || !reflect.DeepEqual(got.Data, a.Data) {
		t.Fatalf("after a failed write: %v, %v; want the old file intact", got, err)
	}
	if err := WriteNPY(path, New([]float32{4, 5}, 1, 2)); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadNPY(path); err != nil || !reflect.DeepEqual(got.Shape, []int{1, 2}) {
		t.Fatalf("overwrite: %v, %v", got, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	err := WriteNPY(filepath.Join(dir, "no", "such", "dir.npy"), a)
	if err == nil || !strings.Contains(err.Error(), "dir.npy") {
		t.Errorf("write into a missing directory: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d entries left in the directory, want 1 (no temporary files)", len(ents))
	}
}
