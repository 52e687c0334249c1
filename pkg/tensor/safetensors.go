package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"unicode/utf8"
)

// The .safetensors format (github.com/huggingface/safetensors): an unsigned
// 64-bit little-endian header length N, N bytes of UTF-8 JSON (possibly
// padded with trailing spaces), then the data section. The JSON object maps
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}, with
// offsets relative to the data section, plus an optional "__metadata__"
// object of string values. The tensors' byte ranges must tile the data
// section exactly: no gaps, no overlaps, nothing after the last.

// stMaxHeader is the header size limit of the reference implementation.
const stMaxHeader = 100_000_000

const stMetadataKey = "__metadata__"

// stDTypes are the element sizes of the dtypes a valid file may declare; only
// the floating ones in stFloat can be read into a Tensor.
var stDTypes = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"I64": 8, "U64": 8, "F64": 8,
}

// stDTypeNames interns the dtype strings.
var stDTypeNames = func() map[string]string {
	m := map[string]string{}
	for k := range stDTypes {
		m[k] = k
	}
	return m
}()

var stFloat = map[string]DType{"F16": Float16, "BF16": BFloat16, "F32": Float32, "F64": Float64}

// TensorInfo describes one tensor of a .safetensors file.
type TensorInfo struct {
	Name  string
	DType string // as in the file: "F32", "BF16", "I64", ...
	Shape []int
	// Begin and End are the byte range of the tensor in the data section.
	Begin, End int64
}

// Safetensors is an opened, validated .safetensors file whose tensors are
// read on demand.
type Safetensors struct {
	r        io.ReaderAt
	name     string
	dataOff  int64
	infos    []TensorInfo   // in header order
	index    map[string]int // name -> infos index
	names    []string       // sorted
	metadata map[string]string
}

// ReadSafetensors reads every tensor of the .safetensors file at path,
// converted to float32 (F32, F64, F16 and BF16 are supported).
func ReadSafetensors(path string) (map[string]*Tensor, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadSafetensorsAt(f, size, path)
}

// DecodeSafetensors reads every tensor of a .safetensors file held in memory.
func DecodeSafetensors(b []byte) (map[string]*Tensor, error) {
	return ReadSafetensorsAt(bytes.NewReader(b), int64(len(b)), "safetensors data")
}

// ReadSafetensorsAt reads every tensor of a .safetensors file of size bytes
// from r; name is used in errors.
func ReadSafetensorsAt(r io.ReaderAt, size int64, name string) (map[string]*Tensor, error) {
	f, err := OpenSafetensors(r, size, name)
	if err != nil {
		return nil, err
	}
	return f.All()
}

// OpenSafetensors reads and validates the header of a .safetensors file of
// size bytes from r; name (a path or object name) is used in errors. The
// header length is bounded by size before it is read, and every tensor's
// offsets are checked to lie in the file, to tile the data section and to
// match its dtype and shape, so reading tensors later allocates no more than
// twice the data section. Errors wrap ErrFormat or ErrUnsupported.
func OpenSafetensors(r io.ReaderAt, size int64, name string) (*Safetensors, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: "+format, append([]any{ErrFormat, name}, args...)...)
	}
	if size < 8 {
		return nil, bad("file is %d bytes, want at least 8 (the header length)", size)
	}
	var pre [8]byte
	if err := readFull(r, pre[:], 0); err != nil {
		return nil, bad("reading the header length: %v", err)
	}
	n := binary.LittleEndian.Uint64(pre[:])
	if n > stMaxHeader {
		return nil, bad("header length %d exceeds the limit of %d bytes", n, stMaxHeader)
	}
	if int64(n) > size-8 {
		return nil, bad("truncated: header length %d runs past the end of the %d-byte file", n, size)
	}
	hdr := make([]byte, n)
	if err := readFull(r, hdr, 8); err != nil {
		return nil, bad("reading the header: %v", err)
	}
	f := &Safetensors{r: r, name: name, dataOff: 8 + int64(n)}
	if err := f.parseHeader(hdr, size-f.dataOff); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errKind(err), name, err)
	}
	return f, nil
}

func (f *Safetensors) parseHeader(hdr []byte, size int64) error {
	if len(hdr) == 0 || hdr[0] != '{' {
		return fmt.Errorf("header does not start with '{'")
	}
	if !utf8.Valid(hdr) {
		return fmt.Errorf("header is not valid UTF-8")
	}
	// Size the tables once: every entry has a "data_offsets" key and takes
	// at least 48 bytes (`"":{"dtype":"U8","shape":[],"data_offsets":[0,0]}`),
	// so this bounds them by the header size without 1.25x regrowth.
	entries := min(bytes.Count(hdr, []byte(`"data_offsets"`)), len(hdr)/48)
	f.infos = make([]TensorInfo, 0, entries)
	f.names = make([]string, 0, entries)
	f.index = make(map[string]int, entries)
	p := &jsonScanner{s: hdr}
	if err := p.delim('{', "'{' to open the header"); err != nil {
		return err
	}
	for n := 0; ; n++ {
		more, err := p.elem('}', n, "the header")
		if err != nil {
			return err
		}
		if !more {
			break
		}
		key, err := p.str("a tensor name")
		if err != nil {
			return err
		}
		if !p.colon() {
			return p.unexpected(fmt.Sprintf("':' after %q", key))
		}
		if key == stMetadataKey {
			if f.metadata != nil {
				return fmt.Errorf("%q appears twice", stMetadataKey)
			}
			if f.metadata, err = parseMetadata(p); err != nil {
				return err
			}
			continue
		}
		if _, dup := f.index[key]; dup {
			return fmt.Errorf("tensor %q appears twice", key)
		}
		info, err := parseTensorInfo(p, key)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", key, err)
		}
		f.index[key] = len(f.infos)
		f.infos = append(f.infos, info)
		f.names = append(f.names, key)
	}
	p.ws()
	if p.i < len(hdr) {
		return fmt.Errorf("byte %d: found %s after the header object, want only spaces", p.i, p.describe())
	}
	if f.metadata == nil {
		f.metadata = map[string]string{}
	}
	sort.Strings(f.names)
	return f.checkOffsets(size)
}

// checkOffsets checks each tensor's size against its dtype and shape and that
// the byte ranges tile [0, size).
func (f *Safetensors) checkOffsets(size int64) error {
	for _, info := range f.infos {
		name := info.Name
		if info.End > size {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] run past the end of the %d-byte data section (truncated file?)",
				name, info.Begin, info.End, size)
		}
		_, want, err := dataSize(info.Shape, stDTypes[info.DType])
		if err != nil {
			return fmt.Errorf("tensor %q: shape %s of %s: %v", name, FormatShape(info.Shape), info.DType, err)
		}
		if info.End-info.Begin != want {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] span %d bytes, want %d for shape %s of %s",
				name, info.Begin, info.End, info.End-info.Begin, want, FormatShape(info.Shape), info.DType)
		}
	}
	order := make([]int32, len(f.infos)) // header length < 2^31
	for i := range order {
		order[i] = int32(i)
	}
	sort.SliceStable(order, func(i, j int) bool {
		a, b := &f.infos[order[i]], &f.infos[order[j]]
		return a.Begin < b.Begin || a.Begin == b.Begin && a.End < b.End
	})
	at := int64(0)
	for i, o := range order {
		t := &f.infos[o]
		switch {
		case t.Begin < at:
			prev := &f.infos[order[i-1]]
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] overlap tensor %q [%d, %d]",
				t.Name, t.Begin, t.End, prev.Name, prev.Begin, prev.End)
		case t.Begin > at:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] leave bytes [%d, %d) of the data section unused, want contiguous tensors",
				t.Name, t.Begin, t.End, at, t.Begin)
		}
		at = t.End
	}
	if at != size {
		return fmt.Errorf("the tensors cover %d bytes of the %d-byte data section, want all of it", at, size)
	}
	return nil
}

func parseMetadata(p *jsonScanner) (map[string]string, error) {
	if p.null() {
		return map[string]string{}, nil
	}
	if err := p.delim('{', "'{' to open "+stMetadataKey+" (an object of strings)"); err != nil {
		return nil, err
	}
	// Count the pairs first so that the map is allocated once, at its size.
	q, size := *p, 0
	for ; ; size++ {
		if more, err := q.elem('}', size, ""); err != nil || !more {
			break
		}
		if _, err := q.raw(""); err != nil || !q.colon() {
			break
		}
		if _, err := q.raw(""); err != nil {
			break
		}
	}
	md := make(map[string]string, size)
	for n := 0; ; n++ {
		more, err := p.elem('}', n, stMetadataKey)
		if err != nil || !more {
			return md, err
		}
		k, err := p.str("a metadata key")
		if err != nil {
			return nil, err
		}
		if _, dup := md[k]; dup {
			return nil, fmt.Errorf("%s key %q appears twice", stMetadataKey, k)
		}
		if !p.colon() {
			return nil, p.unexpected(fmt.Sprintf("':' after %q", k))
		}
		if p.ws(); p.peek() != '"' {
			return nil, p.unexpected(fmt.Sprintf("%s[%q] as a string", stMetadataKey, k))
		}
		if md[k], err = p.str(""); err != nil {
			return nil, err
		}
	}
}

func parseTensorInfo(p *jsonScanner, name string) (TensorInfo, error) {
	info := TensorInfo{Name: name}
	if err := p.delim('{', "'{' to open the tensor entry"); err != nil {
		return info, err
	}
	var haveDType, haveShape, haveOffsets bool
	for n := 0; ; n++ {
		more, err := p.elem('}', n, "the tensor entry")
		if err != nil {
			return info, err
		}
		if !more {
			break
		}
		key, err := p.raw("a field name")
		if err != nil {
			return info, err
		}
		if !p.colon() {
			return info, p.unexpected(fmt.Sprintf("':' after %q", key))
		}
		switch string(key) {
		case "dtype":
			if haveDType {
				return info, fmt.Errorf("field dtype appears twice")
			}
			haveDType = true
			dt, err := p.raw("dtype as a string")
			if err != nil {
				return info, err
			}
			if _, ok := stDTypes[string(dt)]; !ok {
				return info, unsupported(fmt.Sprintf("dtype %q, want F32, F64, F16 or BF16", dt))
			}
			info.DType = stDTypeNames[string(dt)]
		case "shape":
			if haveShape {
				return info, fmt.Errorf("field shape appears twice")
			}
			haveShape = true
			if info.Shape, err = jsonInts(p, "shape", "'[' to open shape", MaxRank, nil); err != nil {
				return info, err
			}
		case "data_offsets":
			if haveOffsets {
				return info, fmt.Errorf("field data_offsets appears twice")
			}
			haveOffsets = true
			var buf [2]int
			off, err := jsonInts(p, "data_offsets", "'[' to open data_offsets", 2, buf[:0])
			if err != nil {
				return info, err
			}
			if len(off) != 2 || off[0] > off[1] {
				return info, fmt.Errorf("data_offsets %v, want [begin, end] with begin <= end", off)
			}
			info.Begin, info.End = int64(off[0]), int64(off[1])
		default:
			return info, fmt.Errorf("unknown field %q, want dtype, shape and data_offsets", key)
		}
	}
	switch {
	case !haveDType:
		return info, fmt.Errorf("missing field dtype")
	case !haveShape:
		return info, fmt.Errorf("missing field shape")
	case !haveOffsets:
		return info, fmt.Errorf("missing field data_offsets")
	}
	return info, nil
}

// jsonInts appends to out an array of at most limit non-negative integers,
// the field; open describes its '['.
func jsonInts(p *jsonScanner, field, open string, limit int, out []int) ([]int, error) {
	if err := p.delim('[', open); err != nil {
		return nil, err
	}
	if out == nil {
		out = []int{}
	}
	for n := 0; ; n++ {
		more, err := p.elem(']', n, field)
		if err != nil || !more {
			return out, err
		}
		if n == limit {
			return nil, fmt.Errorf("%s has more than %d entries", field, limit)
		}
		v, err := p.count(field, n)
		if err != nil {
			return nil, err
		}
		out = append(out, int(v))
	}
}

// Names returns the tensor names, sorted.
func (f *Safetensors) Names() []string { return append(make([]string, 0, len(f.names)), f.names...) }

// Info describes the tensor called name.
func (f *Safetensors) Info(name string) (TensorInfo, bool) {
	i, ok := f.index[name]
	if !ok {
		return TensorInfo{}, false
	}
	info := f.infos[i]
	info.Shape = cloneShape(info.Shape)
	return info, true
}

// Metadata returns the file's "__metadata__" (empty if it has none).
func (f *Safetensors) Metadata() map[string]string {
	md := make(map[string]string, len(f.metadata))
	for k, v := range f.metadata {
		md[k] = v
	}
	return md
}

// Tensor reads the tensor called name, converted to float32. It wraps
// ErrNotFound for an unknown name and ErrUnsupported for a non-float dtype.
func (f *Safetensors) Tensor(name string) (*Tensor, error) {
	i, ok := f.index[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s has no tensor %q; it holds %s", ErrNotFound, f.name, name, listNames(f.names))
	}
	info := &f.infos[i]
	dt, ok := stFloat[info.DType]
	if !ok {
		return nil, fmt.Errorf("%w: %s: tensor %q has dtype %s, want F32, F64, F16 or BF16", ErrUnsupported, f.name, name, info.DType)
	}
	n := int(info.End-info.Begin) / dt.Size()
	t := &Tensor{Shape: cloneShape(info.Shape), Data: make([]float32, n)}
	if err := readValues(f.r, f.dataOff+info.Begin, t.Data, dt, binary.LittleEndian); err != nil {
		return nil, fmt.Errorf("%w: %s: tensor %q: %v", ErrFormat, f.name, name, err)
	}
	return t, nil
}

// All reads every tensor.
func (f *Safetensors) All() (map[string]*Tensor, error) {
	out := make(map[string]*Tensor, len(f.names))
	for _, name := range f.names {
		t, err := f.Tensor(name)
		if err != nil {
			return nil, err
		}
		out[name] = t
	}
	return out, nil
}

var stNames = map[DType]string{Float16: "F16", BFloat16: "BF16", Float32: "F32", Float64: "F64"}

// EncodeSafetensors writes tensors as a .safetensors file with elements of
// type dt (Float32 keeps values exactly; Float16 and BFloat16 round to
// nearest-even), tensors in name order, and the optional metadata. The
// header is padded with spaces to a multiple of 8 bytes, as the reference
// implementation does.
func EncodeSafetensors(w io.Writer, tensors map[string]*Tensor, metadata map[string]string, dt DType) error {
	stName, ok := stNames[dt]
	if !ok {
		return fmt.Errorf("%w: safetensors dtype %v, want Float16, BFloat16, Float32 or Float64", ErrUnsupported, dt)
	}
	names := make([]string, 0, len(tensors))
	for name, t := range tensors {
		if name == stMetadataKey {
			return fmt.Errorf("%w: tensor name %q is reserved", ErrShape, name)
		}
		if !utf8.ValidString(name) {
			return fmt.Errorf("%w: tensor name %q is not valid UTF-8", ErrShape, name)
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("tensor %q: %w", name, err)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var hdr bytes.Buffer
	hdr.WriteByte('{')
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: metadata %q: %q is not valid UTF-8", ErrShape, k, v)
		}
	}
	if len(metadata) > 0 {
		md, err := json.Marshal(metadata) // map keys are sorted
		if err != nil {
			return err
		}
		hdr.WriteString(`"` + stMetadataKey + `":`)
		hdr.Write(md)
	}
	off := int64(0)
	for i, name := range names {
		if i > 0 || len(metadata) > 0 {
			hdr.WriteByte(',')
		}
		t := tensors[name]
		key, _ := json.Marshal(name)
		shape, _ := json.Marshal(t.Shape)
		end := off + int64(t.Len()*dt.Size())
		fmt.Fprintf(&hdr, `%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, key, stName, shape, off, end)
		off = end
	}
	hdr.WriteByte('}')
	for hdr.Len()%8 != 0 {
		hdr.WriteByte(' ')
	}
	var pre [8]byte
	binary.LittleEndian.PutUint64(pre[:], uint64(hdr.Len()))
	if _, err := w.Write(pre[:]); err != nil {
		return err
	}
	if _, err := w.Write(hdr.Bytes()); err != nil {
		return err
	}
	var buf []byte
	for _, name := range names {
		data := tensors[name].Data
		for i := 0; i < len(data); i += readChunk / 8 {
			buf = AppendValues(buf[:0], data[i:min(i+readChunk/8, len(data))], dt, binary.LittleEndian)
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
	}
	return nil
}

// WriteSafetensors writes tensors to path as a float32 .safetensors file
// (see EncodeSafetensors), atomically through a temporary file.
func WriteSafetensors(path string, tensors map[string]*Tensor, metadata map[string]string) error {
	return writeFileAtomic(path, func(w io.Writer) error { return EncodeSafetensors(w, tensors, metadata, Float32) })
}
