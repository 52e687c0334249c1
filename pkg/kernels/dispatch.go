package kernels

import (
	"fmt"
	"os"
	"sync"
)

// impl is one implementation of the tile primitives. The tile loop in
// State.Fold is shared; implementations differ in these primitives and in
// their tile sizes.
//
// The loop computes the transposed scores of a tile, Sᵀ = K·(scale·Q)ᵀ, so
// that the online softmax runs down the columns (one query per lane, no
// horizontal reductions) and P·V reads P k-major, as a packed GEMM wants it.
type impl struct {
	name   string
	br, bc int // query rows per work unit, keys per tile
	nr     int // column granularity of the packed Qᵀ, O and V tiles (1: none)

	// gemmNN computes, all row-major with leading dimensions lda, ldb, ldc:
	//
	//	for i < m, j < n: c[i*ldc+j] = (acc ? c[i*ldc+j] : 0) + Σ_{p<k} a[i*lda+p]·b[p*ldb+j]
	//
	// pf (may be nil) is memory the caller reads next: the assembly
	// prefetches it into L2 while it computes (a hint; it changes no
	// result).
	gemmNN func(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, acc bool, pf []float32)

	// gemmTN computes C = diag(alpha)·C + Aᵀ·B with A stored k-major:
	//
	//	for i < m, j < n: c[i*ldc+j] = alpha[i]·c[i*ldc+j] + Σ_{p<k} a[p*lda+i]·b[p*ldb+j]
	gemmTN func(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, alpha []float32, pf []float32)

	// softmaxCols folds rows rows of scores s (leading dimension lds) into
	// the online softmax of len(m) columns (len(m) is a multiple of nr):
	//
	//	for i < len(m):
	//		mx := max(m[i], max_j s[j*lds+i]); sh := max(mx, -MaxFloat32)
	//		alpha[i] = exp(m[i]-sh); s[j*lds+i] = exp(s[j*lds+i]-sh) for j < rows
	//		l[i] = l[i]·alpha[i] + Σ_j s[j*lds+i]; m[i] = mx
	softmaxCols func(s []float32, lds, rows int, m, l, alpha []float32)

	// gemmNNMax, when not nil, is gemmNN with acc false that also folds
	// the column maxima of C into mx (VMAXPS order: mx first, C second):
	//
	//	for i < m, j < n: mx[j] = max(mx[j], c[i*ldc+j])
	//
	// and softmaxColsPre is softmaxCols with those maxima given (mx[i] =
	// max(m[i], max_j s[j*lds+i])): the forward's full tiles take their
	// column maxima from the GEMM's registers instead of a pass over Sᵀ.
	gemmNNMax      func(m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int, mx, pf []float32)
	softmaxColsPre func(s []float32, lds, rows int, m, l, alpha, mx []float32)

	// exp replaces x[i] by exp(x[i]).
	exp func(x []float32)

	// dsoftmax turns a tile of scores and their gradients, row-major with
	// leading dimension ld, into probabilities and score gradients (cols is
	// a multiple of nr); the backward pass's elementwise step:
	//
	//	for i < rows, j < cols:
	//		p := exp(s[i*ld+j] - lse[i]);  s[i*ld+j] = p
	//		dp[i*ld+j] = scale·p·(dp[i*ld+j] - delta[i])
	dsoftmax func(s, dp []float32, ld, rows, cols int, lse, delta []float32, scale float32)

	// roundBF16 rounds src to bfloat16 (ties to even, NaN stays a NaN) and
	// stores the values widened back to float32 in dst (len(dst) values;
	// dst and src may be the same slice):
	//
	//	for i := range dst: dst[i] = bf16(src[i])
	roundBF16 func(dst, src []float32)
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

// EnvKernel names the environment variable that, when set at start-up to
// the name of an available implementation (e.g. "generic"), makes it the
// default instead of the best one the CPU supports. An unknown name leaves
// the default unchanged.
const EnvKernel = "RINGATTN_KERNEL"

func init() {
	register(genericImpl)
	registerArch()
	if name := os.Getenv(EnvKernel); name != "" {
		if im, ok := impls[name]; ok {
			active = im
		}
	}
}
