package kernels

import "github.com/ringattn/ringattn/pkg/mask"

// The mask semantics live in pkg/mask; these are the names the tile loops
// of this package use for them.

// maskInfo evaluates a Mask on global positions: every row's visible keys are
// one interval [lo, hi).
type maskInfo struct{ ev *mask.Eval }

func newMaskInfo(p *Params) *maskInfo { return &maskInfo{ev: mask.New(&p.Mask, p.N, p.Nk)} }

// rowRange returns the interval [lo, hi) of keys query i sees; lo == hi when none.
func (mi *maskInfo) rowRange(i int) (lo, hi int) { return mi.ev.Row(i) }

// tileClass is how a mask covers a (query tile, key tile) rectangle.
type tileClass = mask.Class

const (
	tileHidden  = mask.Hidden  // no pair visible: skip without reading memory
	tileFull    = mask.Full    // every pair visible: no masking needed
	tilePartial = mask.Partial // per-row ranges apply
)

// spans are the visible key ranges of a block of query rows, computed once
// so that classifying each key tile costs no mask evaluation.
type spans struct{ mask.Rows }

// spans fills sp with the ranges of rows [q0, q0+len(lo)); lo and hi are
// the caller's buffers.
func (mi *maskInfo) spans(q0 int, lo, hi []int32, sp *spans) { mi.ev.Rows(q0, lo, hi, &sp.Rows) }

// sees reports whether some row of the spans may see some key of block b
// (false: none does).
func (sp *spans) sees(b KV) bool { return sp.Sees(b.Start, b.Start+b.N) }

// seesAny reports whether some row of the spans may see some key of the blocks.
func (sp *spans) seesAny(blocks []KV) bool {
	for _, b := range blocks {
		if sp.sees(b) {
			return true
		}
	}
	return false
}

// classify classifies the tile of keys [k0, k1) for the rows of sp; for a
// partial tile it fills lo/hi with each row's range clipped to [k0, k1)
// (lo == hi when the row sees none of it).
func (sp *spans) classify(k0, k1 int, lo, hi []int32) tileClass { return sp.Classify(k0, k1, lo, hi) }
