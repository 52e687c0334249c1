package worker

import (
	"context"
	"fmt"
	"sync"

	"github.com/ringattn/ringattn/pkg/transport"
)

// runTransfers is how many blocks of a run a rank reads or writes at once
// (FetchRun, PutRun): each transfer is a few store round trips, which
// then overlap.
const runTransfers = 4

// forRun calls f(i) for i in 0..n-1, at most runTransfers at once, and
// returns the first error (the others still finish; ctx tells them to
// stop). A panic of f is contained by w (it runs on goroutines of its
// own, out of the rank guard's reach).
func forRun(ctx context.Context, w *Worker, n int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, runTransfers)
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := func() (err error) {
				defer w.contain("a run's block transfer", &err)
				return f(ctx, i)
			}(); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
				cancel()
			}
		})
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

// FetchRun reads blocks first .. first+count-1 of a tensor, several at
// once, and returns them as one run, [B, H, rows, D] over their rows
// (ringattn.RunSource). Every block is checked as Fetch checks it.
func (s *checkedSource) FetchRun(ctx context.Context, tensor string, first, count int) ([]float32, error) {
	heads := s.hq
	if tensor == transport.TensorK || tensor == transport.TensorV {
		heads = s.hkv
	}
	bh := s.b * heads
	if count < 1 || bh < 1 {
		return nil, fmt.Errorf("%w: a run of %d blocks of %d batch × heads", ErrInvalidAssignment, count, bh)
	}
	blocks := make([][]float32, count)
	err := forRun(ctx, s.w, count, func(ctx context.Context, i int) error {
		x, err := s.Fetch(ctx, tensor, first+i)
		if err == nil && len(x)%bh != 0 {
			err = fmt.Errorf("%w: %s block %d of %d values is not %d heads", transport.ErrInvalidShape, tensor, first+i, len(x), bh)
		}
		blocks[i] = x
		return err
	})
	if err != nil {
		return nil, err
	}
	total := 0
	for _, x := range blocks {
		total += len(x)
	}
	// Head (b, h) of the run is its blocks' heads (b, h) one after the
	// other.
	out := make([]float32, total)
	per, off := total/bh, 0
	for _, x := range blocks {
		n := len(x) / bh
		for i := range bh {
			copy(out[i*per+off:i*per+off+n], x[i*n:(i+1)*n])
		}
		off += n
	}
	return out, nil
}

// PutRun writes output blocks first .. first+count-1 from one run, o
// [B, Hq, rows, D] and lse [B, Hq, rows] over their rows
// (ringattn.RunSink), several blocks at once.
func (s *attnSink) PutRun(ctx context.Context, first, count int, o, lse []float32) error {
	bh := s.b * s.hq
	rows := 0
	for i := range count {
		_, n := s.span(first + i)
		rows += n
	}
	if count < 1 || bh < 1 || rows < 1 || len(lse) != bh*rows || len(o) != bh*rows*s.d {
		return fmt.Errorf("%w: output run of blocks %d..%d: %d/%d values for %d heads of %d rows (D=%d)",
			transport.ErrInvalidShape, first, first+count-1, len(o), len(lse), bh, rows, s.d)
	}
	return forRun(ctx, s.wk, count, func(ctx context.Context, i int) error {
		off := 0
		for j := range i {
			_, n := s.span(first + j)
			off += n
		}
		_, n := s.span(first + i)
		bo := make([]float32, bh*n*s.d)
		bl := make([]float32, bh*n)
		for h := range bh {
			copy(bo[h*n*s.d:(h+1)*n*s.d], o[(h*rows+off)*s.d:(h*rows+off+n)*s.d])
			copy(bl[h*n:(h+1)*n], lse[h*rows+off:h*rows+off+n])
		}
		return s.Put(ctx, first+i, bo, bl)
	})
}
