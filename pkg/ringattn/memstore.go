package ringattn

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// MemSource serves blocks of whole in-memory tensors q [B,Hq,N,D] and k, v
// [B,Hkv,Nk,D], cut into blocks of Block tokens (the last one ragged); a
// source made by NewMemGradSource also serves the backward's inputs o and
// do [B,Hq,N,D] and lse [B,Hq,N] by query block.
type MemSource struct {
	b, hq, hkv, d, n, nk, block int
	q, k, v                     []float32
	o, lse, do                  []float32 // nil unless made by NewMemGradSource
	fetches                     [6]atomic.Int64
}

// NewMemSource checks the tensors' lengths against p and returns a Source
// over them. The tensors are read, never written.
func NewMemSource(p *kernels.Params, block int, q, k, v []float32) (*MemSource, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if block < 1 {
		return nil, invalid("block = %d, expected >= 1", block)
	}
	if want := p.B * p.Hq * p.N * p.D; len(q) != want {
		return nil, invalid("q has %d values, expected %d ([%d,%d,%d,%d])", len(q), want, p.B, p.Hq, p.N, p.D)
	}
	want := p.B * p.Hkv * p.Nk * p.D
	if len(k) != want {
		return nil, invalid("k has %d values, expected %d ([%d,%d,%d,%d])", len(k), want, p.B, p.Hkv, p.Nk, p.D)
	}
	if len(v) != want {
		return nil, invalid("v has %d values, expected %d ([%d,%d,%d,%d])", len(v), want, p.B, p.Hkv, p.Nk, p.D)
	}
	return &MemSource{b: p.B, hq: p.Hq, hkv: p.Hkv, d: p.D, n: p.N, nk: p.Nk, block: block, q: q, k: k, v: v}, nil
}

// NewMemGradSource is NewMemSource that also serves the forward's output o
// [B,Hq,N,D], its log-sum-exp lse [B,Hq,N] and the output gradient do
// [B,Hq,N,D] as tensors "o", "lse" and "do" by query block: the inputs of
// RunRankBackward.
func NewMemGradSource(p *kernels.Params, block int, q, k, v, o, lse, do []float32) (*MemSource, error) {
	s, err := NewMemSource(p, block, q, k, v)
	if err != nil {
		return nil, err
	}
	if want := p.B * p.Hq * p.N * p.D; len(o) != want || len(do) != want {
		return nil, invalid("o and do have %d and %d values, expected %d ([%d,%d,%d,%d])", len(o), len(do), want, p.B, p.Hq, p.N, p.D)
	}
	if want := p.B * p.Hq * p.N; len(lse) != want {
		return nil, invalid("lse has %d values, expected %d ([%d,%d,%d])", len(lse), want, p.B, p.Hq, p.N)
	}
	s.o, s.lse, s.do = o, lse, do
	return s, nil
}

var tensorIndex = map[string]int{"q": 0, "k": 1, "v": 2, "o": 3, "lse": 4, "do": 5}

// Fetch returns block `block` of tensor "q", "k" or "v" as [B, H, len, D]
// (a copy, or a view when B·H == 1); also "o", "do" ([B, Hq, len, D]) and
// "lse" ([B, Hq, len]) for a source made by NewMemGradSource.
func (s *MemSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	return s.FetchRun(ctx, tensor, block, 1)
}

// FetchRun returns blocks first .. first+count-1 of tensor "q", "k" or "v"
// as one [B, H, rows, D] slice (a copy, or a view when B·H == 1).
func (s *MemSource) FetchRun(ctx context.Context, tensor string, first, count int) ([]float32, error) {
	src, heads, n, start, rows, err := s.locate(ctx, tensor, first, count)
	if err != nil {
		return nil, err
	}
	d := s.d
	if tensor == "lse" {
		d = 1
	}
	if s.b*heads == 1 {
		return src[start*d : (start+rows)*d : (start+rows)*d], nil
	}
	return gather(src, s.b*heads, n, start, rows, d), nil
}

// locate checks a request and returns the tensor, its heads and length, and
// the requested rows; it counts the blocks served.
func (s *MemSource) locate(ctx context.Context, tensor string, first, count int) (src []float32, heads, n, start, rows int, err error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, 0, 0, err
	}
	switch tensor {
	case "q":
		src, heads, n = s.q, s.hq, s.n
	case "k":
		src, heads, n = s.k, s.hkv, s.nk
	case "v":
		src, heads, n = s.v, s.hkv, s.nk
	case "o", "lse", "do":
		if s.o == nil {
			return nil, 0, 0, 0, 0, invalid("tensor %q: the source has no backward inputs (see NewMemGradSource)", tensor)
		}
		src, heads, n = map[string][]float32{"o": s.o, "lse": s.lse, "do": s.do}[tensor], s.hq, s.n
	default:
		return nil, 0, 0, 0, 0, invalid("tensor %q, expected \"q\", \"k\", \"v\", \"o\", \"lse\" or \"do\"", tensor)
	}
	blocks := (n + s.block - 1) / s.block
	if first < 0 || count < 1 || first+count > blocks {
		return nil, 0, 0, 0, 0, invalid("%s blocks %d..%d, expected within 0..%d", tensor, first, first+count-1, blocks-1)
	}
	start = first * s.block
	rows = min(count*s.block, n-start)
	s.fetches[tensorIndex[tensor]].Add(int64(count))
	return src, heads, n, start, rows, nil
}

// View lends blocks first .. first+count-1 of tensor "q", "k" or "v" in
// place: head (b, h) starts at row (b·H+h)·stride of data (see ViewSource).
func (s *MemSource) View(ctx context.Context, tensor string, first, count int) (data []float32, stride int, err error) {
	if tensor == "lse" {
		return nil, 0, invalid("tensor %q cannot be lent as a view of D-wide rows", tensor)
	}
	src, heads, n, start, rows, err := s.locate(ctx, tensor, first, count)
	if err != nil {
		return nil, 0, err
	}
	end := ((s.b*heads-1)*n + start + rows) * s.d
	return src[start*s.d : end : end], n, nil
}

// Fetches returns how many times Fetch served tensor ("q", "k" or "v").
func (s *MemSource) Fetches(tensor string) int64 {
	i, ok := tensorIndex[tensor]
	if !ok {
		return 0
	}
	return s.fetches[i].Load()
}

// gather copies rows [start, start+rows) of each of bh [n, d] matrices.
func gather(src []float32, bh, n, start, rows, d int) []float32 {
	out := make([]float32, bh*rows*d)
	for i := range bh {
		copy(out[i*rows*d:(i+1)*rows*d], src[(i*n+start)*d:(i*n+start+rows)*d])
	}
	return out
}

// scatter is the inverse of gather.
func scatter(dst, blk []float32, bh, n, start, rows, d int) {
	scatterView(dst, blk, bh, n, start, rows, d, rows, 0)
}

// scatterView is scatter from rows [at, at+rows) of a view blk of
// [bh, stride, d].
func scatterView(dst, blk []float32, bh, n, start, rows, d, stride, at int) {
	for i := range bh {
		copy(dst[(i*n+start)*d:(i*n+start+rows)*d], blk[(i*stride+at)*d:(i*stride+at+rows)*d])
	}
}

// MemSink assembles output blocks into whole tensors O [B,Hq,N,D] and
// LSE [B,Hq,N], counting how often each block was written.
type MemSink struct {
	b, hq, d, n, block int
	mu                 sync.Mutex
	o, lse             []float32
	puts               []int
}

// NewMemSink returns an empty sink for the problem p cut into blocks of
// `block` tokens.
func NewMemSink(p *kernels.Params, block int) (*MemSink, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if block < 1 {
		return nil, invalid("block = %d, expected >= 1", block)
	}
	return &MemSink{b: p.B, hq: p.Hq, d: p.D, n: p.N, block: block,
		o:    make([]float32, p.B*p.Hq*p.N*p.D),
		lse:  make([]float32, p.B*p.Hq*p.N),
		puts: make([]int, (p.N+block-1)/block)}, nil
}

// Put copies output block `block` into place.
func (s *MemSink) Put(ctx context.Context, block int, o, lse []float32) error {
	return s.PutRun(ctx, block, 1, o, lse)
}

// PutRun copies output blocks first .. first+count-1 into place.
func (s *MemSink) PutRun(ctx context.Context, first, count int, o, lse []float32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if first < 0 || count < 1 || first+count > len(s.puts) {
		return invalid("output blocks %d..%d, expected within 0..%d", first, first+count-1, len(s.puts)-1)
	}
	start := first * s.block
	rows := min(count*s.block, s.n-start)
	bh := s.b * s.hq
	if len(o) != bh*rows*s.d || len(lse) != bh*rows {
		return invalid("output blocks %d..%d have %d/%d values, expected %d/%d", first, first+count-1, len(o), len(lse), bh*rows*s.d, bh*rows)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	scatter(s.o, o, bh, s.n, start, rows, s.d)
	scatter(s.lse, lse, bh, s.n, start, rows, 1)
	for b := first; b < first+count; b++ {
		s.puts[b]++
	}
	return nil
}

// Puts returns how many times output block `block` was written (0 for a
// block out of range).
func (s *MemSink) Puts(block int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if block < 0 || block >= len(s.puts) {
		return 0
	}
	return s.puts[block]
}

// Result returns the assembled O and LSE (shared, not copies).
func (s *MemSink) Result() (o, lse []float32) { return s.o, s.lse }

// checkComplete reports a block that was not written exactly once.
func (s *MemSink) checkComplete(planned []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range planned {
		if s.puts[b] != 1 {
			return fmt.Errorf("ringattn: output block %d written %d times, expected once", b, s.puts[b])
		}
	}
	return nil
}
