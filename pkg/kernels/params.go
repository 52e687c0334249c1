package kernels

import (
	"errors"
	"fmt"
	"math"
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

// Mask selects which keys a query may see. The zero value masks nothing.
//
// Positions are document-local: with SeqLens, query i of document d (local
// position i') and key j of document d (local position j') are aligned
// bottom-right, off = lenK(d) - lenQ(d), as FlashAttention >= 2.1 does. Without
// SeqLens the whole sequence is one document and off = Nk - N.
//
//	causal:  j' <= i' + off
//	window:  i' + off - Left <= j' <= i' + off + Right   (a negative side is unbounded)
//	docs:    query and key must lie in the same document
//
// The visible keys of a row are therefore one interval; a row whose interval
// is empty gets output 0 and LSE = -inf.
type Mask struct {
	Causal bool
	// Windowed enables the sliding window (Left, Right).
	Windowed    bool
	Left, Right int
	// SeqLens are the lengths of the packed documents of the queries; their sum
	// is N. SeqLensK are those of the keys (sum Nk); nil means SeqLens.
	SeqLens  []int
	SeqLensK []int
}

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
	// sums and its flushing of denormals), run on the float32 FMA kernels
	// of every implementation, so every CPU supports it. See the package
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
	m := &p.Mask
	if m.SeqLensK != nil && m.SeqLens == nil {
		return invalid("seqlens_k given without seqlens")
	}
	if m.SeqLens != nil {
		if err := checkLens("seqlens", m.SeqLens, p.N); err != nil {
			return err
		}
		if m.SeqLensK != nil {
			if len(m.SeqLensK) != len(m.SeqLens) {
				return invalid("seqlens_k has %d documents, expected %d as seqlens", len(m.SeqLensK), len(m.SeqLens))
			}
			if err := checkLens("seqlens_k", m.SeqLensK, p.Nk); err != nil {
				return err
			}
		} else if p.N != p.Nk {
			return invalid("seqlens without seqlens_k needs N == Nk, got N = %d, Nk = %d", p.N, p.Nk)
		}
	}
	return nil
}

// checkLens checks that lens are lengths >= 1 summing to exactly total. A
// sum is never formed past total, so lengths cannot wrap around to it.
func checkLens(name string, lens []int, total int) error {
	sum := 0
	for i, l := range lens {
		if l < 1 {
			return invalid("%s[%d] = %d, expected >= 1", name, i, l)
		}
		if l > total-sum {
			return invalid("%s[%d] = %d brings the sum past the sequence length %d, expected lengths summing to %d", name, i, l, total, total)
		}
		sum += l
	}
	if sum != total {
		return invalid("%s sum to %d, expected the sequence length %d", name, sum, total)
	}
	return nil
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
