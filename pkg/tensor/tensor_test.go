package tensor

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// wantErr fails unless err wraps sentinel and its text contains every part.
func wantErr(t *testing.T, err, sentinel error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one wrapping %v containing %q", sentinel, parts)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("error %q does not wrap %v", err, sentinel)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func TestTensorNewAndAccessors(t *testing.T) {
	x := New([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	if x.Len() != 6 || x.Rank() != 2 || !reflect.DeepEqual(x.Shape, []int{2, 3}) {
		t.Fatalf("got len %d rank %d shape %v", x.Len(), x.Rank(), x.Shape)
	}
	if got := x.String(); got != "tensor[2 3]" {
		t.Errorf("String() = %q", got)
	}
	if got := x.Index(5); !reflect.DeepEqual(got, []int{1, 2}) {
		t.Errorf("Index(5) = %v, want [1 2]", got)
	}
	s := New([]float32{7})
	if s.Rank() != 0 || s.Len() != 1 {
		t.Errorf("scalar: rank %d len %d", s.Rank(), s.Len())
	}
	c := x.Clone()
	c.Data[0] = 100
	c.Shape[0] = 9
	if x.Data[0] != 1 || x.Shape[0] != 2 {
		t.Error("Clone shares memory with the original")
	}
	r, err := x.Reshape(3, 2)
	if err != nil {
		t.Fatal(err)
	}
	r.Data[1] = -1
	if x.Data[1] != -1 {
		t.Error("Reshape does not share data")
	}
	src := []float32{1, 2}
	w, err := FromData(src, 1, 2)
	if err != nil || !reflect.DeepEqual(w.Shape, []int{1, 2}) {
		t.Fatalf("FromData = %v, %v", w, err)
	}
	if src[0] = 9; w.Data[0] != 9 {
		t.Error("FromData copied its data, want it wrapped")
	}
	z, err := Zeros(2, 0, 3)
	if err != nil || z.Len() != 0 || z.Rank() != 3 {
		t.Errorf("Zeros(2,0,3) = %v, %v", z, err)
	}
}

func TestTensorNewPanicsOnMismatch(t *testing.T) {
	defer func() {
		r := recover()
		err, ok := r.(error)
		if !ok || !errors.Is(err, ErrShape) || !strings.Contains(err.Error(), "5 values for shape [2 3], want 6") {
			t.Fatalf("recovered %v, want an ErrShape naming the counts", r)
		}
	}()
	New(make([]float32, 5), 2, 3)
}

func TestTensorShapeErrors(t *testing.T) {
	huge := math.MaxInt / 4
	for _, tc := range []struct {
		name  string
		err   error
		parts []string
	}{
		{"negative", func() error { _, err := Zeros(2, -1); return err }(), []string{"dimension 1 of [2 -1] is -1, want >= 0"}},
		{"overflow", func() error { _, err := Zeros(huge, huge); return err }(), []string{"more than"}},
		{"rank", func() error { _, err := Zeros(make([]int, MaxRank+1)...); return err }(), []string{"rank 65, want at most 64"}},
		{"from data", func() error { _, err := FromData(make([]float32, 5), 2, 3); return err }(), []string{"5 values for shape [2 3], want 6"}},
		{"from data negative", func() error { _, err := FromData(nil, 0, -2); return err }(), []string{"dimension 1 of [0 -2] is -2, want >= 0"}},
		{"validate", (&Tensor{Shape: []int{4}, Data: make([]float32, 3)}).Validate(), []string{"3 values for shape [4], want 4"}},
		{"nil", (*Tensor)(nil).Validate(), []string{"nil tensor"}},
		{"reshape", func() error { _, err := New(make([]float32, 6), 6).Reshape(4, 2); return err }(),
			[]string{"cannot reshape [6] (6 elements) to [4 2] (8 elements)"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.err, ErrShape, tc.parts...) })
	}
}

func TestTensorCheckFinite(t *testing.T) {
	x := New(make([]float32, 24), 2, 3, 4)
	if err := x.CheckFinite("q"); err != nil {
		t.Fatalf("zeros: %v", err)
	}
	for _, tc := range []struct {
		at    int
		v     float32
		parts []string
	}{
		{0, float32(math.NaN()), []string{"q[2 3 4] = NaN at element 0 (index [0 0 0])"}},
		{17, float32(math.Inf(1)), []string{"= +Inf at element 17 (index [1 1 1])", "want finite"}},
		{23, float32(math.Inf(-1)), []string{"= -Inf at element 23 (index [1 2 3])"}},
	} {
		y := x.Clone()
		y.Data[tc.at] = tc.v
		y.Data[23] = tc.v // a later bad value must not be the one reported
		wantErr(t, y.CheckFinite("q"), ErrNotFinite, tc.parts...)
	}
}

func TestTensorAs4D(t *testing.T) {
	for _, tc := range []struct {
		shape []int
		want  []int
	}{
		{[]int{5, 3}, []int{1, 1, 5, 3}},
		{[]int{2, 5, 3}, []int{1, 2, 5, 3}},
		{[]int{4, 2, 5, 3}, []int{4, 2, 5, 3}},
		{[]int{0, 3}, []int{1, 1, 0, 3}},
	} {
		x, err := Zeros(tc.shape...)
		if err != nil {
			t.Fatal(err)
		}
		got, err := x.As4D()
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("As4D(%v) = %v, %v, want %v", tc.shape, got, err, tc.want)
		}
		v, err := x.To4D()
		if err != nil || !reflect.DeepEqual(v.Shape, tc.want) || len(v.Data) != len(x.Data) {
			t.Errorf("To4D(%v) = %v, %v", tc.shape, v, err)
		}
		got[0] = 99 // As4D must return a fresh slice
		if x.Shape[0] == 99 {
			t.Errorf("As4D(%v) aliases Shape", tc.shape)
		}
	}
	for _, shape := range [][]int{{}, {7}, {1, 2, 3, 4, 5}} {
		x, _ := Zeros(shape...)
		_, err := x.As4D()
		wantErr(t, err, ErrShape, "rank", "want rank 2 [N D], 3 [H N D] or 4 [B H N D]")
	}
}

// TestTensorRowsPutRows checks Rows against the index definition
// t[:, :, start:end, :] and that PutRows of every block rebuilds the tensor.
func TestTensorRowsPutRows(t *testing.T) {
	r := testrand.New(1)
	for _, sh := range [][4]int{{1, 1, 1, 1}, {2, 3, 7, 5}, {3, 2, 64, 8}, {1, 4, 65, 3}} {
		b, h, n, d := sh[0], sh[1], sh[2], sh[3]
		x := New(r.Slice(b*h*n*d, testrand.Normal), b, h, n, d)
		rebuilt, _ := Zeros(b, h, n, d)
		for _, block := range []int{1, 3, 64, n} {
			for start := 0; start < n; start += block {
				end := min(start+block, n)
				got, err := x.Rows(start, end)
				if err != nil {
					t.Fatal(err)
				}
				if want := []int{b, h, end - start, d}; !reflect.DeepEqual(got.Shape, want) {
					t.Fatalf("Rows(%d,%d) shape %v, want %v", start, end, got.Shape, want)
				}
				for bi := range b {
					for hi := range h {
						for i := start; i < end; i++ {
							for j := range d {
								w := x.Data[((bi*h+hi)*n+i)*d+j]
								if g := got.Data[((bi*h+hi)*(end-start)+i-start)*d+j]; g != w {
									t.Fatalf("%v Rows(%d,%d)[%d,%d,%d,%d] = %v, want %v", sh, start, end, bi, hi, i-start, j, g, w)
								}
							}
						}
					}
				}
				if err := rebuilt.PutRows(start, got); err != nil {
					t.Fatal(err)
				}
			}
			if !reflect.DeepEqual(rebuilt.Data, x.Data) {
				t.Fatalf("%v block %d: PutRows of every block does not rebuild the tensor", sh, block)
			}
			clear(rebuilt.Data)
		}
		empty, err := x.Rows(n, n)
		if err != nil || empty.Len() != 0 || empty.Shape[2] != 0 {
			t.Errorf("Rows(N, N) = %v, %v", empty, err)
		}
	}
}

func TestTensorRowsErrors(t *testing.T) {
	x, _ := Zeros(2, 3, 8, 4)
	y, _ := Zeros(2, 3, 2, 4)
	for _, tc := range []struct {
		name  string
		err   error
		parts []string
	}{
		{"rank", func() error { z, _ := Zeros(8, 4); _, err := z.Rows(0, 1); return err }(), []string{"Rows source has shape [8 4], want rank 4"}},
		{"negative start", func() error { _, err := x.Rows(-1, 2); return err }(), []string{"Rows(-1, 2)", "want 0 <= start <= end <= N = 8"}},
		{"end before start", func() error { _, err := x.Rows(3, 2); return err }(), []string{"Rows(3, 2)"}},
		{"end past N", func() error { _, err := x.Rows(0, 9); return err }(), []string{"Rows(0, 9)", "N = 8"}},
		{"inconsistent", func() error {
			_, err := (&Tensor{Shape: []int{1, 1, 2, 2}, Data: make([]float32, 3)}).Rows(0, 1)
			return err
		}(), []string{"Rows source", "3 values for shape [1 1 2 2], want 4"}},
		{"put past N", x.PutRows(7, y), []string{"PutRows at row 7 of 2 rows into N = 8, want 0 <= start <= 6"}},
		{"put negative", x.PutRows(-1, y), []string{"want 0 <= start <= 6"}},
		{"put heads", func() error { z, _ := Zeros(2, 2, 2, 4); return x.PutRows(0, z) }(), []string{"PutRows source [2 2 2 4] into [2 3 8 4], want [2 3 R 4]"}},
		{"put rank", func() error { z, _ := Zeros(2, 4); return x.PutRows(0, z) }(), []string{"PutRows source has shape [2 4], want rank 4"}},
	} {
		t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.err, ErrShape, tc.parts...) })
	}
}

// TestTensorEmptyHugeDims: a zero dimension makes a tensor empty whatever
// the other dimensions are, as the .safetensors reader counts it (the
// fuzzer found a header with [1e18, 1e16, 1e18, 0] that the reader
// accepted and Validate refused as an overflow); negative dimensions are
// still refused.
func TestTensorEmptyHugeDims(t *testing.T) {
	x, err := Zeros(1e18, 1e16, 1e18, 0)
	if err != nil || x.Len() != 0 || x.Validate() != nil {
		t.Fatalf("Zeros(1e18, 1e16, 1e18, 0) = %v, %v: want an empty valid tensor", x, err)
	}
	if _, err := Zeros(1e18, 1e16, 0, -1); err == nil {
		t.Fatal("a negative dimension after a zero one was accepted")
	}
	if _, err := Zeros(1e18, 1e16); err == nil {
		t.Fatal("1e34 elements accepted")
	}
}
