package tensor

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Sentinel errors. Every error of this package wraps exactly one of them, so
// callers can classify with errors.Is and still print a message that names
// the tensor or file, the field and the expected value.
var (
	// ErrShape: a shape or index argument does not fit the tensor.
	ErrShape = errors.New("tensor: bad shape")
	// ErrNotFinite: a tensor holds NaN or ±Inf where finite values are required.
	ErrNotFinite = errors.New("tensor: non-finite value")
	// ErrFormat: a file or buffer is not a well-formed .npy or .safetensors
	// file (truncated, hostile or garbage header, sizes that do not add up).
	ErrFormat = errors.New("tensor: malformed file")
	// ErrUnsupported: a well-formed file uses a feature this package does not
	// read (an integer dtype, Fortran order, an unknown file extension).
	ErrUnsupported = errors.New("tensor: unsupported")
	// ErrNotFound: a named tensor is not in the file.
	ErrNotFound = errors.New("tensor: not found")
)

// MaxRank is the largest number of dimensions a tensor may have (numpy's limit).
const MaxRank = 64

// Tensor is a dense float32 array in row-major (C) order: the element at
// index (i0, i1, ..., ik) is Data[((i0·Shape[1] + i1)·Shape[2] + ...) + ik].
// A rank-0 tensor (Shape empty) holds one value.
//
// The fields are exported for direct use by kernels; a Tensor built by a
// literal should be checked with Validate. Methods never modify Shape.
type Tensor struct {
	Shape []int
	Data  []float32
}

// New wraps data (not copied) as a tensor of the given shape. It panics if a
// dimension is negative or len(data) is not the product of the dimensions:
// that is a programming error, like an out-of-range index. Use FromData or
// Zeros for data and shapes that come from input.
func New(data []float32, shape ...int) *Tensor {
	t := &Tensor{Shape: cloneShape(shape), Data: data}
	if err := t.Validate(); err != nil {
		panic(err)
	}
	return t
}

// FromData wraps data (not copied) as a tensor of the given shape, or
// returns an error wrapping ErrShape naming the mismatch: New for data and
// shapes that come from input (files, the network).
func FromData(data []float32, shape ...int) (*Tensor, error) {
	t := &Tensor{Shape: cloneShape(shape), Data: data}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// Zeros returns a zero-filled tensor of the given shape, or an error naming
// the bad dimension.
func Zeros(shape ...int) (*Tensor, error) {
	n, err := numElements(shape)
	if err != nil {
		return nil, err
	}
	return &Tensor{Shape: cloneShape(shape), Data: make([]float32, n)}, nil
}

// numElements is the product of shape, checked for negative dimensions, rank
// and overflow (the byte size of a float64 copy must fit an int).
func numElements(shape []int) (int, error) {
	if len(shape) > MaxRank {
		return 0, fmt.Errorf("%w: rank %d, want at most %d", ErrShape, len(shape), MaxRank)
	}
	empty := false
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: dimension %d of %s is %d, want >= 0", ErrShape, i, FormatShape(shape), d)
		}
		empty = empty || d == 0
	}
	if empty {
		// A zero dimension makes the tensor empty whatever the others
		// are, as the file readers count it: the partial products of the
		// others must not be taken for an overflow.
		return 0, nil
	}
	n := 1
	for _, d := range shape {
		if n > math.MaxInt/8/d {
			return 0, fmt.Errorf("%w: %s has more than %d elements", ErrShape, FormatShape(shape), math.MaxInt/8)
		}
		n *= d
	}
	return n, nil
}

// Validate checks that every dimension is non-negative, the rank is at most
// MaxRank and len(Data) equals the product of the dimensions.
func (t *Tensor) Validate() error {
	if t == nil {
		return fmt.Errorf("%w: nil tensor", ErrShape)
	}
	n, err := numElements(t.Shape)
	if err != nil {
		return err
	}
	if len(t.Data) != n {
		return fmt.Errorf("%w: %d values for shape %s, want %d", ErrShape, len(t.Data), FormatShape(t.Shape), n)
	}
	return nil
}

// Len is the number of elements, the product of the dimensions.
func (t *Tensor) Len() int { return len(t.Data) }

// Rank is the number of dimensions.
func (t *Tensor) Rank() int { return len(t.Shape) }

// Clone returns a deep copy.
func (t *Tensor) Clone() *Tensor {
	return &Tensor{Shape: cloneShape(t.Shape), Data: append([]float32(nil), t.Data...)}
}

// Reshape returns a tensor sharing t's data with a new shape of the same
// number of elements.
func (t *Tensor) Reshape(shape ...int) (*Tensor, error) {
	n, err := numElements(shape)
	if err != nil {
		return nil, err
	}
	if n != len(t.Data) {
		return nil, fmt.Errorf("%w: cannot reshape %s (%d elements) to %s (%d elements)",
			ErrShape, FormatShape(t.Shape), len(t.Data), FormatShape(shape), n)
	}
	return &Tensor{Shape: cloneShape(shape), Data: t.Data}, nil
}

// String describes the tensor by its shape, e.g. "tensor[2 8 128 64]".
func (t *Tensor) String() string { return "tensor" + FormatShape(t.Shape) }

// FormatShape formats a shape as "[2 8 128 64]".
func FormatShape(shape []int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range shape {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(d))
	}
	b.WriteByte(']')
	return b.String()
}

// Index converts a flat element offset into a multi-index.
func (t *Tensor) Index(flat int) []int {
	idx := make([]int, len(t.Shape))
	for i := len(t.Shape) - 1; i >= 0; i-- {
		if d := t.Shape[i]; d > 0 {
			idx[i] = flat % d
			flat /= d
		}
	}
	return idx
}

// CheckFinite returns an error wrapping ErrNotFinite that names the tensor,
// the first NaN or ±Inf element and its index, or nil if every value is finite.
func (t *Tensor) CheckFinite(name string) error {
	for i, x := range t.Data {
		if f := float64(x); math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%w: %s%s = %v at element %d (index %s), want finite values",
				ErrNotFinite, name, FormatShape(t.Shape), x, i, FormatShape(t.Index(i)))
		}
	}
	return nil
}

// As4D returns the shape as [B, H, N, D]: rank 2 [N, D] is [1, 1, N, D],
// rank 3 [H, N, D] is [1, H, N, D], rank 4 is itself (DESIGN §2). Because the
// data is row-major, t.Data is also the [B, H, N, D] data.
func (t *Tensor) As4D() ([]int, error) {
	switch len(t.Shape) {
	case 2:
		return []int{1, 1, t.Shape[0], t.Shape[1]}, nil
	case 3:
		return []int{1, t.Shape[0], t.Shape[1], t.Shape[2]}, nil
	case 4:
		return cloneShape(t.Shape), nil
	}
	return nil, fmt.Errorf("%w: rank %d shape %s, want rank 2 [N D], 3 [H N D] or 4 [B H N D]",
		ErrShape, len(t.Shape), FormatShape(t.Shape))
}

// To4D returns a [B, H, N, D] view of t sharing its data (see As4D).
func (t *Tensor) To4D() (*Tensor, error) {
	s, err := t.As4D()
	if err != nil {
		return nil, err
	}
	return &Tensor{Shape: s, Data: t.Data}, nil
}

// dims4 checks that t is rank 4 with consistent data.
func (t *Tensor) dims4(what string) (b, h, n, d int, err error) {
	if len(t.Shape) != 4 {
		return 0, 0, 0, 0, fmt.Errorf("%w: %s has shape %s, want rank 4 [B H N D]", ErrShape, what, FormatShape(t.Shape))
	}
	if err := t.Validate(); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("%s: %w", what, err)
	}
	return t.Shape[0], t.Shape[1], t.Shape[2], t.Shape[3], nil
}

// Rows copies rows [start, end) of the sequence axis of a [B, H, N, D] tensor,
// for every (b, h), into a new [B, H, end-start, D] tensor. It is the block
// slice t[:, :, start:end, :].
func (t *Tensor) Rows(start, end int) (*Tensor, error) {
	b, h, n, d, err := t.dims4("Rows source")
	if err != nil {
		return nil, err
	}
	if start < 0 || end < start || end > n {
		return nil, fmt.Errorf("%w: Rows(%d, %d) of %s, want 0 <= start <= end <= N = %d",
			ErrShape, start, end, FormatShape(t.Shape), n)
	}
	rows := end - start
	out := &Tensor{Shape: []int{b, h, rows, d}, Data: make([]float32, b*h*rows*d)}
	for bh := 0; bh < b*h; bh++ {
		copy(out.Data[bh*rows*d:(bh+1)*rows*d], t.Data[(bh*n+start)*d:(bh*n+end)*d])
	}
	return out, nil
}

// PutRows is the inverse of Rows: it copies the [B, H, R, D] tensor src into
// rows [start, start+R) of the [B, H, N, D] tensor t, for every (b, h).
func (t *Tensor) PutRows(start int, src *Tensor) error {
	b, h, n, d, err := t.dims4("PutRows destination")
	if err != nil {
		return err
	}
	sb, sh, rows, sd, err := src.dims4("PutRows source")
	if err != nil {
		return err
	}
	if sb != b || sh != h || sd != d {
		return fmt.Errorf("%w: PutRows source %s into %s, want [%d %d R %d]",
			ErrShape, FormatShape(src.Shape), FormatShape(t.Shape), b, h, d)
	}
	if start < 0 || start > n-rows {
		return fmt.Errorf("%w: PutRows at row %d of %d rows into N = %d, want 0 <= start <= %d",
			ErrShape, start, rows, n, n-rows)
	}
	for bh := 0; bh < b*h; bh++ {
		copy(t.Data[(bh*n+start)*d:(bh*n+start+rows)*d], src.Data[bh*rows*d:(bh+1)*rows*d])
	}
	return nil
}

// cloneShape copies a shape; a rank-0 shape stays non-nil so that equal
// shapes compare equal with reflect.DeepEqual.
func cloneShape(s []int) []int { return append(make([]int, 0, len(s)), s...) }
