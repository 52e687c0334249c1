package tensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// The .npy format (numpy/lib/format.py): the magic "\x93NUMPY", a major and a
// minor version byte, the header length (uint16 LE in version 1.0, uint32 LE
// in 2.0 and 3.0), the header — a Python dict literal with exactly the keys
// 'descr', 'fortran_order' and 'shape', padded with spaces and ended by a
// newline — and then the raw elements.

const (
	npyMagic = "\x93NUMPY"
	// npyMaxHeader bounds the header length we accept; a header holds three
	// short keys and at most MaxRank dimensions. numpy's own default limit
	// (max_header_size) is 10000.
	npyMaxHeader = 1 << 16
	// readChunk is the size of the pieces data is read and converted in.
	readChunk = 1 << 20
)

// ReadNPY reads a float32, float64 or float16 .npy file (either byte order,
// C order, format version 1.0, 2.0 or 3.0) into a float32 tensor.
func ReadNPY(path string) (*Tensor, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadNPYAt(f, size, path)
}

// DecodeNPY reads a .npy file held in memory (see ReadNPYAt).
func DecodeNPY(b []byte) (*Tensor, error) {
	return ReadNPYAt(bytes.NewReader(b), int64(len(b)), "npy data")
}

// ReadNPYAt reads a .npy file of size bytes from r; name (a path or object
// name) is used in errors. Every length in the file is checked against size
// before anything is allocated, so a hostile file cannot make it allocate
// more than about three times its size (float16 data doubles as float32,
// plus a read buffer); errors wrap ErrFormat (malformed, truncated) or
// ErrUnsupported (an integer dtype, Fortran order).
func ReadNPYAt(r io.ReaderAt, size int64, name string) (*Tensor, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: "+format, append([]any{ErrFormat, name}, args...)...)
	}
	if size < 10 {
		return nil, bad("file is %d bytes, want at least 10 (magic, version, header length)", size)
	}
	pre := make([]byte, min(size, 12))
	if err := readFull(r, pre, 0); err != nil {
		return nil, bad("reading the preamble: %v", err)
	}
	if string(pre[:6]) != npyMagic {
		return nil, bad("not a .npy file: starts with %q, want %q", pre[:6], npyMagic)
	}
	major, minor := pre[6], pre[7]
	var hlen, start int64
	switch {
	case major == 1 && minor == 0:
		hlen, start = int64(binary.LittleEndian.Uint16(pre[8:])), 10
	case (major == 2 || major == 3) && minor == 0:
		if size < 12 {
			return nil, bad("file is %d bytes, want at least 12 for a version %d.0 preamble", size, major)
		}
		hlen, start = int64(binary.LittleEndian.Uint32(pre[8:])), 12
	default:
		return nil, fmt.Errorf("%w: %s: .npy format version %d.%d, want 1.0, 2.0 or 3.0", ErrUnsupported, name, major, minor)
	}
	if hlen > npyMaxHeader {
		return nil, bad("header length %d exceeds the limit of %d bytes", hlen, npyMaxHeader)
	}
	if hlen > size-start {
		return nil, bad("truncated: header length %d runs past the end of the %d-byte file", hlen, size)
	}
	hdr := make([]byte, hlen)
	if err := readFull(r, hdr, start); err != nil {
		return nil, bad("reading the header: %v", err)
	}
	h, err := parseNPYHeader(hdr)
	if err != nil {
		if errKind(err) == ErrUnsupported {
			return nil, fmt.Errorf("%w: %s: %v", ErrUnsupported, name, err)
		}
		return nil, bad("header %s: %v", quoteHeader(hdr), err)
	}
	if h.fortran {
		return nil, fmt.Errorf("%w: %s: fortran_order is True, want C order (save np.ascontiguousarray(a))", ErrUnsupported, name)
	}
	off := start + hlen
	avail := size - off
	n, want, err := dataSize(h.shape, h.dtype.Size())
	if err != nil {
		return nil, bad("shape %s of %v: %v", pyShape(h.shape), h.dtype, err)
	}
	if want != avail {
		if want > avail {
			return nil, bad("truncated: %d data bytes, want %d for shape %s of %v", avail, want, pyShape(h.shape), h.dtype)
		}
		return nil, bad("%d bytes after the data, want none (shape %s of %v is %d bytes)", avail-want, pyShape(h.shape), h.dtype, want)
	}
	t := &Tensor{Shape: h.shape, Data: make([]float32, n)}
	if err := readValues(r, off, t.Data, h.dtype, h.order); err != nil {
		return nil, bad("reading the data: %v", err)
	}
	return t, nil
}

// dataSize is the product of shape and the byte size of that many elements
// of itemsize bytes, or an error if the byte size exceeds 2^63-1.
// Dimensions are already non-negative.
func dataSize(shape []int, itemsize int) (n int, nbytes int64, err error) {
	for _, d := range shape {
		if d == 0 {
			return 0, 0, nil
		}
	}
	p := int64(1)
	limit := int64(math.MaxInt64) / int64(itemsize)
	for _, d := range shape {
		if int64(d) > limit/p {
			return 0, 0, fmt.Errorf("more than 2^63 bytes")
		}
		p *= int64(d)
	}
	if p > int64(math.MaxInt) { // only on 32-bit platforms
		return 0, 0, fmt.Errorf("%d elements, more than this platform can index", p)
	}
	return int(p), p * int64(itemsize), nil
}

// readValues reads len(dst) elements of dt starting at off and converts them.
func readValues(r io.ReaderAt, off int64, dst []float32, dt DType, order binary.ByteOrder) error {
	isz := dt.Size()
	per := readChunk / isz
	buf := make([]byte, min(len(dst), per)*isz)
	for i := 0; i < len(dst); i += per {
		m := min(per, len(dst)-i)
		b := buf[:m*isz]
		if err := readFull(r, b, off+int64(i*isz)); err != nil {
			return err
		}
		if err := DecodeValues(dst[i:i+m], b, dt, order); err != nil {
			return err
		}
	}
	return nil
}

// readFull reads exactly len(b) bytes at off.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %d of %d bytes at offset %d: %w", n, len(b), off, err)
}

func openRegular(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%w: %s: not a regular file (%v)", ErrUnsupported, path, st.Mode().Type())
	}
	return f, st.Size(), nil
}

// unsupported marks a parse error as ErrUnsupported rather than ErrFormat.
type unsupported string

func (u unsupported) Error() string { return string(u) }

// errKind is the sentinel to report a parse error under.
func errKind(err error) error {
	var u unsupported
	if errors.As(err, &u) {
		return ErrUnsupported
	}
	return ErrFormat
}

// quoteHeader quotes a header for an error message, trimmed to a useful length.
func quoteHeader(h []byte) string {
	h = bytes.TrimRight(h, " \n")
	if len(h) > 120 {
		return strconv.Quote(string(h[:120])) + "..."
	}
	return strconv.Quote(string(h))
}

// pyShape formats a shape as Python would: (), (3,), (2, 3).
func pyShape(shape []int) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, d := range shape {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(d))
	}
	if len(shape) == 1 {
		b.WriteByte(',')
	}
	b.WriteByte(')')
	return b.String()
}

type npyHeader struct {
	dtype   DType
	order   binary.ByteOrder
	fortran bool
	shape   []int
}

// npyDescrs maps the descr strings numpy writes for the float types we read.
var npyDescrs = map[string]struct {
	dt    DType
	order binary.ByteOrder
}{
	"<f2": {Float16, binary.LittleEndian}, ">f2": {Float16, binary.BigEndian},
	"<f4": {Float32, binary.LittleEndian}, ">f4": {Float32, binary.BigEndian},
	"<f8": {Float64, binary.LittleEndian}, ">f8": {Float64, binary.BigEndian},
}

// parseNPYHeader parses the header dict literal strictly: exactly the three
// keys, once each, then only whitespace.
func parseNPYHeader(hdr []byte) (*npyHeader, error) {
	p := &pyParser{s: hdr}
	h := &npyHeader{}
	seen := map[string]bool{}
	if err := p.expect('{'); err != nil {
		return nil, err
	}
	for {
		p.space()
		if p.peek() == '}' {
			p.i++
			break
		}
		at := p.i
		key, err := p.str()
		if err != nil {
			return nil, fmt.Errorf("%v (want a key 'descr', 'fortran_order' or 'shape')", err)
		}
		if seen[key] {
			return nil, fmt.Errorf("byte %d: key %q appears twice", at, key)
		}
		seen[key] = true
		if err := p.expect(':'); err != nil {
			return nil, err
		}
		switch key {
		case "descr":
			p.space()
			if c := p.peek(); c == '[' || c == '(' {
				return nil, unsupported("structured dtype (descr is a list), want float16, float32 or float64")
			}
			descr, err := p.str()
			if err != nil {
				return nil, fmt.Errorf("descr: %v", err)
			}
			d, ok := npyDescrs[descr]
			if !ok {
				return nil, unsupported(fmt.Sprintf("dtype %q, want float16, float32 or float64 ('<f2', '<f4', '<f8', or '>' for big-endian)", descr))
			}
			h.dtype, h.order = d.dt, d.order
		case "fortran_order":
			if h.fortran, err = p.boolean(); err != nil {
				return nil, fmt.Errorf("fortran_order: %v", err)
			}
		case "shape":
			if h.shape, err = p.shape(); err != nil {
				return nil, fmt.Errorf("shape: %v", err)
			}
		default:
			return nil, fmt.Errorf("byte %d: unknown key %q, want only 'descr', 'fortran_order' and 'shape'", at, key)
		}
		p.space()
		switch p.peek() {
		case ',':
			p.i++
		case '}':
		default:
			return nil, p.unexpected("',' or '}'")
		}
	}
	p.space()
	if p.i != len(p.s) {
		return nil, p.unexpected("only spaces and a newline after the closing '}'")
	}
	for _, k := range []string{"descr", "fortran_order", "shape"} {
		if !seen[k] {
			return nil, fmt.Errorf("missing key %q", k)
		}
	}
	return h, nil
}

// pyParser scans the small subset of Python literals a .npy header uses.
type pyParser struct {
	s []byte
	i int
}

func (p *pyParser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *pyParser) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *pyParser) unexpected(want string) error {
	if p.i >= len(p.s) {
		return fmt.Errorf("header ends at byte %d, want %s", p.i, want)
	}
	return fmt.Errorf("byte %d: found %q, want %s", p.i, p.s[p.i], want)
}

func (p *pyParser) expect(c byte) error {
	p.space()
	if p.peek() != c {
		return p.unexpected(strconv.QuoteRune(rune(c)))
	}
	p.i++
	return nil
}

// str parses a quoted string without escapes.
func (p *pyParser) str() (string, error) {
	p.space()
	q := p.peek()
	if q != '\'' && q != '"' {
		return "", p.unexpected("a quoted string")
	}
	start := p.i + 1
	for j := start; j < len(p.s); j++ {
		switch p.s[j] {
		case q:
			p.i = j + 1
			return string(p.s[start:j]), nil
		case '\\', '\n':
			p.i = j
			return "", p.unexpected("a plain string (no escapes or newlines)")
		}
	}
	p.i = len(p.s)
	return "", p.unexpected("the closing quote")
}

func (p *pyParser) word() string {
	start := p.i
	for p.i < len(p.s) && (p.s[p.i] >= 'a' && p.s[p.i] <= 'z' || p.s[p.i] >= 'A' && p.s[p.i] <= 'Z') {
		p.i++
	}
	return string(p.s[start:p.i])
}

func (p *pyParser) boolean() (bool, error) {
	p.space()
	at := p.i
	switch w := p.word(); w {
	case "True":
		return true, nil
	case "False":
		return false, nil
	}
	p.i = at
	return false, p.unexpected("True or False")
}

// shape parses a tuple of non-negative ints: (), (3,), (2, 3), (2, 3,).
// Python 2 long suffixes (3L) are accepted, as numpy does.
func (p *pyParser) shape() ([]int, error) {
	if err := p.expect('('); err != nil {
		return nil, err
	}
	shape := []int{}
	comma := false
	for {
		p.space()
		if p.peek() == ')' {
			p.i++
			if len(shape) == 1 && !comma {
				return nil, fmt.Errorf("(%d) is not a tuple, want (%d,)", shape[0], shape[0])
			}
			return shape, nil
		}
		if len(shape) == MaxRank {
			return nil, fmt.Errorf("more than %d dimensions", MaxRank)
		}
		d, err := p.dim(len(shape))
		if err != nil {
			return nil, err
		}
		shape = append(shape, d)
		p.space()
		switch comma = p.peek() == ','; {
		case comma:
			p.i++
		case p.peek() == ')':
		default:
			return nil, p.unexpected("',' or ')'")
		}
	}
}

func (p *pyParser) dim(i int) (int, error) {
	p.space()
	if p.peek() == '-' {
		return 0, fmt.Errorf("dimension %d is negative, want >= 0", i)
	}
	start := p.i
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		p.i++
	}
	if p.i == start {
		return 0, p.unexpected(fmt.Sprintf("dimension %d as a non-negative integer", i))
	}
	digits := string(p.s[start:p.i])
	if len(digits) > 1 && digits[0] == '0' { // not a Python 3 literal
		return 0, fmt.Errorf("dimension %d is %s, want a decimal integer without leading zeros", i, digits)
	}
	if p.peek() == 'L' || p.peek() == 'l' {
		p.i++
	}
	d, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("dimension %d is %s, want at most %d", i, digits, int64(math.MaxInt64))
	}
	return int(d), nil
}

// EncodeNPY writes t as a float32 little-endian C-order .npy file, with the
// same bytes numpy's np.save writes for it (format version 1.0, header
// padded with spaces to a multiple of 64 bytes).
func EncodeNPY(w io.Writer, t *Tensor) error {
	if err := t.Validate(); err != nil {
		return err
	}
	b := appendNPYHeader(nil, t.Shape, "<f4", false)
	if _, err := w.Write(b); err != nil {
		return err
	}
	buf := make([]byte, 0, min(len(t.Data)*4, readChunk))
	for i := 0; i < len(t.Data); i += readChunk / 4 {
		buf = AppendValues(buf[:0], t.Data[i:min(i+readChunk/4, len(t.Data))], Float32, binary.LittleEndian)
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// WriteNPY writes t to path as a float32 .npy file (see EncodeNPY). The file
// is written to a temporary file in the same directory and renamed into
// place, so readers never see a partial file.
func WriteNPY(path string, t *Tensor) error {
	if err := t.Validate(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return writeFileAtomic(path, func(w io.Writer) error { return EncodeNPY(w, t) })
}

// appendNPYHeader appends the preamble and header numpy writes
// (numpy/lib/format.py _write_array_header): the sorted keys, spare space
// for the growth axis to be rewritten in place, then padding so the data
// starts at a multiple of 64 bytes.
func appendNPYHeader(dst []byte, shape []int, descr string, fortran bool) []byte {
	var h strings.Builder
	fmt.Fprintf(&h, "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }", descr, pyBool(fortran), pyShape(shape))
	if len(shape) > 0 {
		const growthAxisMaxDigits = 21
		axis := shape[0]
		if fortran {
			axis = shape[len(shape)-1]
		}
		h.WriteString(strings.Repeat(" ", max(0, growthAxisMaxDigits-len(strconv.Itoa(axis)))))
	}
	hlen := h.Len() + 1
	pad := 64 - (len(npyMagic)+2+2+hlen)%64
	dst = append(dst, npyMagic...)
	dst = append(dst, 1, 0)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(hlen+pad))
	dst = append(dst, h.String()...)
	dst = append(dst, strings.Repeat(" ", pad)...)
	return append(dst, '\n')
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}
