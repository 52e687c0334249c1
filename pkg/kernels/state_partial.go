package kernels

// tileV returns the tile's V as the P·V product reads it, and its leading
// dimension: v itself, or a copy zero-padded to dp columns when dp != d,
// rounded to bfloat16 when bf.
func tileV(im *impl, sc *scratch, v []float32, cols, d, dp int, bf bool) ([]float32, int) {
	vb, ldv := v, d
	if dp != d {
		vp := sc.vp[:cols*dp]
		for j := 0; j < cols; j++ {
			copy(vp[j*dp:j*dp+d], vb[j*d:j*d+d])
		}
		vb, ldv = vp, dp
	}
	if bf {
		vr := sc.vr[:cols*ldv]
		im.roundBF16(vr, vb)
		vb = vr
	}
	return vb, ldv
}

// partialTile is a tile of keys that the mask shows to the unit's queries
// only in part (lo, hi: each query's visible keys, global positions
// clipped to the tile). It is folded a panel of pw queries at a time, each
// panel over the key rows [a, b) that some of its queries see: under a
// causal mask the diagonal tile then computes about a third of its pairs
// less. Masked scores are -inf, as in softmaxCols's contract.
type partialTile struct {
	im                  *impl
	sc                  *scratch
	rows, rp, pw, d, dp int
	cols                int
	base                int32 // global position of the tile's first key
	bf                  bool
	qt, kb, v, kNext    []float32
	o, m, l, alpha      []float32
	lo, hi              []int32
}

func (t *partialTile) fold() {
	im, rp, pw, d, dp := t.im, t.rp, t.pw, t.d, t.dp
	st := t.sc.s[:t.cols*rp]
	var vb []float32
	ldv := 0
	np := rp / pw
	for j0 := 0; j0 < rp && j0 < t.rows; j0 += pw {
		qs := min(pw, t.rows-j0) // the panel's real queries
		// [a, b): the tile's keys some query of the panel sees.
		a, b := int32(t.cols), int32(0)
		for i := j0; i < j0+qs; i++ {
			if t.lo[i] < t.hi[i] {
				a, b = min(a, t.lo[i]-t.base), max(b, t.hi[i]-t.base)
			}
		}
		if a >= b {
			// No query of the panel sees the tile: m, l and O stay.
			continue
		}
		n := int(b - a)
		sp := st[int(a)*rp+j0:]
		part := t.v[len(t.v)*(j0/pw)/np : len(t.v)*(j0/pw+1)/np]
		im.gemmNN(n, pw, d, t.kb[int(a)*d:], d, t.qt[j0*d:], pw, sp, rp, false, part)
		for i := 0; i < qs; i++ {
			lo, hi := t.lo[j0+i]-t.base, t.hi[j0+i]-t.base
			if lo >= hi {
				lo, hi = b, b
			}
			for j := a; j < lo; j++ {
				sp[int(j-a)*rp+i] = negInf
			}
			for j := max(hi, a); j < b; j++ {
				sp[int(j-a)*rp+i] = negInf
			}
		}
		im.softmaxCols(sp, rp, n, t.m[j0:j0+pw], t.l[j0:j0+pw], t.alpha[j0:j0+pw])
		if vb == nil {
			vb, ldv = tileV(im, t.sc, t.v, t.cols, d, dp, t.bf)
		}
		if t.bf {
			// L above summed P in float32; the product sees bfloat16 P.
			ps := sp[:(n-1)*rp+pw]
			im.roundBF16(ps, ps)
		}
		im.gemmTN(qs, dp, n, sp, rp, vb[int(a)*ldv:], ldv, t.o[j0*dp:], dp, t.alpha[j0:], t.kNext)
	}
}
