// Package testrand makes seeded test inputs: unit-normal tensors and the
// extreme-value modes the conformance suites use.
package testrand

import (
	"math"
	"math/rand/v2"
)

// Mode selects the distribution of generated values.
type Mode int

const (
	Normal   Mode = iota // unit normal
	Large                // unit normal ×30: softmax logits far beyond exp's range without max-subtraction
	Constant             // every value equal: all scores tie
	Tiny                 // unit normal ×1e-6
)

func (m Mode) String() string {
	return [...]string{"normal", "large", "constant", "tiny"}[m]
}

// Rand is a deterministic source.
type Rand struct{ r *rand.Rand }

// New returns a source seeded with seed.
func New(seed uint64) *Rand { return &Rand{rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))} }

// Slice returns n values of the given mode.
func (r *Rand) Slice(n int, mode Mode) []float32 {
	x := make([]float32, n)
	for i := range x {
		switch mode {
		case Normal:
			x[i] = float32(r.r.NormFloat64())
		case Large:
			x[i] = float32(30 * r.r.NormFloat64())
		case Constant:
			x[i] = 0.5
		case Tiny:
			x[i] = float32(1e-6 * r.r.NormFloat64())
		}
	}
	return x
}

// Intn returns a value in [0, n).
func (r *Rand) Intn(n int) int { return r.r.IntN(n) }

// Float64 returns a value in [0, 1).
func (r *Rand) Float64() float64 { return r.r.Float64() }

// Guarded returns a slice of n values between two guard runs of g NaNs, and
// the inner slice: writes outside the inner slice are caught by Intact.
func Guarded(n, g int) (all, inner []float32) {
	all = make([]float32, n+2*g)
	for i := range all {
		all[i] = float32(math.NaN())
	}
	inner = all[g : g+n]
	clear(inner)
	return all, inner
}

// Intact reports whether the g guard values at both ends of all are untouched.
func Intact(all []float32, g int) bool {
	for i := 0; i < g; i++ {
		if !math.IsNaN(float64(all[i])) || !math.IsNaN(float64(all[len(all)-1-i])) {
			return false
		}
	}
	return true
}
