package main

import (
	"fmt"
	"io"

	"github.com/ringattn/ringattn/pkg/tensor"
)

// Layouts of attend's 4-D (and 3-D) tensors: bhnd is [B,H,N,D] ([H,N,D]),
// ringattn's own; bnhd is [B,N,H,D] ([N,H,D]), torch's common one
// (flash-attn, scaled_dot_product_attention inputs before .transpose(1,2)).
const (
	layoutBHND = "bhnd"
	layoutBNHD = "bnhd"
)

func checkLayout(l string) error {
	if l != layoutBHND && l != layoutBNHD {
		return usagef("--layout = %q, expected bhnd ([B,H,N,D], the default) or bnhd ([B,N,H,D], torch's)", l)
	}
	return nil
}

// swapHN returns t with its heads and sequence axes swapped: axes 1 and 2
// of a rank-4 tensor, 0 and 1 of a rank-3 one; rank 2 (one head) is
// returned as is. It converts bnhd to bhnd and back.
func swapHN(t *tensor.Tensor) *tensor.Tensor {
	var outer, a, b, d int
	switch len(t.Shape) {
	case 4:
		outer, a, b, d = t.Shape[0], t.Shape[1], t.Shape[2], t.Shape[3]
	case 3:
		outer, a, b, d = 1, t.Shape[0], t.Shape[1], t.Shape[2]
	default:
		return t
	}
	out := make([]float32, len(t.Data))
	for o := 0; o < outer; o++ {
		base := o * a * b * d
		for i := 0; i < a; i++ {
			for j := 0; j < b; j++ {
				copy(out[base+(j*a+i)*d:base+(j*a+i+1)*d], t.Data[base+(i*b+j)*d:base+(i*b+j+1)*d])
			}
		}
	}
	shape := append([]int(nil), t.Shape...)
	n := len(shape)
	shape[n-3], shape[n-2] = shape[n-2], shape[n-3]
	return tensor.New(out, shape...)
}

// layoutSuspicion judges whether tensor flag with heads h and sequence
// length n (as read in layout) is likely read in the wrong layout: warn
// when there are more heads than positions, certain when the heads axis is
// beyond any model's head count while the sequence is short.
func layoutSuspicion(h, n int) (suspect, certain bool) {
	if h <= n {
		return false, false
	}
	return true, h > 1024 || (h >= 256 && n <= 128)
}

// checkLayoutGuess warns, or fails with exit 2 when near-certain, about
// tensors that look read in the wrong layout. shapes are the 4-D
// [B,H,N,D] shapes after any conversion, by flag name. An explicitly given
// --layout turns the failure into a warning (the override).
func checkLayoutGuess(w io.Writer, layout string, explicit bool, shapes map[string][]int) error {
	for _, name := range []string{"q", "k"} {
		s, ok := shapes[name]
		if !ok || len(s) != 4 {
			continue
		}
		h, n := s[1], s[2]
		suspect, certain := layoutSuspicion(h, n)
		if !suspect {
			continue
		}
		other, as := layoutBNHD, "[B,H,N,D]"
		if layout == layoutBNHD {
			other, as = layoutBHND, "[B,N,H,D]"
		}
		msg := fmt.Sprintf("-%s read as %s has %d heads and a sequence of %d; if its layout is the other one, pass --layout %s",
			name, as, h, n, other)
		if certain && !explicit {
			return usagef("%s (or --layout %s to keep this reading)", msg, layout)
		}
		fmt.Fprintf(w, "warning: %s\n", msg)
	}
	return nil
}
