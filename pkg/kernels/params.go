package kernels

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/ringattn/ringattn/pkg/mask"
)

// MaxHeadDim is the largest head dimension D the kernels accept.
const MaxHeadDim = 256

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("kernels: invalid argument")

// Shape describes the batch, heads and head dimension of an attention problem.
// Query tensors are [B, Hq, rows, D]; key and value tensors are [B, Hkv, rows, D].
// Query head h reads key/value head h/(Hq/Hkv) (grouped-query attention).
type Shape struct {
	B, Hq, Hkv, D int
}

// Group is the number of query heads that share one key/value head.
func (s Shape) Group() int { return s.Hq / s.Hkv }

// Mask selects which keys a query may see; the zero value masks nothing.
// It is pkg/mask's Mask, whose documentation gives the semantics (causal,
// sliding window, packed documents, aligned bottom-right per document).
type Mask = mask.Mask

// Params is one attention problem: shapes, global sequence lengths, scale and mask.
// Blocks passed to Fold are located by their global start positions, so the
// mask can be evaluated on any block of any rank.
type Params struct {
	Shape
	N, Nk int     // full query and key lengths
	Scale float32 // 0 means 1/sqrt(D)
	Mask  Mask
	// Threads bounds the goroutines one call uses; 0 means GOMAXPROCS.
	Threads int
	// Precision is the arithmetic of the forward pass's two products; the
	// zero value is PrecisionF32. The backward pass ignores it (float32).
	Precision Precision
}

// Precision selects the arithmetic of the forward pass's products Q·Kᵀ and
// P·V (Fold, FoldBlocks, Attention).
type Precision uint8

const (
	// PrecisionF32 computes in float32 throughout (the default).
	PrecisionF32 Precision = iota
	// PrecisionBF16 rounds scale·Q, K, V and the probabilities P to
	// bfloat16 (ties to even) before the products; the products of two
	// bfloat16 values are exact in float32, and the accumulation, the
	// softmax statistics (M, L), the state and the output stay float32.
	// It is what AVX512_BF16's VDPBF16PS computes (up to the order of the
	// sums and its flushing of denormals): on AMX tiles where the CPU has
	// them (implementation "amx"), else on the float32 FMA kernels of
	// every implementation, so every CPU supports it. See the package
	// documentation for the error bound.
	PrecisionBF16
)

// String returns "f32" or "bf16".
func (p Precision) String() string {
	switch p {
	case PrecisionF32:
		return "f32"
	case PrecisionBF16:
		return "bf16"
	}
	return fmt.Sprintf("Precision(%d)", uint8(p))
}

// ParsePrecision parses "f32" (also "fp32", "float32" and "") and "bf16"
// (also "bfloat16").
func ParsePrecision(s string) (Precision, error) {
	switch s {
	case "", "f32", "fp32", "float32":
		return PrecisionF32, nil
	case "bf16", "bfloat16":
		return PrecisionBF16, nil
	}
	return 0, invalid("precision %q, expected f32 or bf16", s)
}

// EffectiveScale returns Scale, or 1/sqrt(D) when Scale is 0.
func (p *Params) EffectiveScale() float32 {
	if p.Scale != 0 {
		return p.Scale
	}
	return float32(1 / math.Sqrt(float64(p.D)))
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Validate reports the first field of p that is out of range, naming it.
func (p *Params) Validate() error {
	switch {
	case p.B < 1:
		return invalid("batch B = %d, expected >= 1", p.B)
	case p.Hq < 1:
		return invalid("query heads Hq = %d, expected >= 1", p.Hq)
	case p.Hkv < 1:
		return invalid("key/value heads Hkv = %d, expected >= 1", p.Hkv)
	case p.Hq%p.Hkv != 0:
		return invalid("query heads Hq = %d not divisible by key/value heads Hkv = %d", p.Hq, p.Hkv)
	case p.D < 1 || p.D > MaxHeadDim:
		return invalid("head dim D = %d, expected 1..%d", p.D, MaxHeadDim)
	case p.N < 0:
		return invalid("query length N = %d, expected >= 0", p.N)
	case p.Nk < 0:
		return invalid("key length Nk = %d, expected >= 0", p.Nk)
	case math.IsNaN(float64(p.Scale)) || math.IsInf(float64(p.Scale), 0):
		return invalid("scale = %v, expected a finite number", p.Scale)
	case p.Threads < 0:
		return invalid("threads = %d, expected >= 0", p.Threads)
	case p.Precision > PrecisionBF16:
		return invalid("precision = %d, expected f32 (%d) or bf16 (%d)", p.Precision, PrecisionF32, PrecisionBF16)
	}
	if err := p.Mask.Validate(p.N, p.Nk); err != nil {
		return maskInvalid(err)
	}
	return nil
}

// maskInvalid words an error of mask.Validate as this package always has
// ("seqlens[1] = 0, expected >= 1"), wrapping ErrInvalid.
func maskInvalid(err error) error {
	var me *mask.Error
	if !errors.As(err, &me) {
		return invalid("%v", err)
	}
	name := strings.TrimPrefix(me.Field, "mask.")
	switch me.Kind {
	case mask.KindKWithoutQ:
		return invalid("seqlens_k given without seqlens")
	case mask.KindLength:
		return invalid("%s[%d] = %d, expected >= 1", name, me.Item, me.Value)
	case mask.KindPastTotal:
		return invalid("%s[%d] = %d brings the sum past the sequence length %d, expected lengths summing to %d",
			name, me.Item, me.Value, me.Total, me.Total)
	case mask.KindShortTotal:
		return invalid("%s sum to %d, expected the sequence length %d", name, me.Value, me.Total)
	case mask.KindDocs:
		return invalid("seqlens_k has %d documents, expected %d as seqlens", me.Value, me.Total)
	case mask.KindCross:
		return invalid("seqlens without seqlens_k needs N == Nk, got N = %d, Nk = %d", me.Value, me.Total)
	}
	return invalid("%s: %s", name, me.Msg)
}

// FLOPs is the conventional FLOP count of the unmasked problem, 4·B·Hq·N·Nk·D.
func (p *Params) FLOPs() float64 {
	return 4 * float64(p.B) * float64(p.Hq) * float64(p.N) * float64(p.Nk) * float64(p.D)
}

// VisibleFLOPs counts 4·D FLOPs for every (query, key) pair the mask leaves
// visible, summed over batch and heads.
func (p *Params) VisibleFLOPs() float64 {
	mi := newMaskInfo(p)
	var pairs float64
	for i := 0; i < p.N; i++ {
		lo, hi := mi.rowRange(i)
		pairs += float64(hi - lo)
	}
	return 4 * float64(p.B) * float64(p.Hq) * float64(p.D) * pairs
}
