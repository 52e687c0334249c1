package shard

import (
	"errors"
	"fmt"
	"math"
	"math/bits"

	"github.com/ringattn/ringattn/pkg/mask"
)

// ErrLimit is wrapped by the error of a well-formed job that is too large
// in total (Limits.MaxJobBytes). Such an error also matches ErrInvalid.
var ErrLimit = errors.New("shard: job above the size limit")

// FieldError is a request field out of range: Field names it as on the
// wire ("b", "hq", "hkv", "d", "n", "nk", "block", "ranks", "elem_bytes",
// "strategy", "weights", "qblocks", "d_model", "mask.seqlens",
// "mask.seqlens_k", "mask.window_left", "mask.window_right"; empty for the
// job as a whole) and Msg the value found and the value expected. It wraps
// ErrInvalid, or ErrLimit for a job above Limits.MaxJobBytes (which matches
// ErrInvalid as well).
type FieldError struct {
	Field string
	Msg   string
	Err   error // ErrInvalid or ErrLimit
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func (e *FieldError) Unwrap() error { return e.Err }

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...), Err: ErrInvalid}
}

// Limits bound what one job may ask for (DESIGN §5). They are defined here
// once and checked by Limits.Check alike by the CLI, the SDK, the
// coordinator (on submit) and the worker (on every assignment). Every field
// must be >= 1 (Limits.Validate).
type Limits struct {
	// MaxBatch bounds B.
	MaxBatch int64
	// MaxHeads bounds Hq and Hkv (and, times MaxD, a layer's d_model).
	MaxHeads int64
	// MaxTokens bounds N, Nk, Block and each side of a sliding window.
	MaxTokens int64
	// MaxD bounds the head dimension D.
	MaxD int64
	// MaxBlocks bounds the blocks of each sequence, ceil(N/Block) and
	// ceil(Nk/Block): planning and scheduling work grows with it.
	MaxBlocks int64
	// MaxDocs bounds the packed documents, len(SeqLens) and len(SeqLensK).
	MaxDocs int64
	// MaxJobBytes bounds the float32 bytes of a job's inputs and outputs
	// (JobBytes).
	MaxJobBytes int64
}

// DefaultLimits are the limits of a coordinator, worker, CLI and SDK left
// at their defaults.
func DefaultLimits() Limits {
	return Limits{
		MaxBatch:    1024,
		MaxHeads:    1024,
		MaxTokens:   1 << 24,
		MaxD:        256,
		MaxBlocks:   1 << 16,
		MaxDocs:     1 << 16,
		MaxJobBytes: 64 << 30,
	}
}

// Validate reports the first limit that is not >= 1, naming it.
func (l Limits) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxBatch", l.MaxBatch}, {"MaxHeads", l.MaxHeads}, {"MaxTokens", l.MaxTokens}, {"MaxD", l.MaxD},
		{"MaxBlocks", l.MaxBlocks}, {"MaxDocs", l.MaxDocs}, {"MaxJobBytes", l.MaxJobBytes},
	} {
		if f.v < 1 {
			return fieldErr("Limits."+f.name, "%d: want >= 1", f.v)
		}
	}
	return nil
}

// Tensors describes what a job stores besides its attention shape, for the
// byte count that Limits.MaxJobBytes bounds.
type Tensors struct {
	// LSE: an attention job that also outputs the log-sum-exp [B, Hq, N].
	LSE bool
	// DModel > 0 makes a layer (mha) job: x and y [B, N, DModel], Wq, Wk,
	// Wv [Hq·D, DModel] and Wo [DModel, Hq·D] are stored instead of q, k, v
	// and o; a layer needs Hkv == Hq and Nk == N.
	DModel int
	// Bias: a layer job with biases bq, bk, bv [Hq·D] and bo [DModel].
	Bias bool
	// Grad: an attention job with a backward pass, which also stores do
	// and dq [B,Hq,N,D], dk and dv [B,Hkv,Nk,D], and lse [B,Hq,N] (as if
	// LSE were set).
	Grad bool
}

// hardMax bounds every count and length of a request whatever the limits:
// block indices travel as int32, and it keeps position and pair arithmetic
// (up to hardMax² per sequence pair) inside int64.
const hardMax = math.MaxInt32

// unlimited is what Request.Validate checks against: only the hard bounds.
var unlimited = Limits{MaxBatch: hardMax, MaxHeads: hardMax, MaxTokens: hardMax, MaxD: hardMax,
	MaxBlocks: hardMax, MaxDocs: hardMax, MaxJobBytes: math.MaxInt64}

// Check reports the first field of r, a job storing t, that breaks a rule of
// Request.Validate or is above l, as a *FieldError. Every sum and product is
// checked before it is formed, so no input can wrap around; what Check
// allocates is bounded by the lengths of r's slices, never by a count r
// claims.
func (l Limits) Check(r *Request, t Tensors) error {
	l.clamp()
	if err := r.check(&l, t); err != nil {
		return err
	}
	return nil
}

// clamp lowers every limit to the hard bounds, so a limit set higher than
// the planner can handle still keeps the arithmetic safe.
func (l *Limits) clamp() {
	for _, p := range []*int64{&l.MaxBatch, &l.MaxHeads, &l.MaxTokens, &l.MaxD, &l.MaxBlocks, &l.MaxDocs} {
		*p = min(*p, hardMax)
	}
}

// JobBytes returns the float32 bytes of the inputs and outputs of a job of
// shape r storing t, and false when that overflows int64 (or a dimension is
// negative). Attention: q and o [B,Hq,N,D], k and v [B,Hkv,Nk,D], and lse
// [B,Hq,N] when t.LSE; t.Grad doubles the q/o and k/v terms (do, dq, dk,
// dv) and counts lse. Layer: x and y [B,N,DModel], the four projections
// 4·Hq·D·DModel and the biases 3·Hq·D + DModel when t.Bias; t.Grad adds
// dy, dxq and dxkv [B,N,DModel], the attention's o, dq, dk, dv
// [B,Hq,N,D] and lse, and per block the block's share of every weight
// (and bias) gradient (internal/worker/DESIGN.md), blocks = ceil(N/Block).
func JobBytes(r *Request, t Tensors) (int64, bool) {
	var elems int64
	ok := true
	add := func(n int64, fine bool) {
		var sumOK bool
		elems, sumOK = addChecked(elems, n)
		ok = ok && fine && sumOK
	}
	if t.DModel > 0 {
		hd, ok1 := mulChecked(r.Hq, r.D)
		ok = ok && ok1 && hd <= math.MaxInt32
		add(mulChecked(2, r.B, r.N, t.DModel))          // x, y
		params, okw := mulChecked(4, int(hd), t.DModel) // wq, wk, wv, wo
		add(params, okw)
		if t.Bias {
			b, ok2 := addChecked(3*hd, int64(t.DModel))
			add(b, ok2)
			var ok3 bool
			params, ok3 = addChecked(params, b)
			ok = ok && ok3
		}
		if t.Grad {
			add(mulChecked(3, r.B, r.N, t.DModel))  // dy, dxq, dxkv
			add(mulChecked(4, r.B, r.Hq, r.N, r.D)) // o, dq, dk, dv
			add(mulChecked(r.B, r.Hq, r.N))         // lse
			if r.N >= 0 {
				add(mulChecked(ceilDiv(r.N, r.block()), int(params))) // per-block shares
			}
		}
	} else {
		per := 2
		if t.Grad {
			per = 4
		}
		add(mulChecked(per, r.B, r.Hq, r.N, r.D))
		add(mulChecked(per, r.B, r.Hkv, r.Nk, r.D))
		if t.LSE || t.Grad {
			add(mulChecked(r.B, r.Hq, r.N))
		}
	}
	if !ok {
		return 0, false
	}
	return mulChecked(4, int(elems))
}

// mulChecked multiplies non-negative factors; false on a negative factor or
// when the product overflows int64.
func mulChecked(xs ...int) (int64, bool) {
	p := uint64(1)
	for _, x := range xs {
		if x < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(p, uint64(x))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, false
		}
		p = lo
	}
	return int64(p), true
}

// addChecked adds non-negative terms; false on a negative term or when the
// sum overflows int64.
func addChecked(xs ...int64) (int64, bool) {
	var s int64
	for _, x := range xs {
		if x < 0 || x > math.MaxInt64-s {
			return 0, false
		}
		s += x
	}
	return s, true
}

// check is the one rule set of Request.Validate (l = the hard bounds) and
// Limits.Check.
func (r *Request) check(l *Limits, t Tensors) error {
	dims := []struct {
		field string
		v     int
		max   int64
	}{
		{"b", r.B, l.MaxBatch}, {"hq", r.Hq, l.MaxHeads}, {"hkv", r.Hkv, l.MaxHeads},
	}
	for _, d := range dims {
		if d.v < 1 || int64(d.v) > d.max {
			return fieldErr(d.field, "%d: want 1..%d", d.v, d.max)
		}
	}
	if r.Hq%r.Hkv != 0 {
		return fieldErr("hkv", "hq = %d is not a multiple of hkv = %d: want hkv dividing hq", r.Hq, r.Hkv)
	}
	for _, d := range []struct {
		field string
		v     int
		max   int64
	}{{"d", r.D, l.MaxD}, {"n", r.N, l.MaxTokens}, {"nk", r.Nk, l.MaxTokens}} {
		if d.v < 1 || int64(d.v) > d.max {
			return fieldErr(d.field, "%d: want 1..%d", d.v, d.max)
		}
	}
	if r.Block < 0 || int64(r.Block) > l.MaxTokens {
		return fieldErr("block", "%d: want 1..%d tokens (or 0 for %d)", r.Block, l.MaxTokens, DefaultBlock)
	}
	block := r.block()
	for _, s := range []struct {
		field string
		v     int
	}{{"n", r.N}, {"nk", r.Nk}} {
		if nb := ceilDiv(s.v, block); int64(nb) > l.MaxBlocks {
			return fieldErr("block", "%d tokens cut %s = %d into %d blocks: want at most %d blocks per sequence (Limits.MaxBlocks), a block of at least %d",
				block, s.field, s.v, nb, l.MaxBlocks, ceilDiv(s.v, int(l.MaxBlocks)))
		}
	}
	switch {
	case r.Ranks < 1 || r.Ranks > hardMax:
		return fieldErr("ranks", "%d: want 1..%d", r.Ranks, hardMax)
	case r.ElemBytes != 0 && r.ElemBytes != 2 && r.ElemBytes != 4:
		return fieldErr("elem_bytes", "%d: want 2 (bf16) or 4 (f32)", r.ElemBytes)
	}
	switch r.Strategy {
	case Auto, Contiguous, Zigzag, Striped, SplitKV, Heads:
	default:
		return fieldErr("strategy", "%q: want %s, %s, %s, %s, %s or empty (auto)", r.Strategy, Contiguous, Zigzag, Striped, SplitKV, Heads)
	}
	if err := r.checkHeadGroups(); err != nil {
		return err
	}
	if r.Weights != nil {
		if len(r.Weights) != r.Ranks {
			return fieldErr("weights", "%d entries: want ranks = %d", len(r.Weights), r.Ranks)
		}
		for i, w := range r.Weights {
			if !(w > 0) || math.IsInf(w, 0) {
				return fieldErr("weights", "item %d = %v: want a finite number > 0", i, w)
			}
		}
	}
	if r.QBlocks != nil {
		if err := checkQBlocks(r.QBlocks, max(1, r.HeadGroups)*ceilDiv(r.N, block)); err != nil {
			return err
		}
	}
	if err := checkMask(&r.Mask, l, r.N, r.Nk); err != nil {
		return err
	}
	if t.DModel < 0 || int64(t.DModel) > satMul(l.MaxHeads, l.MaxD) {
		return fieldErr("d_model", "%d: want 1..%d", t.DModel, satMul(l.MaxHeads, l.MaxD))
	}
	if t.DModel > 0 {
		if r.Hkv != r.Hq {
			return fieldErr("hkv", "%d: an mha layer wants hkv = hq = %d", r.Hkv, r.Hq)
		}
		if r.Nk != r.N {
			return fieldErr("nk", "%d: mha self-attention wants nk = n = %d", r.Nk, r.N)
		}
	}
	b, ok := JobBytes(r, t)
	if !ok || b > l.MaxJobBytes {
		what := fmt.Sprintf("%d bytes", b)
		if !ok {
			what = "more than 2^63 bytes"
		}
		return &FieldError{Msg: fmt.Sprintf("job needs %s of tensors: want at most %d (Limits.MaxJobBytes)", what, l.MaxJobBytes), Err: ErrLimit}
	}
	return nil
}

// satMul is a·b for a, b >= 0, saturated at MaxInt64.
func satMul(a, b int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(lo)
}

// checkQBlocks checks a re-plan's query blocks: non-empty, each in 0..nq-1,
// no repeats. What it allocates is bounded by len(qb), not by nq.
func checkQBlocks(qb []int, nq int) error {
	if len(qb) == 0 {
		return fieldErr("qblocks", "empty: want nil (all blocks) or a non-empty subset")
	}
	if len(qb) > nq {
		return fieldErr("qblocks", "%d entries: want at most the %d query blocks", len(qb), nq)
	}
	seen := make(map[int]struct{}, len(qb))
	for i, b := range qb {
		if b < 0 || b >= nq {
			return fieldErr("qblocks", "item %d = %d: want 0..%d", i, b, nq-1)
		}
		if _, dup := seen[b]; dup {
			return fieldErr("qblocks", "item %d = %d is repeated: want distinct blocks", i, b)
		}
		seen[b] = struct{}{}
	}
	return nil
}

// checkMask checks m for n queries over nk keys: its window against
// l.MaxTokens, its document counts against l.MaxDocs (before anything is
// summed), then mask.Validate.
func checkMask(m *Mask, l *Limits, n, nk int) error {
	if err := m.CheckWindow(l.MaxTokens); err != nil {
		return maskFieldErr(err)
	}
	if m.SeqLens != nil {
		for _, s := range []struct {
			field string
			v     int
		}{{mask.FieldSeqLens, len(m.SeqLens)}, {mask.FieldSeqLensK, len(m.SeqLensK)}} {
			if int64(s.v) > l.MaxDocs {
				return fieldErr(s.field, "%d documents: want at most %d (Limits.MaxDocs)", s.v, l.MaxDocs)
			}
		}
	}
	return maskFieldErr(m.Validate(n, nk))
}

// maskFieldErr is a *mask.Error as a *FieldError (nil for nil).
func maskFieldErr(err error) error {
	if err == nil {
		return nil
	}
	var me *mask.Error
	if errors.As(err, &me) {
		return &FieldError{Field: me.Field, Msg: me.Msg, Err: ErrInvalid}
	}
	return &FieldError{Msg: err.Error(), Err: ErrInvalid}
}

// CheckLens checks that lens are lengths >= 1 summing to exactly total (the
// sequence length named totalName), without ever forming a sum past total.
// Errors are *FieldError naming field.
func CheckLens(field, totalName string, lens []int, total int) error {
	return maskFieldErr(mask.CheckLens(field, totalName, lens, total))
}
