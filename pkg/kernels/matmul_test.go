package kernels_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// TestKernelMatMulT checks C (+)= A·Bᵀ against a float64 loop for every
// implementation, on ragged shapes, padded leading dimensions and both
// accumulate modes, with guards around C.
func TestKernelMatMulT(t *testing.T) {
	shapes := [][3]int{{1, 1, 1}, {1, 1, 300}, {7, 3, 5}, {6, 64, 17}, {13, 65, 129}, {100, 37, 64},
		{97, 200, 257}, {300, 130, 70}, {5, 300, 1}, {64, 64, 600}, {3, 1000, 11}}
	forEachImpl(t, func(t *testing.T) {
		r := testrand.New(11)
		for _, s := range shapes {
			m, n, k := s[0], s[1], s[2]
			for _, acc := range []bool{false, true} {
				lda, ldb, ldc := k+1, k+3, n+2
				a := r.Slice(m*lda, testrand.Normal)
				b := r.Slice(n*ldb, testrand.Normal)
				all, c := testrand.Guarded(m*ldc, 16)
				copy(c, r.Slice(m*ldc, testrand.Normal))
				c0 := append([]float32(nil), c...)
				if err := kernels.MatMulT(m, n, k, a, lda, b, ldb, c, ldc, acc); err != nil {
					t.Fatal(err)
				}
				if !testrand.Intact(all, 16) {
					t.Fatalf("%v acc=%v: wrote outside C", s, acc)
				}
				for i := 0; i < m; i++ {
					for j := 0; j < ldc; j++ {
						got := float64(c[i*ldc+j])
						if j >= n {
							if got != float64(c0[i*ldc+j]) {
								t.Fatalf("%v: wrote c[%d][%d] beyond n", s, i, j)
							}
							continue
						}
						var want, mag float64
						if acc {
							want, mag = float64(c0[i*ldc+j]), math.Abs(float64(c0[i*ldc+j]))
						}
						for p := 0; p < k; p++ {
							x := float64(a[i*lda+p]) * float64(b[j*ldb+p])
							want += x
							mag += math.Abs(x)
						}
						if math.Abs(got-want) > 2e-6*mag {
							t.Fatalf("%v acc=%v: c[%d][%d] = %g, want %g", s, acc, i, j, got, want)
						}
					}
				}
			}
		}
	})
}

func TestKernelMatMulTInvalid(t *testing.T) {
	a, b, c := make([]float32, 12), make([]float32, 12), make([]float32, 9)
	cases := []struct {
		m, n, k, lda, ldb, ldc int
		a, b, c                []float32
		want                   string
	}{
		{-1, 3, 4, 4, 4, 3, a, b, c, "m = -1"},
		{3, -1, 4, 4, 4, 3, a, b, c, "n = -1"},
		{3, 3, -1, 4, 4, 3, a, b, c, "k = -1"},
		{3, 3, 4, 3, 4, 3, a, b, c, "lda = 3"},
		{3, 3, 4, 4, 2, 3, a, b, c, "ldb = 2"},
		{3, 3, 4, 4, 4, 2, a, b, c, "ldc = 2"},
		{3, 3, 4, 4, 4, 3, a[:11], b, c, "a has 11"},
		{3, 3, 4, 4, 4, 3, a, b[:5], c, "b has 5"},
		{3, 3, 4, 4, 4, 3, a, b, c[:8], "c has 8"},
	}
	for _, tc := range cases {
		err := kernels.MatMulT(tc.m, tc.n, tc.k, tc.a, tc.lda, tc.b, tc.ldb, tc.c, tc.ldc, false)
		if !errors.Is(err, kernels.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an ErrInvalid naming %q", tc.want, err, tc.want)
		}
	}
	// Empty products are fine; k = 0 clears C unless accumulating.
	c2 := []float32{1, 2, 3, 4}
	if err := kernels.MatMulT(2, 2, 0, nil, 1, nil, 1, c2, 2, true); err != nil || c2[3] != 4 {
		t.Fatalf("k=0 acc: %v %v", err, c2)
	}
	if err := kernels.MatMulT(2, 2, 0, nil, 1, nil, 1, c2, 2, false); err != nil || c2[0] != 0 || c2[3] != 0 {
		t.Fatalf("k=0: %v %v", err, c2)
	}
	if err := kernels.MatMulT(0, 5, 5, nil, 5, nil, 5, nil, 5, false); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkKernelMatMulT times projection-shaped products (tokens × d_model
// by d_model × d_model) on all cores.
func BenchmarkKernelMatMulT(b *testing.B) {
	for _, s := range [][3]int{{2048, 1024, 1024}} {
		m, n, k := s[0], s[1], s[2]
		b.Run(fmt.Sprintf("%dx%dx%d", m, n, k), func(b *testing.B) {
			r := testrand.New(1)
			a, w, c := r.Slice(m*k, testrand.Normal), r.Slice(n*k, testrand.Normal), make([]float32, m*n)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := kernels.MatMulT(m, n, k, a, k, w, k, c, n, false); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(2*float64(m*n*k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
