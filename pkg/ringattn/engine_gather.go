package ringattn

import (
	"context"
	"errors"
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// KindHeadOut is a head group's share of an output block on its way to the
// block's writer (a head-group plan over a Sink that takes whole blocks
// only): Tensors = [O, LSE] of the group's query heads, [B, Hq/G, len, D]
// and [B, Hq/G, len]; Step is the sending group, Block the query block.
const KindHeadOut Kind = 5

// gatherSink is a head group's Sink when the real Sink takes whole blocks
// (a store object holds every head of a block): each output block b has
// one writer, the rank owning block b of head group b mod G (so the writes
// spread over the groups). The other groups' owners of b send it their
// heads (KindHeadOut); the writer waits for them, assembles the block and
// writes it. Ranks put their blocks in ascending order and send before
// they wait, so the writer of b has every part it waits for sent once its
// senders finished their blocks below b: no cycle of waits.
type gatherSink struct {
	ring  Ring // the plan's ring, all groups
	plan  *shard.Plan
	p     *kernels.Params // the whole problem
	hs    *headSlice
	g     int
	sink  Sink
	owner map[int]int // query unit -> rank
}

func newGatherSink(cfg RankConfig, hs *headSlice, g int) (*gatherSink, error) {
	plan := cfg.Plan
	s := &gatherSink{ring: cfg.Ring, plan: plan, p: cfg.Params, hs: hs, g: g, sink: cfg.Sink, owner: map[int]int{}}
	for r, rk := range plan.Ranks {
		for _, u := range rk.QBlocks {
			s.owner[u] = r
		}
	}
	for _, u := range plan.Planned {
		_, b := plan.QUnit(u)
		for gg := range plan.Groups() {
			if _, ok := s.owner[gg*plan.QBlockCount+b]; !ok {
				return nil, invalid("%s plans query block %d for head group %d but not for group %d: a sink without head ranges (%T) needs every group of a block",
					plan, b, plan.Group(s.owner[u]), gg, cfg.Sink)
			}
		}
	}
	return s, nil
}

// writerGroup is the head group whose owner of block b writes it.
func (s *gatherSink) writerGroup(b int) int { return b % s.plan.Groups() }

func (s *gatherSink) Put(ctx context.Context, b int, o, lse []float32) error {
	qbc := s.plan.QBlockCount
	wg := s.writerGroup(b)
	if s.g != wg {
		to := s.owner[wg*qbc+b]
		f := Frame{Key: Key{Kind: KindHeadOut, Step: s.g, Block: b}, Tensors: [][]float32{o, lse}}
		if err := s.ring.Send(ctx, to, f); err != nil {
			return fmt.Errorf("sending heads %d..%d of output block %d to its writer, rank %d: %w", s.hs.qlo, s.hs.qhi-1, b, to, err)
		}
		return nil
	}
	p := s.p
	_, rows := s.plan.QSpan(b)
	per := p.Hq / s.plan.Groups()
	fo := make([]float32, p.B*p.Hq*rows*p.D)
	fl := make([]float32, p.B*p.Hq*rows)
	place := func(g int, po, pl []float32) error {
		if len(po) != p.B*per*rows*p.D || len(pl) != p.B*per*rows {
			return invalid("heads of group %d of output block %d: %d/%d values, expected %d/%d", g, b, len(po), len(pl), p.B*per*rows*p.D, p.B*per*rows)
		}
		for bi := range p.B {
			n := per * rows
			copy(fo[(bi*p.Hq+g*per)*rows*p.D:][:n*p.D], po[bi*n*p.D:][:n*p.D])
			copy(fl[(bi*p.Hq+g*per)*rows:][:n], pl[bi*n:][:n])
		}
		return nil
	}
	if err := place(s.g, o, lse); err != nil {
		return err
	}
	for g := range s.plan.Groups() {
		if g == s.g {
			continue
		}
		from := s.owner[g*qbc+b]
		f, err := s.recv(ctx, from, Key{Kind: KindHeadOut, Step: g, Block: b})
		if err != nil {
			return fmt.Errorf("receiving heads of group %d of output block %d from rank %d: %w", g, b, from, err)
		}
		if len(f.Tensors) != 2 {
			return invalid("heads of group %d of output block %d: %d tensors, expected o and lse", g, b, len(f.Tensors))
		}
		if err := place(g, f.Tensors[0], f.Tensors[1]); err != nil {
			return err
		}
	}
	return s.sink.Put(ctx, b, fo, fl)
}

// recv waits for a part: the sender may still be computing, so receive
// timeouts are waited out (a lost peer ends the epoch, and ctx with it).
func (s *gatherSink) recv(ctx context.Context, from int, key Key) (Frame, error) {
	for {
		f, err := s.ring.Recv(ctx, from, key)
		if errors.Is(err, ErrTimeout) && ctx.Err() == nil {
			continue
		}
		return f, err
	}
}
