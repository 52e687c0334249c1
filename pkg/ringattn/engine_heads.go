package ringattn

import (
	"context"
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// Head-group plans (shard.Plan.HeadGroups > 1, or strategy heads): rank r
// belongs to head group g = r / R (R = W/G ranks per group) and runs group
// g's plan (shard.Plan.GroupPlan) over the group's heads only: its query
// heads [g·Hq/G, (g+1)·Hq/G) and key/value heads [g·Hkv/G, (g+1)·Hkv/G).
// The tensors are head-major ([B, H, n, D]), so a head range of a block is
// a sub-slice when B = 1 and a gather otherwise. The group's ring is the
// plan's ring restricted to the group's ranks (groupRing), so frames only
// ever travel between ranks of one group; the Source is read through a
// head filter and the Sink must accept head ranges (HeadSink).

// HeadSink is implemented by a Sink that accepts the output of a range of
// query heads: o is [B, h1-h0, len, D] and lse [B, h1-h0, len] of query
// block `block`, heads [h0, h1) of Hq. Ranks of head-group plans write
// through it; MemSink implements it.
type HeadSink interface {
	PutHeads(ctx context.Context, block, h0, h1 int, o, lse []float32) error
}

// HeadFetcher is optionally implemented by a Source that can serve a range
// of heads of a block without reading the others: [B, h1-h0, len, D]
// (lse: [B, h1-h0, len]) of heads [h0, h1) of the tensor's H (Hq for
// "q", "o", "do", "lse"; Hkv for "k", "v"). Ranks of head-group plans then
// read only their heads; without it they read whole blocks and cut them.
type HeadFetcher interface {
	FetchHeads(ctx context.Context, tensor string, block, h0, h1 int) ([]float32, error)
}

// IsHeadPlan reports whether plan splits the heads among its ranks (head
// groups or strategy heads): its ranks run through RunRank's head-group
// path and its lists hold units (see shard.Plan.HeadGroups).
func IsHeadPlan(plan *shard.Plan) bool {
	return plan != nil && (plan.Groups() > 1 || plan.Strategy == shard.Heads)
}

// headSlice cuts tensors of the whole problem to one head group's heads.
type headSlice struct {
	b, hq, hkv, d      int
	qlo, qhi, klo, khi int
}

func newHeadSlice(p *kernels.Params, plan *shard.Plan, g int) *headSlice {
	hs := &headSlice{b: p.B, hq: p.Hq, hkv: p.Hkv, d: p.D}
	hs.qlo, hs.qhi = plan.QHeads(g)
	hs.klo, hs.khi = plan.KVHeads(g)
	return hs
}

// heads returns the tensor's head count and the group's range of it.
func (h *headSlice) heads(tensor string) (total, lo, hi int) {
	if tensor == "k" || tensor == "v" || tensor == "dk" || tensor == "dv" {
		return h.hkv, h.klo, h.khi
	}
	return h.hq, h.qlo, h.qhi
}

// cut returns the group's heads of full, [B, total, rows(, D)]: a
// sub-slice when B = 1, else a copy.
func (h *headSlice) cut(tensor string, full []float32) ([]float32, error) {
	total, lo, hi := h.heads(tensor)
	per := len(full) / (h.b * total)
	if per*h.b*total != len(full) {
		return nil, invalid("%s block of %d values, expected a multiple of B·H = %d", tensor, len(full), h.b*total)
	}
	if h.b == 1 {
		return full[lo*per : hi*per : hi*per], nil
	}
	n := hi - lo
	out := make([]float32, h.b*n*per)
	for bi := range h.b {
		copy(out[bi*n*per:(bi+1)*n*per], full[(bi*total+lo)*per:(bi*total+hi)*per])
	}
	return out, nil
}

// groupParams is p over the heads of one group of plan.
func groupParams(p *kernels.Params, plan *shard.Plan) *kernels.Params {
	gp := *p
	gp.Hq, gp.Hkv = p.Hq/plan.Groups(), p.Hkv/plan.Groups()
	return &gp
}

// groupRing is the ring of one head group: ranks base .. base+size-1 of
// the plan's ring, numbered from 0.
type groupRing struct {
	ring       Ring
	base, size int
}

func (g *groupRing) Rank() int { return g.ring.Rank() - g.base }
func (g *groupRing) Size() int { return g.size }
func (g *groupRing) Send(ctx context.Context, to int, f Frame) error {
	return g.ring.Send(ctx, g.base+to, f)
}
func (g *groupRing) Recv(ctx context.Context, from int, key Key) (Frame, error) {
	return g.ring.Recv(ctx, g.base+from, key)
}

// sharingGroupRing is a groupRing over a FrameSharer ring.
type sharingGroupRing struct{ *groupRing }

func (sharingGroupRing) SharesFrames() bool { return true }

func newGroupRing(r Ring, plan *shard.Plan, g int) Ring {
	gr := &groupRing{ring: r, base: g * plan.GroupRanks(), size: plan.GroupRanks()}
	if fs, ok := r.(FrameSharer); ok && fs.SharesFrames() {
		return sharingGroupRing{gr}
	}
	return gr
}

// headSource reads a Source through a head group's filter.
type headSource struct {
	src Source
	hs  *headSlice
}

func (s *headSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	if hf, ok := s.src.(HeadFetcher); ok {
		_, lo, hi := s.hs.heads(tensor)
		return hf.FetchHeads(ctx, tensor, block, lo, hi)
	}
	full, err := s.src.Fetch(ctx, tensor, block)
	if err != nil {
		return nil, err
	}
	return s.hs.cut(tensor, full)
}

// headRunSource is a headSource over a RunSource.
type headRunSource struct{ *headSource }

func (s headRunSource) FetchRun(ctx context.Context, tensor string, first, count int) ([]float32, error) {
	full, err := s.src.(RunSource).FetchRun(ctx, tensor, first, count)
	if err != nil {
		return nil, err
	}
	return s.hs.cut(tensor, full)
}

// headViewSource is a headRunSource over a ViewSource with B = 1: the
// group's heads of a view are a sub-view with the same stride.
type headViewSource struct{ headRunSource }

func (s headViewSource) View(ctx context.Context, tensor string, first, count int) ([]float32, int, error) {
	data, stride, err := s.src.(ViewSource).View(ctx, tensor, first, count)
	if err != nil {
		return nil, 0, err
	}
	total, lo, hi := s.hs.heads(tensor)
	// Head h starts at row h·stride; the last head's rows end the data.
	d := s.hs.d
	if stride < 1 || len(data)%d != 0 || len(data)/d <= (total-1)*stride {
		return nil, 0, invalid("%s view of %d values with stride %d does not hold %d heads", tensor, len(data), stride, total)
	}
	rows := len(data)/d - (total-1)*stride
	return data[lo*stride*d : ((hi-1)*stride+rows)*d : ((hi-1)*stride+rows)*d], stride, nil
}

func newHeadSource(src Source, hs *headSlice) Source {
	base := &headSource{src: src, hs: hs}
	if _, ok := src.(HeadFetcher); ok {
		return base // block by block, each read cut to the heads at the source
	}
	if _, ok := src.(RunSource); !ok {
		return base
	}
	if _, ok := src.(ViewSource); ok && hs.b == 1 {
		return headViewSource{headRunSource{base}}
	}
	return headRunSource{base}
}

// headSink writes a group's output blocks into a HeadSink.
type headSink struct {
	sink HeadSink
	hs   *headSlice
}

func (s *headSink) Put(ctx context.Context, block int, o, lse []float32) error {
	return s.sink.PutHeads(ctx, block, s.hs.qlo, s.hs.qhi, o, lse)
}

// runHeadRank is RunRank for a head-group plan (cfg validated).
func runHeadRank(ctx context.Context, cfg RankConfig) error {
	plan, rank := cfg.Plan, cfg.Ring.Rank()
	g := plan.Group(rank)
	sub := plan.GroupPlan(g)
	if len(sub.Planned) == 0 { // a re-plan left this group nothing to do
		if cfg.Progress != nil {
			cfg.Progress(Progress{Rank: rank, Step: sub.Steps, Steps: sub.Steps, Done: true})
		}
		return nil
	}
	hs := newHeadSlice(cfg.Params, plan, g)
	sc := cfg
	sc.Params, sc.Plan = groupParams(cfg.Params, plan), sub
	sc.Ring = newGroupRing(cfg.Ring, plan, g)
	sc.Source = newHeadSource(cfg.Source, hs)
	if hsink, ok := cfg.Sink.(HeadSink); ok {
		sc.Sink = &headSink{sink: hsink, hs: hs}
	} else {
		gs, err := newGatherSink(cfg, hs, g)
		if err != nil {
			return err
		}
		sc.Sink = gs
	}
	if cfg.Progress != nil {
		sc.Progress = func(p Progress) {
			p.Rank = rank
			cfg.Progress(p)
		}
	}
	if cfg.Logger != nil {
		sc.Logger = cfg.Logger.With("head_group", g)
	}
	if err := RunRank(ctx, sc); err != nil {
		return fmt.Errorf("head group %d: %w", g, err)
	}
	return nil
}

// PutHeads copies query heads [h0, h1) of output block `block` into place
// (see HeadSink); the block counts as written once all its planned head
// groups wrote it.
func (s *MemSink) PutHeads(ctx context.Context, block, h0, h1 int, o, lse []float32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if block < 0 || block >= len(s.puts) {
		return invalid("output block %d, expected within 0..%d", block, len(s.puts)-1)
	}
	if h0 < 0 || h1 > s.hq || h0 >= h1 {
		return invalid("heads %d..%d, expected within 0..%d", h0, h1-1, s.hq-1)
	}
	start := block * s.block
	rows := min(s.block, s.n-start)
	nh := h1 - h0
	if len(o) != s.b*nh*rows*s.d || len(lse) != s.b*nh*rows {
		return invalid("output block %d heads %d..%d have %d/%d values, expected %d/%d", block, h0, h1-1, len(o), len(lse), s.b*nh*rows*s.d, s.b*nh*rows)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for bi := range s.b {
		off := bi*s.hq + h0
		scatter(s.o[off*s.n*s.d:], o[bi*nh*rows*s.d:(bi+1)*nh*rows*s.d], nh, s.n, start, rows, s.d)
		scatter(s.lse[off*s.n:], lse[bi*nh*rows:(bi+1)*nh*rows], nh, s.n, start, rows, 1)
	}
	s.puts[block]++
	return nil
}

// checkPlanned reports a planned block (or, for a head-group plan, unit)
// that was not written exactly once: a block of a head-group plan is
// written once per head group that plans it.
func (s *MemSink) checkPlanned(plan *shard.Plan) error {
	if !IsHeadPlan(plan) {
		return s.checkComplete(plan.Planned)
	}
	want := map[int]int{}
	for _, u := range plan.Planned {
		_, b := plan.QUnit(u)
		want[b]++
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for b, n := range want {
		if s.puts[b] != n {
			return fmt.Errorf("ringattn: output block %d written %d times, expected once by each of %d head groups", b, s.puts[b], n)
		}
	}
	return nil
}
