package kernels_test

import (
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// FuzzKernelBackward checks every implementation's gradients against the
// float64 reference on fuzzed shapes and masks, drawn as in
// FuzzKernelAttention (lengths up to 200, any head dimension, grouped
// heads, causal, windows of any sides and packed documents).
func FuzzKernelBackward(f *testing.F) {
	f.Add(uint64(1), uint16(64), uint16(64), uint8(64), uint8(0), uint8(0), int8(0), int8(0))
	f.Add(uint64(2), uint16(150), uint16(97), uint8(80), uint8(1), uint8(1), int8(0), int8(0))
	f.Add(uint64(3), uint16(97), uint16(97), uint8(127), uint8(2), uint8(7), int8(9), int8(-1))
	f.Add(uint64(0x1234567), uint16(130), uint16(40), uint8(2), uint8(3), uint8(13), int8(-3), int8(5))
	f.Fuzz(func(t *testing.T, seed uint64, n, nk uint16, d, heads, mask uint8, left, right int8) {
		p := problem{b: 1 + int(seed%2), n: 1 + int(n)%200, nk: 1 + int(nk)%200, d: 1 + int(d)%kernels.MaxHeadDim}
		hh := [][2]int{{1, 1}, {4, 2}, {4, 1}, {3, 3}}[heads%4]
		p.hq, p.hkv = hh[0], hh[1]
		m := kernels.Mask{Causal: mask&1 != 0, Windowed: mask&2 != 0, Left: int(left), Right: int(right)}
		if mask&4 != 0 && p.n >= 2 && p.nk >= 2 {
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
		checkBackwardAllImpls(t, p)
	})
}
