package kernels

import (
	"fmt"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
)

// BenchmarkKernelPrim times the tile primitives of the default
// implementation on attention-shaped tiles.
func BenchmarkKernelPrim(b *testing.B) {
	im := active
	r := testrand.New(1)
	for _, d := range []int{64, 128} {
		br, bc := im.br, im.bc
		k := r.Slice(bc*d, testrand.Normal)
		qt := r.Slice(d*br, testrand.Normal)
		st := make([]float32, bc*br)
		v := r.Slice(bc*d, testrand.Normal)
		o := make([]float32, br*d)
		alpha := make([]float32, br)
		for i := range alpha {
			alpha[i] = 1
		}
		b.Run(fmt.Sprintf("NN_D%d", d), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				im.gemmNN(bc, br, d, k, d, qt, br, st, br, false, nil)
			}
			b.ReportMetric(2*float64(bc*br*d)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		b.Run(fmt.Sprintf("TN_D%d", d), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				im.gemmTN(br, d, bc, st, br, v, d, o, d, alpha, nil)
			}
			b.ReportMetric(2*float64(bc*br*d)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		b.Run(fmt.Sprintf("Softmax_D%d", d), func(b *testing.B) {
			m := make([]float32, br)
			l := make([]float32, br)
			for i := 0; i < b.N; i++ {
				for j := range st {
					st[j] = 0.5
				}
				for j := range m {
					m[j] = -1
				}
				im.softmaxCols(st, br, bc, m, l, alpha)
			}
			b.ReportMetric(float64(bc*br)*float64(b.N)/b.Elapsed().Seconds()/1e9, "Gelem/s")
		})
	}
}
