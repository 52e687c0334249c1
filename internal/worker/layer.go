package worker

import "fmt"

// layer is the torch-style multi-head attention layer (y = x·Wᵀ + b); a
// local copy until ringattn.Layer is in the tree, then an alias of it.
type layer struct {
	DModel, Heads, D int
	Wq, Wk, Wv, Wo   []float32
	Bq, Bk, Bv, Bo   []float32
}

func (l *layer) Validate() error {
	hd := l.Heads * l.D
	if len(l.Wq) != hd*l.DModel || len(l.Wk) != hd*l.DModel || len(l.Wv) != hd*l.DModel || len(l.Wo) != hd*l.DModel {
		return fmt.Errorf("mha: weight sizes")
	}
	return nil
}

func linear(x []float32, rows, in int, w, b []float32, out int) []float32 {
	y := make([]float32, rows*out)
	for r := 0; r < rows; r++ {
		for o := 0; o < out; o++ {
			var s float32
			if b != nil {
				s = b[o]
			}
			for t := 0; t < in; t++ {
				s += x[r*in+t] * w[o*in+t]
			}
			y[r*out+o] = s
		}
	}
	return y
}

func (l *layer) Project(x []float32, b, n int) (q, k, v []float32, err error) {
	hd := l.Heads * l.D
	split := func(w, bias []float32) []float32 {
		y := linear(x, b*n, l.DModel, w, bias, hd)
		out := make([]float32, len(y))
		for bi := 0; bi < b; bi++ {
			for r := 0; r < n; r++ {
				for h := 0; h < l.Heads; h++ {
					copy(out[((bi*l.Heads+h)*n+r)*l.D:][:l.D], y[(bi*n+r)*hd+h*l.D:][:l.D])
				}
			}
		}
		return out
	}
	return split(l.Wq, l.Bq), split(l.Wk, l.Bk), split(l.Wv, l.Bv), nil
}

func (l *layer) Output(o []float32, b, n int) ([]float32, error) {
	hd := l.Heads * l.D
	cat := make([]float32, b*n*hd)
	for bi := 0; bi < b; bi++ {
		for h := 0; h < l.Heads; h++ {
			for r := 0; r < n; r++ {
				copy(cat[(bi*n+r)*hd+h*l.D:][:l.D], o[((bi*l.Heads+h)*n+r)*l.D:][:l.D])
			}
		}
	}
	return linear(cat, b*n, hd, l.Wo, l.Bo, l.DModel), nil
}
