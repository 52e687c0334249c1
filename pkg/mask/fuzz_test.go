package mask_test

import (
	"errors"
	"testing"

	"github.com/ringattn/ringattn/pkg/mask"
)

// fuzzMask builds a mask from fuzz input: flags bit 0 causal, bit 1
// windowed, bit 2 documents, bit 3 key documents of their own, bit 4 n
// and nk as given instead of the documents' sums (mostly invalid), bit 5
// one key document too many. Document lengths are 1 + b%7 per byte (0 per
// byte with bit 6, invalid), at most 8 documents.
func fuzzMask(n, nk, flags uint8, left, right int8, qdocs, kdocs []byte) (mask.Mask, int, int) {
	m := mask.Mask{Causal: flags&1 != 0, Windowed: flags&2 != 0, Left: int(left), Right: int(right)}
	N, Nk := int(n%48), int(nk%48)
	lens := func(b []byte) []int {
		b = b[:min(len(b), 8)]
		out := make([]int, len(b))
		for i, x := range b {
			if flags&64 == 0 {
				out[i] = 1 + int(x%7)
			}
		}
		return out
	}
	sum := func(l []int) int {
		s := 0
		for _, x := range l {
			s += x
		}
		return s
	}
	if flags&4 != 0 && len(qdocs) > 0 {
		m.SeqLens = lens(qdocs)
		if flags&8 != 0 {
			kb := append([]byte(nil), kdocs...)
			for len(kb) < len(m.SeqLens) {
				kb = append(kb, byte(len(kb)))
			}
			m.SeqLensK = lens(kb[:len(m.SeqLens)])
			if flags&32 != 0 {
				m.SeqLensK = append(m.SeqLensK, 1)
			}
		}
		if flags&16 == 0 {
			N = sum(m.SeqLens)
			Nk = N
			if m.SeqLensK != nil {
				Nk = sum(m.SeqLensK)
			}
		}
	}
	return m, N, Nk
}

// FuzzMaskTiles checks, for any mask and shape up to 47×47, every row
// against the definition (refVisible) and the classification, pair count
// and first seen key of every tile of a grid of br×bc tiles (offset by
// shift) against the pairs one by one. A mask Validate refuses must be
// refused with an *Error naming a field.
func FuzzMaskTiles(f *testing.F) {
	f.Add(uint8(16), uint8(16), uint8(1), int8(0), int8(0), []byte{}, []byte{}, uint8(4), uint8(4), uint8(0))
	f.Add(uint8(9), uint8(13), uint8(3), int8(2), int8(-1), []byte{}, []byte{}, uint8(3), uint8(5), uint8(1))
	f.Add(uint8(0), uint8(0), uint8(4|8|1), int8(0), int8(0), []byte{3, 0, 6}, []byte{1, 5, 2}, uint8(4), uint8(3), uint8(2))
	f.Add(uint8(0), uint8(0), uint8(4|2|1), int8(1), int8(1), []byte{6, 6, 1, 2}, []byte{}, uint8(5), uint8(2), uint8(0))
	f.Add(uint8(20), uint8(7), uint8(1), int8(0), int8(0), []byte{}, []byte{}, uint8(8), uint8(8), uint8(3))
	f.Add(uint8(10), uint8(10), uint8(4|16), int8(0), int8(0), []byte{1, 2}, []byte{}, uint8(2), uint8(2), uint8(0))
	f.Add(uint8(5), uint8(5), uint8(4|8|32), int8(0), int8(0), []byte{1, 2}, []byte{3, 4}, uint8(2), uint8(2), uint8(0))
	f.Add(uint8(5), uint8(5), uint8(4|64), int8(0), int8(0), []byte{1, 2}, []byte{}, uint8(1), uint8(1), uint8(0))
	f.Add(uint8(5), uint8(5), uint8(8), int8(0), int8(0), []byte{}, []byte{2}, uint8(1), uint8(1), uint8(0))
	f.Fuzz(func(t *testing.T, n, nk, flags uint8, left, right int8, qdocs, kdocs []byte, br, bc, shift uint8) {
		m, N, Nk := fuzzMask(n, nk, flags, left, right, qdocs, kdocs)
		if flags&8 != 0 && m.SeqLens == nil {
			m.SeqLensK = []int{Nk} // key documents without query documents: refused
		}
		if err := m.Validate(N, Nk); err != nil {
			var me *mask.Error
			if !errors.As(err, &me) || me.Field == "" || me.Msg == "" || me.Kind == 0 {
				t.Fatalf("%s: error %v (%T), want a *mask.Error naming a field", describe(&m, N, Nk), err, err)
			}
			return
		}
		checkRows(t, &m, N, Nk)
		e := mask.New(&m, N, Nk)
		rb, cb := 1+int(br%16), 1+int(bc%16)
		for q0 := -int(shift % uint8(rb)); q0 < N; q0 += rb {
			a := max(q0, 0)
			rows := min(q0+rb, N) - a
			if rows <= 0 {
				continue
			}
			for k0 := -int(shift % uint8(cb)); k0 < Nk; k0 += cb {
				c0, c1 := max(k0, 0), min(k0+cb, Nk)
				if c1 > c0 {
					checkTile(t, &m, e, N, Nk, a, rows, c0, c1)
				}
			}
		}
	})
}
