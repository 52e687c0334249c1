package kernels

import (
	"fmt"
	"sync"
)

// impl is one implementation of the tile primitives. The tile loop in
// State.Fold is shared; implementations differ in these primitives and in
// their preferred tile sizes.
type impl struct {
	name   string
	br, bc int // query rows and key columns per tile

	// gemm computes C[m×n] = A[m×k]·B[k×n] (acc false) or C += A·B (acc true),
	// all row-major with leading dimensions lda, ldb, ldc:
	//
	//	for i < m, j < n: c[i*ldc+j] = (acc ? c[i*ldc+j] : 0) + Σ_p a[i*lda+p]·b[p*ldb+j]
	gemm func(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool)

	// scaleMax multiplies x by scale in place and returns max(x) (-inf if empty).
	scaleMax func(x []float32, scale float32) float32

	// expSum replaces x[i] by exp(x[i]-shift) and returns the sum.
	expSum func(x []float32, shift float32) float32

	// scal multiplies x by a in place.
	scal func(x []float32, a float32)
}

var (
	implMu sync.Mutex
	impls  = map[string]*impl{}
	order  []string // registration order, best last
	active *impl
)

// register adds an implementation; the last one registered whose CPU check
// passed is the default.
func register(im *impl) {
	impls[im.name] = im
	order = append(order, im.name)
	active = im
}

// Impl returns the name of the implementation in use.
func Impl() string { return active.name }

// Impls lists the implementations available on this CPU, generic first.
func Impls() []string { return append([]string(nil), order...) }

// Use switches to the named implementation ("generic" always exists) and
// returns a function restoring the previous one. It is for tests and
// benchmarks; do not call it while kernels run.
func Use(name string) (restore func(), err error) {
	implMu.Lock()
	defer implMu.Unlock()
	im, ok := impls[name]
	if !ok {
		return nil, fmt.Errorf("%w: no kernel implementation %q (have %v)", ErrInvalid, name, order)
	}
	prev := active
	active = im
	return func() {
		implMu.Lock()
		active = prev
		implMu.Unlock()
	}, nil
}

func init() {
	register(genericImpl)
	registerArch()
}
