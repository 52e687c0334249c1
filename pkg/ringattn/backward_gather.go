package ringattn

import (
	"context"
	"fmt"
	"slices"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// gatherGradSink is a head group's GradSink when the real one takes whole
// blocks (every head): as gatherSink does for outputs, the dQ of query
// block b is written by the owner of block b in head group b mod G and
// the dK/dV of key block j by the holder of block j in head group j mod G;
// the other groups send them their heads (KindHeadOut, Step G+g for dQ and
// 2G+g for dK/dV). Every rank writes its dQ blocks before its dK/dV blocks,
// each kind in ascending order and sending before waiting, so the waits
// form no cycle (a dK/dV accumulator held up meanwhile is recomputed after
// the ring's patience, as for any late frame).
type gatherGradSink struct {
	ring    Ring
	p       *kernels.Params // the whole problem
	g, gs   int             // this rank's head group, the plan's groups
	hs      *headSlice
	sink    GradSink
	qOwner  map[int]int // query unit -> rank
	kHolder map[int]int // key/value unit -> rank
	qbc     int
	kbc     int
}

func newGatherGradSink(cfg BackwardConfig, hs *headSlice, g int) (*gatherGradSink, error) {
	plan := cfg.Plan
	s := &gatherGradSink{ring: cfg.Ring, p: cfg.Params, g: g, gs: plan.Groups(), hs: hs, sink: cfg.Sink,
		qOwner: map[int]int{}, kHolder: map[int]int{}, qbc: plan.QBlockCount, kbc: plan.KBlockCount}
	for r, rk := range plan.Ranks {
		for _, u := range rk.QBlocks {
			s.qOwner[u] = r
		}
		for _, u := range rk.KVBlocks {
			s.kHolder[u] = r
		}
	}
	whole := func(name string, units []int, n int) error {
		for _, u := range units {
			for gg := range s.gs {
				if !slices.Contains(units, gg*n+u%n) {
					return invalid("%s lists unit %d (block %d of head group %d) but not block %d of group %d: a gradient sink without head ranges (%T) needs every group of a block",
						name, u, u%n, u/n, u%n, gg, cfg.Sink)
				}
			}
		}
		return nil
	}
	if err := whole("the plan", plan.Planned, s.qbc); err != nil {
		return nil, err
	}
	if err := whole("DoneDQ", cfg.DoneDQ, s.qbc); err != nil {
		return nil, err
	}
	if err := whole("DoneDKV", cfg.DoneDKV, s.kbc); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *gatherGradSink) PutDQ(ctx context.Context, epoch uint64, b int, dq []float32) error {
	wg := b % s.gs
	per := s.p.Hq / s.gs
	key := func(g int) Key { return Key{Kind: KindHeadOut, Step: s.gs + g, Block: b} }
	if s.g != wg {
		to := s.qOwner[wg*s.qbc+b]
		if err := s.ring.Send(ctx, to, Frame{Key: key(s.g), Tensors: [][]float32{dq}}); err != nil {
			return fmt.Errorf("sending heads of dQ block %d to its writer, rank %d: %w", b, to, err)
		}
		return nil
	}
	parts, err := s.gather(ctx, 1, func(g int) (int, Key) { return s.qOwner[g*s.qbc+b], key(g) })
	if err != nil {
		return fmt.Errorf("dQ block %d: %w", b, err)
	}
	parts[s.g] = [][]float32{dq}
	full, err := s.assemble(parts, 0, s.p.Hq, per)
	if err != nil {
		return fmt.Errorf("dQ block %d: %w", b, err)
	}
	return s.sink.PutDQ(ctx, epoch, b, full)
}

func (s *gatherGradSink) PutDKV(ctx context.Context, epoch uint64, j int, dk, dv []float32) error {
	wg := j % s.gs
	per := s.p.Hkv / s.gs
	key := func(g int) Key { return Key{Kind: KindHeadOut, Step: 2*s.gs + g, Block: j} }
	if s.g != wg {
		to := s.kHolder[wg*s.kbc+j]
		if err := s.ring.Send(ctx, to, Frame{Key: key(s.g), Tensors: [][]float32{dk, dv}}); err != nil {
			return fmt.Errorf("sending heads of dK/dV block %d to its writer, rank %d: %w", j, to, err)
		}
		return nil
	}
	parts, err := s.gather(ctx, 2, func(g int) (int, Key) { return s.kHolder[g*s.kbc+j], key(g) })
	if err != nil {
		return fmt.Errorf("dK/dV block %d: %w", j, err)
	}
	parts[s.g] = [][]float32{dk, dv}
	fk, err := s.assemble(parts, 0, s.p.Hkv, per)
	if err != nil {
		return fmt.Errorf("dK block %d: %w", j, err)
	}
	fv, err := s.assemble(parts, 1, s.p.Hkv, per)
	if err != nil {
		return fmt.Errorf("dV block %d: %w", j, err)
	}
	return s.sink.PutDKV(ctx, epoch, j, fk, fv)
}

// gather receives the other groups' parts (n tensors each): from(g)
// names the sender and the key of group g's part.
func (s *gatherGradSink) gather(ctx context.Context, n int, from func(g int) (int, Key)) ([][][]float32, error) {
	parts := make([][][]float32, s.gs)
	for g := range s.gs {
		if g == s.g {
			continue
		}
		rank, key := from(g)
		f, err := (&gatherSink{ring: s.ring}).recv(ctx, rank, key)
		if err != nil {
			return nil, fmt.Errorf("receiving the heads of group %d from rank %d: %w", g, rank, err)
		}
		if len(f.Tensors) != n {
			return nil, invalid("the heads of group %d: %d tensors, expected %d", g, len(f.Tensors), n)
		}
		parts[g] = f.Tensors
	}
	return parts, nil
}

// assemble lays tensor i of every group's part ([B, per, rows, D]) out as
// one [B, heads, rows, D] block.
func (s *gatherGradSink) assemble(parts [][][]float32, i, heads, per int) ([]float32, error) {
	n := len(parts[s.g][i]) / (s.p.B * per) // rows·D per head
	if n*s.p.B*per != len(parts[s.g][i]) {
		return nil, invalid("a part of %d values, expected a multiple of B·%d", len(parts[s.g][i]), per)
	}
	out := make([]float32, s.p.B*heads*n)
	for g, part := range parts {
		if len(part[i]) != s.p.B*per*n {
			return nil, invalid("the heads of group %d: %d values, expected %d", g, len(part[i]), s.p.B*per*n)
		}
		for b := range s.p.B {
			copy(out[(b*heads+g*per)*n:][:per*n], part[i][b*per*n:][:per*n])
		}
	}
	return out, nil
}
