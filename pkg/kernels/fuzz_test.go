package kernels_test

import (
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// FuzzKernelAttention checks every implementation against the float64
// reference on fuzzed shapes and masks: lengths, head dimension, grouped
// heads, causal, windows of any sides and packed documents.
func FuzzKernelAttention(f *testing.F) {
	f.Add(uint64(1), uint16(64), uint16(64), uint8(64), uint8(0), uint8(0), int8(0), int8(0))
	f.Add(uint64(2), uint16(200), uint16(130), uint8(80), uint8(1), uint8(1), int8(0), int8(0))
	f.Add(uint64(3), uint16(97), uint16(97), uint8(128), uint8(2), uint8(7), int8(9), int8(-1))
	f.Fuzz(func(t *testing.T, seed uint64, n, nk uint16, d, heads, mask uint8, left, right int8) {
		p := problem{b: 1 + int(seed%2), n: 1 + int(n)%300, nk: 1 + int(nk)%300, d: 1 + int(d)%kernels.MaxHeadDim}
		hh := [][2]int{{1, 1}, {4, 2}, {4, 1}, {3, 3}}[heads%4]
		p.hq, p.hkv = hh[0], hh[1]
		m := kernels.Mask{Causal: mask&1 != 0, Windowed: mask&2 != 0, Left: int(left), Right: int(right)}
		if mask&4 != 0 && p.n >= 2 && p.nk >= 2 {
			// Two documents, split where the seed says.
			a, c := 1+int(seed>>8)%(p.n-1), 1+int(seed>>24)%(p.nk-1)
			m.SeqLens = []int{a, p.n - a}
			if p.n != p.nk || mask&8 != 0 {
				m.SeqLensK = []int{c, p.nk - c}
			}
		}
		p.mask = m
		if err := p.params().Validate(); err != nil {
			t.Skip(err) // e.g. SeqLens without SeqLensK when N != Nk
		}
		checkAllImpls(t, p)
	})
}
