package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// stAllocFactor bounds the bytes a .safetensors read allocates per byte of
// input: 2 for the data converted to float32, and up to 10 per header byte
// for headers packed with tiny entries (map slots and strings).
const stAllocFactor = 10

var update = flag.Bool("update", false, "rewrite the golden files written by this package's own writers")

// rawST builds a .safetensors file from a header text and data.
func rawST(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// handBuilt is a file laid out by hand from the format's specification, as
// the reference implementation lays it out: data ordered by alignment (F64,
// I64, F32, then the 16-bit types), keys in no particular order, metadata,
// header padded with spaces to a multiple of 8.
func handBuilt() []byte {
	h := `{"attn.q":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]},` +
		`"__metadata__":{"format":"pt"},` +
		`"d":{"dtype":"F64","shape":[],"data_offsets":[0,8]},` +
		`"ids":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},` +
		`"h":{"dtype":"F16","shape":[2],"data_offsets":[38,42]},` +
		`"bf":{"dtype":"BF16","shape":[3],"data_offsets":[32,38]}}`
	for len(h)%8 != 0 {
		h += " "
	}
	data := unhex("9a999999 9999b93f" + // d: float64 0.1
		"0700000000000000" + // ids: int64 7
		"0000803f 000000c0 0000003f 00004040" + // attn.q: 1, -2, 0.5, 3
		"803f 00bf 807f" + // bf: 1, -0.5, +Inf
		"003c ff7b") // h: 1, 65504
	return rawST(h, data)
}

func TestTensorSafetensorsHandBuilt(t *testing.T) {
	b := handBuilt()
	f, err := OpenSafetensors(bytes.NewReader(b), int64(len(b)), "hand.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Names(); !reflect.DeepEqual(got, []string{"attn.q", "bf", "d", "h", "ids"}) {
		t.Errorf("Names() = %q", got)
	}
	if got := f.Metadata(); !reflect.DeepEqual(got, map[string]string{"format": "pt"}) {
		t.Errorf("Metadata() = %v", got)
	}
	if info, ok := f.Info("ids"); !ok || info.DType != "I64" || !reflect.DeepEqual(info.Shape, []int{1}) || info.Begin != 8 || info.End != 16 {
		t.Errorf("Info(ids) = %+v, %v", info, ok)
	}
	for _, tc := range []struct {
		name  string
		shape []int
		data  []float32
	}{
		{"attn.q", []int{2, 2}, []float32{1, -2, 0.5, 3}},
		{"bf", []int{3}, []float32{1, -0.5, float32(math.Inf(1))}},
		{"d", []int{}, []float32{0.1}},
		{"h", []int{2}, []float32{1, 65504}},
	} {
		x, err := f.Tensor(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(x.Shape, tc.shape) || !reflect.DeepEqual(x.Data, tc.data) {
			t.Errorf("%s = %v %v, want %v %v", tc.name, x.Shape, x.Data, tc.shape, tc.data)
		}
	}
	_, err = f.Tensor("ids")
	wantErr(t, err, ErrUnsupported, `hand.safetensors: tensor "ids" has dtype I64, want F32, F64, F16 or BF16`)
	_, err = f.Tensor("k")
	wantErr(t, err, ErrNotFound, `hand.safetensors has no tensor "k"; it holds ["attn.q" "bf" "d" "h" "ids"]`)
	_, err = DecodeSafetensors(b)
	wantErr(t, err, ErrUnsupported, `tensor "ids" has dtype I64`)
}

// goldenTensors are the contents of testdata/writer.safetensors.
func goldenTensors() map[string]*Tensor {
	return map[string]*Tensor{
		"q":      New(fixtureValues(24, false), 2, 3, 4),
		"k":      New(fixtureValues(6, true), 6),
		"scalar": New([]float32{-1.875}),
		"empty":  New(nil, 0, 3),
	}
}

// TestTensorSafetensorsWriterGolden: the writer's bytes are stable and read
// back; the committed file lets other tools check interop.
func TestTensorSafetensorsWriterGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := EncodeSafetensors(&buf, goldenTensors(), map[string]string{"format": "np", "by": "ringattn"}, Float32); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "writer.safetensors")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("writer output differs from %s (run with -update if intended):\n%q\n%q", golden, buf.Bytes(), want)
	}
	if n := binary.LittleEndian.Uint64(want); n%8 != 0 || !bytes.HasPrefix(want[8:], []byte(`{"__metadata__":{"by":"ringattn","format":"np"},"empty":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},`)) {
		t.Errorf("header length %d / layout: %q", n, want[8:8+n])
	}
	got, err := ReadSafetensors(golden)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(goldenTensors()) {
		t.Fatalf("read %d tensors, want %d", len(got), len(goldenTensors()))
	}
	for name, w := range goldenTensors() {
		g := got[name]
		if g == nil || !reflect.DeepEqual(g.Shape, w.Shape) || !sameBits(g.Data, w.Data) {
			t.Errorf("%s: got %v, want %v %v", name, g, w.Shape, w.Data)
		}
	}
}

func TestTensorSafetensorsRoundTrip(t *testing.T) {
	r := testrand.New(5)
	ts := map[string]*Tensor{
		"a":               New(r.Slice(2*3*5*4, testrand.Normal), 2, 3, 5, 4),
		"b":               New(r.Slice(7, testrand.Large), 7),
		"c":               New(append(r.Slice(3, testrand.Tiny), float32(math.NaN()), float32(math.Inf(-1))), 5),
		"ü/名前 \"quoted\"": New([]float32{1}, 1, 1),
	}
	for _, dt := range []DType{Float32, Float64, Float16, BFloat16} {
		var buf bytes.Buffer
		if err := EncodeSafetensors(&buf, ts, nil, dt); err != nil {
			t.Fatal(err)
		}
		got, err := DecodeSafetensors(buf.Bytes())
		if err != nil {
			t.Fatalf("%v: %v", dt, err)
		}
		for name, x := range ts {
			want := make([]float32, x.Len())
			DecodeValues(want, AppendValues(nil, x.Data, dt, binary.LittleEndian), dt, binary.LittleEndian)
			if g := got[name]; g == nil || !reflect.DeepEqual(g.Shape, x.Shape) || !sameBits(g.Data, want) {
				t.Fatalf("%v %q: got %v, want %v", dt, name, g, x)
			}
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "t.safetensors")
	if err := WriteSafetensors(path, ts, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSafetensors(path)
	if err != nil || !sameBits(got["a"].Data, ts["a"].Data) {
		t.Fatalf("WriteSafetensors/ReadSafetensors: %v", err)
	}
	wantErr(t, EncodeSafetensors(&bytes.Buffer{}, map[string]*Tensor{"__metadata__": New([]float32{1}, 1)}, nil, Float32), ErrShape, "reserved")
	wantErr(t, EncodeSafetensors(&bytes.Buffer{}, ts, nil, DType(9)), ErrUnsupported, "DType(9)")
	wantErr(t, EncodeSafetensors(&bytes.Buffer{}, map[string]*Tensor{"x": {Shape: []int{2}, Data: nil}}, nil, Float32), ErrShape, `tensor "x"`, "0 values for shape [2]")
}

func st1(name, dtype, shape, offsets string) string {
	return `{"` + name + `":{"dtype":"` + dtype + `","shape":` + shape + `,"data_offsets":` + offsets + `}}`
}

func badSafetensorsInputs() []badInput {
	d8 := make([]byte, 8)
	d16 := make([]byte, 16)
	hugeLen := binary.LittleEndian.AppendUint64(nil, math.MaxUint64)
	two := func(a, b string, data []byte) []byte {
		return rawST(`{"a":{"dtype":"F32","shape":[2],"data_offsets":`+a+`},"b":{"dtype":"F32","shape":[2],"data_offsets":`+b+`}}`, data)
	}
	return []badInput{
		{"empty", nil, ErrFormat, []string{"file is 0 bytes, want at least 8"}},
		{"short", []byte{1, 0, 0}, ErrFormat, []string{"file is 3 bytes, want at least 8"}},
		{"huge header", append(hugeLen, "{}"...), ErrFormat, []string{"header length 18446744073709551615 exceeds the limit of 100000000 bytes"}},
		{"header past end", append(binary.LittleEndian.AppendUint64(nil, 100), "{}"...), ErrFormat,
			[]string{"truncated: header length 100 runs past the end of the 10-byte file"}},
		{"npy file", rawNPY(1, hdr("<f4", "False", "(0,)"), nil), ErrFormat, []string{"exceeds the limit"}},
		{"empty header", rawST("", nil), ErrFormat, []string{"header does not start with '{'"}},
		{"array header", rawST("[]", nil), ErrFormat, []string{"header does not start with '{'"}},
		{"bad utf8", rawST("{\"\xff\":1}", nil), ErrFormat, []string{"header is not valid UTF-8"}},
		{"unclosed", rawST(`{"a":`, nil), ErrFormat, []string{`tensor "a": byte 5: found the end of the header, want '{' to open the tensor entry`}},
		{"unclosed string", rawST(`{"a`, nil), ErrFormat, []string{"byte 1: string has no closing quote"}},
		{"trailing comma", rawST(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},}`, nil), ErrFormat, []string{"byte 54: found '}', want a value after ',' (no trailing commas)"}},
		{"trailing comma array", rawST(st1("a", "F32", "[0,]", "[0,0]"), nil), ErrFormat, []string{"want a value after ','"}},
		{"missing comma", rawST(st1("a", "F32", "[0 1]", "[0,0]"), nil), ErrFormat, []string{"found number 1, want ',' or ']' in shape"}},
		{"control char", rawST("{\"a\tb\":1}", nil), ErrFormat, []string{`byte 3: control character '\t' in a string, want it escaped`}},
		{"bad escape", rawST(`{"a\x":1}`, nil), ErrFormat, []string{`byte 3: invalid escape "\\x" in a string`}},
		{"short unicode escape", rawST(`{"\u12":1}`, nil), ErrFormat, []string{`\u escape needs 4 hex digits`}},
		{"lone surrogate", rawST(`{"\ud800x":1}`, nil), ErrFormat, []string{"lone UTF-16 surrogate"}},
		{"escaped duplicate", rawST(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"\u0061":{}}`, nil), ErrFormat, []string{`tensor "a" appears twice`}},
		{"leading zero", rawST(st1("a", "F32", "[01]", "[0,4]"), d8[:4]), ErrFormat, []string{"shape[0] is 01, want a non-negative integer below 2^63"}},
		{"true dim", rawST(st1("a", "F32", "[true]", "[0,4]"), d8[:4]), ErrFormat, []string{"found true, want shape[0] as a non-negative integer"}},
		{"syntax", rawST(`{"a" 1}`, nil), ErrFormat, []string{`byte 5: found number 1, want ':' after "a"`}},
		{"garbage after", rawST(`{} x`, nil), ErrFormat, []string{"byte 3: found 'x' after the header object, want only spaces"}},
		{"two objects", rawST(`{}{}`, nil), ErrFormat, []string{"byte 2: found '{' after the header object"}},
		{"duplicate tensor", rawST(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}`, nil),
			ErrFormat, []string{`tensor "a" appears twice`}},
		{"duplicate metadata", rawST(`{"__metadata__":{},"__metadata__":{}}`, nil), ErrFormat, []string{`"__metadata__" appears twice`}},
		{"metadata number", rawST(`{"__metadata__":1}`, nil), ErrFormat, []string{"byte 16: found number 1, want '{' to open __metadata__ (an object of strings)"}},
		{"metadata value", rawST(`{"__metadata__":{"k":[1]}}`, nil), ErrFormat, []string{`byte 21: found '[', want __metadata__["k"] as a string`}},
		{"metadata dup key", rawST(`{"__metadata__":{"k":"1","k":"2"}}`, nil), ErrFormat, []string{`__metadata__ key "k" appears twice`}},
		{"entry not object", rawST(`{"a":"x"}`, nil), ErrFormat, []string{`tensor "a": byte 5: found string "x", want '{' to open the tensor entry`}},
		{"unknown field", rawST(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":1}}`, nil), ErrFormat,
			[]string{`tensor "a": unknown field "x", want dtype, shape and data_offsets`}},
		{"duplicate field", rawST(`{"a":{"dtype":"F32","dtype":"F32"}}`, nil), ErrFormat, []string{"field dtype appears twice"}},
		{"missing dtype", rawST(`{"a":{"shape":[0],"data_offsets":[0,0]}}`, nil), ErrFormat, []string{`tensor "a": missing field dtype`}},
		{"missing shape", rawST(`{"a":{"dtype":"F32","data_offsets":[0,0]}}`, nil), ErrFormat, []string{"missing field shape"}},
		{"missing offsets", rawST(`{"a":{"dtype":"F32","shape":[0]}}`, nil), ErrFormat, []string{"missing field data_offsets"}},
		{"unknown dtype", rawST(st1("a", "F128", "[1]", "[0,16]"), d16), ErrUnsupported, []string{`tensor "a": dtype "F128", want F32, F64, F16 or BF16`}},
		{"dtype number", rawST(`{"a":{"dtype":4}}`, nil), ErrFormat, []string{"found number 4, want dtype as a string"}},
		{"negative dim", rawST(st1("a", "F32", "[-1]", "[0,0]"), nil), ErrFormat, []string{"shape[0] is -1, want a non-negative integer"}},
		{"float dim", rawST(st1("a", "F32", "[1.5]", "[0,4]"), d8[:4]), ErrFormat, []string{"shape[0] is 1.5, want a non-negative integer"}},
		{"exp dim", rawST(st1("a", "F32", "[1e3]", "[0,4]"), d8[:4]), ErrFormat, []string{"shape[0] is 1e3"}},
		{"string dim", rawST(st1("a", "F32", `["2"]`, "[0,8]"), d8), ErrFormat, []string{`byte 29: found string "2", want shape[0] as a non-negative integer`}},
		{"shape object", rawST(st1("a", "F32", `{}`, "[0,8]"), d8), ErrFormat, []string{`byte 28: found '{', want '[' to open shape`}},
		{"rank 65", rawST(st1("a", "F32", "["+strings.Repeat("1,", 64)+"1]", "[0,4]"), d8[:4]), ErrFormat, []string{"shape has more than 64 entries"}},
		{"three offsets", rawST(st1("a", "F32", "[2]", "[0,8,8]"), d8), ErrFormat, []string{"data_offsets has more than 2 entries"}},
		{"one offset", rawST(st1("a", "F32", "[2]", "[0]"), d8), ErrFormat, []string{"data_offsets [0], want [begin, end] with begin <= end"}},
		{"reversed offsets", rawST(st1("a", "F32", "[2]", "[8,0]"), d8), ErrFormat, []string{"data_offsets [8 0], want [begin, end]"}},
		{"offset 2^63", rawST(st1("a", "F32", "[2]", "[0,9223372036854775808]"), d8), ErrFormat, []string{"data_offsets[1] is 9223372036854775808, want a non-negative integer below 2^63"}},
		{"past end", rawST(st1("a", "F32", "[4]", "[0,16]"), d8), ErrFormat,
			[]string{`tensor "a": data_offsets [0, 16] run past the end of the 8-byte data section (truncated file?)`}},
		{"size mismatch", rawST(st1("a", "F32", "[3]", "[0,8]"), d8), ErrFormat, []string{`tensor "a": data_offsets [0, 8] span 8 bytes, want 12 for shape [3] of F32`}},
		{"huge shape", rawST(st1("a", "F32", "[4294967296,4294967296]", "[0,8]"), d8), ErrFormat, []string{"shape [4294967296 4294967296] of F32: more than 2^63 bytes"}},
		{"overlap", two("[0,8]", "[4,12]", d16), ErrFormat, []string{`tensor "b": data_offsets [4, 12] overlap tensor "a" [0, 8]`}},
		{"same range", two("[0,8]", "[0,8]", d16), ErrFormat, []string{`data_offsets [0, 8] overlap tensor`}},
		{"gap", two("[0,8]", "[12,20]", make([]byte, 20)), ErrFormat, []string{`tensor "b": data_offsets [12, 20] leave bytes [8, 12) of the data section unused`}},
		{"gap first", rawST(st1("a", "F32", "[1]", "[4,8]"), d8), ErrFormat, []string{"leave bytes [0, 4) of the data section unused"}},
		{"trailing data", rawST(st1("a", "F32", "[1]", "[0,4]"), d8), ErrFormat, []string{"the tensors cover 4 bytes of the 8-byte data section, want all of it"}},
		{"no tensors, data", rawST(`{}`, d8), ErrFormat, []string{"cover 0 bytes of the 8-byte data section"}},
		{"truncated hand-built", handBuilt()[:len(handBuilt())-1], ErrFormat, []string{`tensor "h": data_offsets [38, 42] run past the end of the 41-byte data section`}},
	}
}

// TestTensorSafetensorsRejects: each bad input gets one error of the right
// kind naming the file and the problem, and allocates little more than the
// input.
func TestTensorSafetensorsRejects(t *testing.T) {
	for _, tc := range badSafetensorsInputs() {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			alloc := allocated(func() {
				_, err = ReadSafetensorsAt(bytes.NewReader(tc.data), int64(len(tc.data)), "bad.safetensors")
			})
			wantErr(t, err, tc.sentinel, append([]string{"bad.safetensors: "}, tc.parts...)...)
			if limit := uint64(stAllocFactor*len(tc.data)) + 32<<10; alloc > limit {
				t.Errorf("allocated %d bytes for a %d-byte input, want <= %d", alloc, len(tc.data), limit)
			}
		})
	}
}

func TestTensorSafetensorsEdgeForms(t *testing.T) {
	// Empty file (no tensors), null metadata, whitespace padding, zero-size
	// tensors sharing an offset with a non-empty one.
	for _, h := range []string{`{}`, `{"__metadata__":null}  `, "{ }\n\t "} {
		got, err := DecodeSafetensors(rawST(h, nil))
		if err != nil || len(got) != 0 {
			t.Errorf("%q: %v, %v", h, got, err)
		}
	}
	b := rawST(`{"z":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},`+
		`"y":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}}`, unhex("0000c03f"))
	got, err := DecodeSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got["a"].Data, []float32{1.5}) || got["z"].Len() != 0 || !reflect.DeepEqual(got["z"].Shape, []int{0, 5}) || got["y"].Len() != 0 {
		t.Errorf("got %v %v %v", got["a"], got["z"], got["y"])
	}
}

func TestTensorOpenAndLoad(t *testing.T) {
	dir := t.TempDir()
	one := filepath.Join(dir, "one.safetensors")
	many := filepath.Join(dir, "many.safetensors")
	npy := filepath.Join(dir, "x.npy")
	odd := filepath.Join(dir, "odd:name.safetensors")
	x := New([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	y := New([]float32{9}, 1)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(WriteSafetensors(one, map[string]*Tensor{"w": x}, nil))
	must(WriteSafetensors(many, map[string]*Tensor{"q": x, "k": y}, nil))
	must(WriteSafetensors(odd, map[string]*Tensor{"w": y}, nil))
	must(WriteNPY(npy, x))
	for _, tc := range []struct {
		spec string
		want *Tensor
	}{
		{npy, x}, {one, x}, {one + ":w", x}, {many + ":q", x}, {many + ":k", y}, {odd, y}, {odd + ":w", y},
		{"testdata/f16_3d.npy", New(fixtureValues(24, false), 2, 3, 4)},
	} {
		got, err := Load(tc.spec)
		if err != nil {
			t.Errorf("Load(%q): %v", tc.spec, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Load(%q) = %v %v, want %v %v", tc.spec, got.Shape, got.Data, tc.want.Shape, tc.want.Data)
		}
	}
	if got, err := Open(one); err != nil || !reflect.DeepEqual(got, x) {
		t.Errorf("Open(%q) = %v, %v", one, got, err)
	}
	_, err := Load(many)
	wantErr(t, err, ErrNotFound, "many.safetensors holds 2 tensors [\"k\" \"q\"], want exactly one or a name as", "many.safetensors:NAME")
	_, err = Load(many + ":v")
	wantErr(t, err, ErrNotFound, `has no tensor "v"; it holds ["k" "q"]`)
	_, err = Open(many + ":q")
	wantErr(t, err, ErrUnsupported, `unknown file extension ".safetensors:q", want .npy or .safetensors`)
	_, err = Load(filepath.Join(dir, "x.pt"))
	wantErr(t, err, ErrUnsupported, `unknown file extension ".pt"`)
	_, err = Load(filepath.Join(dir, "missing.npy"))
	if !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
	_, err = Load(filepath.Join(dir, "missing.safetensors:q"))
	if !os.IsNotExist(err) || !strings.Contains(err.Error(), "missing.safetensors") {
		t.Errorf("missing safetensors file: %v", err)
	}
	must(os.WriteFile(filepath.Join(dir, "bad.npy"), []byte("not numpy at all"), 0o644))
	_, err = Load(filepath.Join(dir, "bad.npy"))
	wantErr(t, err, ErrFormat, "bad.npy: not a .npy file")
}

// TestTensorSafetensorsHeaderAlloc: headers packed with tiny entries (the
// worst case for memory per header byte) cost a bounded multiple of their
// size, not the 1.25x-regrowth or per-token costs of a generic JSON decoder.
func TestTensorSafetensorsHeaderAlloc(t *testing.T) {
	var tensors, meta strings.Builder
	tensors.WriteString("{")
	meta.WriteString(`{"__metadata__":{`)
	for i := range 10000 {
		if i > 0 {
			tensors.WriteString(",")
			meta.WriteString(",")
		}
		fmt.Fprintf(&tensors, `"%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`, i)
		fmt.Fprintf(&meta, `"%d":""`, i)
	}
	tensors.WriteString("}")
	meta.WriteString("}}")
	for _, h := range []string{tensors.String(), meta.String()} {
		b := rawST(h, nil)
		var got map[string]*Tensor
		var err error
		alloc := allocated(func() { got, err = DecodeSafetensors(b) })
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(h, "dtype") && len(got) != 10000 {
			t.Fatalf("read %d tensors, want 10000", len(got))
		}
		t.Logf("%d-byte header: allocated %d bytes (%.1fx)", len(h), alloc, float64(alloc)/float64(len(b)))
		if limit := uint64(stAllocFactor * len(b)); alloc > limit {
			t.Errorf("%d-byte header: allocated %d bytes, want <= %d", len(h), alloc, limit)
		}
	}
}
