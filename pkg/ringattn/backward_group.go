package ringattn

import (
	"context"
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// A head group of one rank holds every query and key block of its heads:
// its backward is the kernel's backward over those heads, with nothing to
// pass around. In process (a MemSource and a MemGradSink, B = 1, nothing
// done before) groupKernelBackward runs it as one kernels.AttentionBackward
// call that reads the inputs and writes the gradients in place: the
// group's heads of a [1, H, N, D] tensor are one contiguous slice. The
// ring path would copy the key/value set together, compute dK/dV into
// scratch, cut them into blocks and copy the blocks into the sink: about
// 12 % of the kernel's CPU time at H=8, N=16384, D=128, most of it first
// touches of fresh pages. The result is bit-identical to the ring path's:
// one run of query blocks over one contiguous key/value set is one
// BackwardBlock call over the whole sequence, which is what
// AttentionBackward computes (see its doc).

// groupKernelBackward runs group g's backward as above and reports true,
// or reports false (and does nothing) when the group does not qualify and
// must run as a ring.
func groupKernelBackward(ctx context.Context, cfg BackwardConfig, sub *shard.Plan, hs *headSlice, doneDQ, doneDKV []int) (bool, error) {
	src, ok := cfg.Source.(*MemSource)
	if !ok || src.o == nil || src.lse == nil || src.do == nil {
		return false, nil
	}
	sink, ok := cfg.Sink.(*MemGradSink)
	if !ok || hs.b != 1 || len(sub.Ranks) != 1 || len(doneDQ) > 0 || len(doneDKV) > 0 ||
		len(sub.Planned) != sub.QBlockCount || sink.block != sub.Block || src.block != sub.Block {
		return false, nil
	}
	gp := groupParams(cfg.Params, cfg.Plan)
	keys := sink.groupKeys(sub, hs)
	if !sink.reserve(keys) {
		return false, nil // written, or being written, by another epoch
	}
	if err := ctx.Err(); err != nil {
		sink.release(keys, 0, false, nil)
		return true, err
	}
	in := func(t string, x []float32) []float32 { return x[hs.offset(t, x) : hs.offset(t, x)+hs.span(t, x)] }
	dq, dk, dv := in("q", sink.dq), in("k", sink.dk), in("k", sink.dv)
	err := kernels.AttentionBackward(gp, in("q", src.q), in("k", src.k), in("k", src.v), in("q", src.o),
		in("lse", src.lse), in("q", src.do), dq, dk, dv)
	if err != nil {
		err = fmt.Errorf("rank %d: head group %d backward: %w", cfg.Ring.Rank(), cfg.Plan.Group(cfg.Ring.Rank()), err)
	}
	sink.release(keys, cfg.Epoch, err == nil, [][]float32{dq, dk, dv})
	if err != nil {
		return true, err
	}
	if cfg.Progress != nil {
		p := Progress{Rank: cfg.Ring.Rank(), Step: sub.Steps, Steps: sub.Steps, Done: true}
		for qi := range sub.QBlockCount {
			for _, c := range sub.PairsRow(qi) {
				if c > 0 {
					p.Pairs++
					p.FLOPs += 2.5 * float64(c) * sub.PairFLOPs()
				} else {
					p.Skipped++
				}
			}
		}
		p.TotalPairs = p.Pairs
		cfg.Progress(p)
	}
	return true, nil
}

// offset and span locate the group's heads in a whole [1, H, ...] tensor
// of the kind of `tensor` (its head count says q or k/v).
func (h *headSlice) offset(tensor string, full []float32) int {
	total, lo, _ := h.heads(tensor)
	return lo * (len(full) / total)
}

func (h *headSlice) span(tensor string, full []float32) int {
	total, lo, hi := h.heads(tensor)
	return (hi - lo) * (len(full) / total)
}

// groupKeys lists the head-range writes of every block of group hs.
func (s *MemGradSink) groupKeys(sub *shard.Plan, hs *headSlice) []headKey {
	var keys []headKey
	for b := range sub.QBlockCount {
		keys = append(keys, headKey{false, b, hs.qlo})
	}
	for j := range sub.KBlockCount {
		keys = append(keys, headKey{true, j, hs.klo})
	}
	return keys
}

// reserve marks keys as being written in place, if none was written or
// reserved; putHeads then treats them as written.
func (s *MemGradSink) reserve(keys []headKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if len(s.headWrites[k]) > 0 || s.reserved[k] {
			return false
		}
	}
	if s.reserved == nil {
		s.reserved = map[headKey]bool{}
	}
	for _, k := range keys {
		s.reserved[k] = true
	}
	return true
}

// release ends a reservation: written, the keys count as written by epoch;
// else the regions written in place are zeroed again, as never written.
func (s *MemGradSink) release(keys []headKey, epoch uint64, written bool, regions [][]float32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.headWrites == nil {
		s.headWrites = map[headKey][]uint64{}
	}
	for _, k := range keys {
		delete(s.reserved, k)
		if written {
			s.headWrites[k] = append(s.headWrites[k], epoch)
		}
	}
	if !written {
		for _, r := range regions {
			clear(r)
		}
	}
}
