package transport

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

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
// as [B, H, len, D], several blocks at once (TransferOptions' defaults;
// see PutTensors). It returns the number of blocks.
func (s *Store) PutTensor(ctx context.Context, job, tensor string, t []float32, sh Shape, blockLen int, enc Encoding) (int, error) {
	if err := s.PutTensors(ctx, job, []TensorData{{Name: tensor, Data: t, Shape: sh}}, blockLen, enc, TransferOptions{}); err != nil {
		return 0, err
	}
	return sh.Blocks(blockLen), nil
}

// GetTensor fetches every block of a tensor stored by PutTensor, several
// at once (TransferOptions' defaults; see GetTensors), and reassembles it.
func (s *Store) GetTensor(ctx context.Context, job, tensor string, sh Shape, blockLen int) ([]float32, error) {
	out, err := s.GetTensors(ctx, job, []TensorData{{Name: tensor, Shape: sh}}, blockLen, TransferOptions{})
	if err != nil {
		return nil, err
	}
	return out[0].Data, nil
}

// Transfer defaults of PutTensors and GetTensors.
const (
	// DefaultTransfers is how many blocks are in flight at once.
	DefaultTransfers = 4
	// DefaultTransferBytes bounds the float32 bytes of the blocks in
	// flight (fewer blocks move at once when they are large).
	DefaultTransferBytes = 256 << 20
	// MaxTransfers bounds TransferOptions.Blocks.
	MaxTransfers = 256
)

// TransferOptions tune PutTensors and GetTensors; zero values mean the
// defaults.
type TransferOptions struct {
	// Blocks is how many blocks are written or read at once, each on its
	// own goroutine (extracting, encoding and checksumming it too): 1 moves
	// them one after the other; default DefaultTransfers, at most
	// MaxTransfers.
	Blocks int
	// Bytes bounds the float32 bytes of the blocks in flight together
	// (at least one block is): default DefaultTransferBytes. An upload
	// holds about twice that (each block's values and its encoded bytes).
	Bytes int64
}

// inFlight returns how many blocks of at most blockBytes float32 bytes
// move at once, or an error for options out of range.
func (o TransferOptions) inFlight(blockBytes int64) (int, error) {
	if o.Blocks < 0 || o.Blocks > MaxTransfers {
		return 0, fmt.Errorf("%w: TransferOptions.Blocks = %d: want 0..%d (0: %d)", ErrInvalidConfig, o.Blocks, MaxTransfers, DefaultTransfers)
	}
	if o.Bytes < 0 {
		return 0, fmt.Errorf("%w: TransferOptions.Bytes = %d: want >= 0 (0: %d)", ErrInvalidConfig, o.Bytes, int64(DefaultTransferBytes))
	}
	n, budget := cmp.Or(o.Blocks, DefaultTransfers), cmp.Or(o.Bytes, DefaultTransferBytes)
	if blockBytes > 0 {
		n = min(n, max(1, int(min(budget/blockBytes, MaxTransfers))))
	}
	return n, nil
}

// TensorData is one tensor of PutTensors (Data is written) or GetTensors
// (Data is returned): its name and shape [B, H, N, D].
type TensorData struct {
	Name  string
	Data  []float32
	Shape Shape
}

// blockBytes is the float32 size of the largest block of a tensor.
func (sh Shape) blockBytes(blockLen int) int64 {
	_, n := sh.BlockRows(blockLen, 0)
	return 4 * int64(sh[0]) * int64(sh[1]) * int64(n) * int64(sh[3])
}

// blockOf returns block i of t: a slice of t itself when B·H = 1 (the
// block is contiguous; PutBlock only reads it), else ExtractBlock's copy.
func blockOf(t []float32, sh Shape, blockLen, i int) []float32 {
	if sh[0]*sh[1] == 1 {
		r0, n := sh.BlockRows(blockLen, i)
		return t[r0*sh[3] : (r0+n)*sh[3]]
	}
	return ExtractBlock(t, sh, blockLen, i)
}

// PutTensors stores the tensors ts of namespace ns as PutTensor stores
// one, with o.Blocks blocks in flight at once across all of them, each
// extracted, encoded, checksummed and written on its own goroutine.
//
// A tensor's last block is written after all its other blocks are, so a
// tensor whose upload did not finish (an error, ctx canceled) is never
// complete in the store: GetTensor and GetTensors, which check the last
// block first, fail with an error wrapping ErrBlockNotFound. Blocks
// larger than StoreConfig.MaxBlockBytes are refused before anything is
// written. The first failure (a full bucket: ErrStoreFull; ctx ended)
// stops the other transfers, and PutTensors returns once none runs; the
// blocks written stay (delete the namespace to free them).
func (s *Store) PutTensors(ctx context.Context, ns string, ts []TensorData, blockLen int, enc Encoding, o TransferOptions) error {
	var most int64
	for _, td := range ts {
		if err := td.Shape.check(fmt.Sprintf("job %q tensor %q", ns, td.Name), td.Data, blockLen); err != nil {
			return err
		}
		if err := validateRef(ns, td.Name, 0); err != nil {
			return err
		}
		bb := td.Shape.blockBytes(blockLen)
		if eb := bb / 4 * int64(enc.ElemBytes()); eb > s.cfg.MaxBlockBytes {
			return fmt.Errorf("%w: %s is %d bytes encoded as %v: want <= %d (StoreConfig.MaxBlockBytes; a shorter block length makes smaller blocks)",
				ErrTooLarge, BlockRef{ns, td.Name, 0}, eb, enc, s.cfg.MaxBlockBytes)
		}
		most = max(most, bb)
	}
	if !enc.valid() {
		return fmt.Errorf("%w: encoding %v: want F32 or BF16", ErrInvalidConfig, enc)
	}
	workers, err := o.inFlight(most)
	if err != nil {
		return err
	}
	// Every block but the last of each tensor, then the last ones.
	var body, last []tensorBlock
	for ti, td := range ts {
		nb := td.Shape.Blocks(blockLen)
		for i := range nb - 1 {
			body = append(body, tensorBlock{ti, i})
		}
		if nb > 0 {
			last = append(last, tensorBlock{ti, nb - 1})
		}
	}
	put := func(ctx context.Context, b tensorBlock) error {
		td := ts[b.t]
		// With the slab layout (one slab per batch and head): GetHeads
		// reads a range of heads without the others.
		return s.putBlock(ctx, ns, td.Name, b.i, blockOf(td.Data, td.Shape, blockLen, b.i), enc, nil, td.Shape[0]*td.Shape[1])
	}
	if err := forBlocks(ctx, body, workers, put); err != nil {
		return err
	}
	return forBlocks(ctx, last, workers, put)
}

// GetTensors fetches the tensors ts (Name and Shape; Data is ignored) of
// namespace ns as GetTensor fetches one, with o.Blocks blocks in flight at
// once across all of them, each read, verified and placed on its own
// goroutine. It returns ts with Data set. Each tensor's last block is
// checked first (an incomplete upload fails here, before the result is
// allocated by the caller's shape); the first failure stops the other
// reads, and GetTensors returns once none runs.
func (s *Store) GetTensors(ctx context.Context, ns string, ts []TensorData, blockLen int, o TransferOptions) ([]TensorData, error) {
	var most int64
	for _, td := range ts {
		if err := td.Shape.check(fmt.Sprintf("job %q tensor %q", ns, td.Name), nil, blockLen); err != nil {
			return nil, err
		}
		most = max(most, td.Shape.blockBytes(blockLen))
	}
	workers, err := o.inFlight(most)
	if err != nil {
		return nil, err
	}
	wrongSize := func(td TensorData, i, got int) error {
		sh := td.Shape
		_, n := sh.BlockRows(blockLen, i)
		if want := sh[0] * sh[1] * n * sh[3]; got != want {
			return &CorruptBlockError{Job: ns, Tensor: td.Name, Block: i,
				Reason: fmt.Sprintf("%d values, shape %v with block length %d needs %d", got, sh, blockLen, want)}
		}
		return nil
	}
	// The shape is the caller's claim: before sizing the result by it,
	// check the store holds each tensor's last block, of the size it
	// implies.
	var last, all []tensorBlock
	for ti, td := range ts {
		nb := td.Shape.Blocks(blockLen)
		for i := range nb {
			all = append(all, tensorBlock{ti, i})
		}
		if nb > 0 {
			last = append(last, tensorBlock{ti, nb - 1})
		}
	}
	err = forBlocks(ctx, last, workers, func(ctx context.Context, b tensorBlock) error {
		_, m, err := s.blockMeta(ctx, ns, ts[b.t].Name, b.i)
		if err != nil {
			return err
		}
		return wrongSize(ts[b.t], b.i, m.elems)
	})
	if err != nil {
		return nil, err
	}
	out := slices.Clone(ts)
	for i := range out {
		out[i].Data = make([]float32, out[i].Shape.elems())
	}
	err = forBlocks(ctx, all, workers, func(ctx context.Context, b tensorBlock) error {
		td := out[b.t]
		blk, err := s.GetBlock(ctx, ns, td.Name, b.i)
		if err != nil {
			return err
		}
		if err := wrongSize(td, b.i, len(blk)); err != nil {
			return err
		}
		InsertBlock(td.Data, td.Shape, blockLen, b.i, blk) // disjoint rows per block
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// tensorBlock is block i of tensor t (an index into a PutTensors or
// GetTensors argument).
type tensorBlock struct{ t, i int }

// forBlocks calls f on every block with at most workers calls running at
// once, each on its own goroutine, started in blocks' order. The first
// error cancels the context of the calls still running and starts no
// other; forBlocks returns it (ctx's error wrapped around it when ctx
// ended) once no call runs. It returns nil only when every call did.
func forBlocks(ctx context.Context, blocks []tensorBlock, workers int, f func(context.Context, tensorBlock) error) error {
	if len(blocks) == 0 {
		return nil
	}
	workers = max(1, min(workers, len(blocks)))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		mu         sync.Mutex
		firstErr   error
		wg         sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for cctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(blocks) {
					return
				}
				if err := f(cctx, blocks[i]); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	switch {
	case firstErr == nil && int(done.Load()) == len(blocks):
		return nil
	case firstErr == nil:
		return ctx.Err() // ended between two calls
	case ctx.Err() != nil && !errors.Is(firstErr, ctx.Err()):
		return fmt.Errorf("%w (%w)", ctx.Err(), firstErr)
	}
	return firstErr
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
	return g.s.putBlock(ctx, g.ns, TensorDQ, block, dq, F32, epochMeta(epoch), 0)
}

func (g storeGradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	if err := g.s.putBlock(ctx, g.ns, TensorDK, block, dk, F32, epochMeta(epoch), 0); err != nil {
		return err
	}
	return g.s.putBlock(ctx, g.ns, TensorDV, block, dv, F32, epochMeta(epoch), 0)
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
