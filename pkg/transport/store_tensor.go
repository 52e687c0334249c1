package transport

import (
	"context"
	"fmt"
	"math"
	"strconv"

	"github.com/ringattn/ringattn/pkg/ringattn"
)

// Layout of a [B, H, N, D] tensor cut into blocks of blockLen rows along N.

// Shape is a tensor shape [B, H, N, D]; lse tensors use D = 1.
type Shape [4]int

func (sh Shape) elems() int { return sh[0] * sh[1] * sh[2] * sh[3] }

// Blocks returns how many blocks of blockLen (>= 1) rows cover N (the
// last one ragged).
func (sh Shape) Blocks(blockLen int) int {
	if sh[2] <= 0 || blockLen < 1 {
		return 0
	}
	return (sh[2]-1)/blockLen + 1 // N + blockLen - 1 could overflow
}

// MaxTensorValues bounds a tensor's values: its float32 bytes fit an int.
const MaxTensorValues = math.MaxInt / 4

// BlockRows returns the first row and the row count of block i.
func (sh Shape) BlockRows(blockLen, i int) (start, n int) {
	start = i * blockLen
	return start, min(blockLen, sh[2]-start)
}

func (sh Shape) check(what string, data []float32, blockLen int) error {
	for i, d := range sh {
		if d < 0 || (d == 0 && i != 2) {
			return fmt.Errorf("%w: %s shape %v: dimension %d is %d, want >= 1", ErrInvalidShape, what, sh, i, d)
		}
	}
	if blockLen < 1 {
		return fmt.Errorf("%w: %s block length %d: want >= 1", ErrInvalidShape, what, blockLen)
	}
	n := 1
	for _, d := range sh {
		if d > 0 && n > MaxTensorValues/d {
			return fmt.Errorf("%w: %s shape %v: more than %d values", ErrInvalidShape, what, sh, MaxTensorValues)
		}
		n *= d
	}
	if data != nil && len(data) != sh.elems() {
		return fmt.Errorf("%w: %s has %d values, shape %v needs %d", ErrInvalidShape, what, len(data), sh, sh.elems())
	}
	return nil
}

// ExtractBlock copies block i of t (shape sh) out as [B, H, len, D].
func ExtractBlock(t []float32, sh Shape, blockLen, i int) []float32 {
	r0, n := sh.BlockRows(blockLen, i)
	B, H, N, D := sh[0], sh[1], sh[2], sh[3]
	out := make([]float32, 0, B*H*n*D)
	for bh := range B * H {
		off := (bh*N + r0) * D
		out = append(out, t[off:off+n*D]...)
	}
	return out
}

// InsertBlock copies blk ([B, H, len, D]) into block i of t (shape sh).
func InsertBlock(t []float32, sh Shape, blockLen, i int, blk []float32) {
	r0, n := sh.BlockRows(blockLen, i)
	B, H, N, D := sh[0], sh[1], sh[2], sh[3]
	for bh := range B * H {
		copy(t[(bh*N+r0)*D:(bh*N+r0+n)*D], blk[bh*n*D:(bh+1)*n*D])
	}
}

// PutTensor stores t (shape [B, H, N, D]) as Shape.Blocks(blockLen) blocks,
// block i holding rows [i·blockLen, min((i+1)·blockLen, N)) of every (b, h)
// as [B, H, len, D]. It returns the number of blocks.
func (s *Store) PutTensor(ctx context.Context, job, tensor string, t []float32, sh Shape, blockLen int, enc Encoding) (int, error) {
	if err := sh.check(fmt.Sprintf("job %q tensor %q", job, tensor), t, blockLen); err != nil {
		return 0, err
	}
	nb := sh.Blocks(blockLen)
	for i := range nb {
		if err := s.PutBlock(ctx, job, tensor, i, ExtractBlock(t, sh, blockLen, i), enc); err != nil {
			return i, err
		}
	}
	return nb, nil
}

// GetTensor fetches every block of a tensor stored by PutTensor and
// reassembles it.
func (s *Store) GetTensor(ctx context.Context, job, tensor string, sh Shape, blockLen int) ([]float32, error) {
	if err := sh.check(fmt.Sprintf("job %q tensor %q", job, tensor), nil, blockLen); err != nil {
		return nil, err
	}
	nb := sh.Blocks(blockLen)
	wrongSize := func(i, got int) error {
		_, n := sh.BlockRows(blockLen, i)
		if want := sh[0] * sh[1] * n * sh[3]; got != want {
			return &CorruptBlockError{Job: job, Tensor: tensor, Block: i,
				Reason: fmt.Sprintf("%d values, shape %v with block length %d needs %d", got, sh, blockLen, want)}
		}
		return nil
	}
	// The shape is the caller's claim: before sizing the result by it,
	// check the store holds its last block, of the size it implies.
	if nb > 0 {
		_, m, err := s.blockMeta(ctx, job, tensor, nb-1)
		if err != nil {
			return nil, err
		}
		if err := wrongSize(nb-1, m.elems); err != nil {
			return nil, err
		}
	}
	t := make([]float32, sh.elems())
	for i := range nb {
		blk, err := s.GetBlock(ctx, job, tensor, i)
		if err != nil {
			return nil, err
		}
		if err := wrongSize(i, len(blk)); err != nil {
			return nil, err
		}
		InsertBlock(t, sh, blockLen, i, blk)
	}
	return t, nil
}

// Source returns a ringattn.Source reading job's blocks from s.
func (s *Store) Source(job string) ringattn.Source { return storeSource{s, job} }

// Sink returns a ringattn.Sink writing job's output blocks to s as tensors
// "o" and "lse", float32 (outputs are never narrowed).
func (s *Store) Sink(job string) ringattn.Sink { return storeSink{s, job} }

// Gradient tensors of a backward job, written by GradSink: "dq" by query
// block ([B, Hq, len, D]), "dk" and "dv" by key block ([B, Hkv, len, D]).
const (
	TensorDO = "do"
	TensorDQ = "dq"
	TensorDK = "dk"
	TensorDV = "dv"
)

// GradSink returns a ringattn.GradSink writing the gradient blocks of
// namespace ns to s as float32 tensors "dq" (PutDQ, by query block) and
// "dk", "dv" (PutDKV, by key block), the writing epoch in each block's
// metadata (BlockInfo.Epoch). Every write a GradSink receives is complete
// (ringattn's fencing rule): a later write of a block already written —
// another epoch recomputing it after a re-plan — replaces it with an equal
// gradient, so overwriting is exact and no write is skipped. A partial
// sum never reaches the sink, so no epoch's partial dK/dV is ever added
// to another's.
//
// The store Source of the same job serves the backward's inputs by name:
// "q", "o", "do" and "lse" by query block, "k" and "v" by key block.
func (s *Store) GradSink(ns string) ringattn.GradSink { return storeGradSink{s, ns} }

type storeGradSink struct {
	s  *Store
	ns string
}

func epochMeta(epoch uint64) map[string]string {
	return map[string]string{metaEpoch: strconv.FormatUint(epoch, 10)}
}

func (g storeGradSink) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error {
	return g.s.putBlock(ctx, g.ns, TensorDQ, block, dq, F32, epochMeta(epoch))
}

func (g storeGradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	if err := g.s.putBlock(ctx, g.ns, TensorDK, block, dk, F32, epochMeta(epoch)); err != nil {
		return err
	}
	return g.s.putBlock(ctx, g.ns, TensorDV, block, dv, F32, epochMeta(epoch))
}

type storeSource struct {
	s   *Store
	job string
}

func (src storeSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	return src.s.GetBlock(ctx, src.job, tensor, block)
}

type storeSink struct {
	s   *Store
	job string
}

func (snk storeSink) Put(ctx context.Context, block int, o, lse []float32) error {
	if err := snk.s.PutBlock(ctx, snk.job, TensorO, block, o, F32); err != nil {
		return err
	}
	return snk.s.PutBlock(ctx, snk.job, TensorLSE, block, lse, F32)
}
