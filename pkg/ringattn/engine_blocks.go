package ringattn

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
)

// loadQueries fetches the owned query blocks, creates their states and
// counts the pairs to fold.
func (r *rankRun) loadQueries(ctx context.Context) error {
	p := r.p
	r.pairs = make(map[int]*shard.BlockPairs, len(r.owned))
	folds := make([]int, r.w)                   // pairs per holder set (ring) or per rank range (split-KV)
	holder := make([]int32, r.plan.KBlockCount) // the rank holding each key block (plans deal each to one)
	for kj := range holder {
		holder[kj] = -1
	}
	for h := range r.w {
		for _, kj := range r.plan.Ranks[h].KVBlocks {
			holder[kj] = int32(h)
		}
	}
	for i := 0; i < len(r.owned); {
		e := i + 1
		for e < len(r.owned) && r.owned[e] == r.owned[e-1]+1 {
			e++
		}
		run := &qRun{blocks: r.owned[i:e]}
		run.start, _ = r.plan.QSpan(run.blocks[0])
		for _, qi := range run.blocks {
			_, n := r.plan.QSpan(qi)
			run.rows += n
		}
		if err := r.fetchQueries(ctx, run); err != nil {
			return err
		}
		for _, qi := range run.blocks {
			bp := r.plan.BlockPairs(qi)
			r.pairs[qi] = bp
			first, last := bp.Span()
			for kj := first; kj < last; kj++ {
				if h := holder[kj]; h >= 0 && bp.Pairs(kj) > 0 {
					folds[h]++
				}
			}
		}
		run.st = kernels.NewState(p.B, p.Hq, run.rows, p.D)
		r.runs = append(r.runs, run)
		i = e
	}
	if r.plan.Strategy == shard.SplitKV {
		r.prog.TotalPairs = folds[r.rank]
	} else {
		for _, f := range folds {
			r.prog.TotalPairs += f
		}
	}
	return nil
}

// fetchQueries loads a run's query rows: in one piece from a RunSource,
// else block by block (one block is used as fetched).
func (r *rankRun) fetchQueries(ctx context.Context, run *qRun) error {
	p := r.p
	bh := p.B * p.Hq
	if r.views != nil {
		q, stride, err := r.views.View(ctx, "q", run.blocks[0], len(run.blocks))
		if err != nil {
			return fmt.Errorf("rank %d: fetching query blocks %v: %w", r.rank, run.blocks, err)
		}
		if !viewFits(q, bh, run.rows, stride, p.D) {
			return invalid("rank %d: query blocks %v: a view of %d values %d rows apart, expected %d heads of %d rows (D=%d)",
				r.rank, run.blocks, len(q), stride, bh, run.rows, p.D)
		}
		run.q, run.qStride = q, stride
		return nil
	}
	if rs, ok := r.cfg.Source.(RunSource); ok && len(run.blocks) > 1 {
		q, err := rs.FetchRun(ctx, "q", run.blocks[0], len(run.blocks))
		if err != nil {
			return fmt.Errorf("rank %d: fetching query blocks %v: %w", r.rank, run.blocks, err)
		}
		if want := bh * run.rows * p.D; len(q) != want {
			return invalid("rank %d: query blocks %v have %d values, expected %d ([%d,%d,%d,%d])",
				r.rank, run.blocks, len(q), want, p.B, p.Hq, run.rows, p.D)
		}
		run.q = q
	} else {
		if len(run.blocks) > 1 {
			run.q = make([]float32, bh*run.rows*p.D)
		}
		for _, qi := range run.blocks {
			qs, n := r.plan.QSpan(qi)
			q, err := r.cfg.Source.Fetch(ctx, "q", qi)
			if err != nil {
				return fmt.Errorf("rank %d: fetching query block %d: %w", r.rank, qi, err)
			}
			if want := bh * n * p.D; len(q) != want {
				return invalid("rank %d: query block %d has %d values, expected %d ([%d,%d,%d,%d])",
					r.rank, qi, len(q), want, p.B, p.Hq, n, p.D)
			}
			if len(run.blocks) == 1 {
				run.q = q
			} else {
				scatter(run.q, q, bh, run.rows, qs-run.start, n, p.D)
			}
		}
	}
	return nil
}

// states returns the runs' states, or fresh ones when fresh is set.
func (r *rankRun) states(fresh bool) []*kernels.State {
	out := make([]*kernels.State, len(r.runs))
	for i, run := range r.runs {
		out[i] = run.st
		if fresh {
			out[i] = kernels.NewState(r.p.B, r.p.Hq, run.rows, r.p.D)
		}
	}
	return out
}

// fetchKV loads key/value block j from the Source (a view when it lends them).
func (r *rankRun) fetchKV(ctx context.Context, j int) (kvBlock, error) {
	if r.views != nil {
		k, ks, err := r.views.View(ctx, "k", j, 1)
		if err != nil {
			return kvBlock{}, fmt.Errorf("rank %d: fetching key block %d: %w", r.rank, j, err)
		}
		v, vs, err := r.views.View(ctx, "v", j, 1)
		if err != nil {
			return kvBlock{}, fmt.Errorf("rank %d: fetching value block %d: %w", r.rank, j, err)
		}
		if ks != vs {
			return kvBlock{}, invalid("rank %d: key/value block %d: views %d and %d rows apart, expected equal strides", r.rank, j, ks, vs)
		}
		b := kvBlock{j: j, k: k, v: v, stride: ks}
		if err := r.checkKV(b); err != nil {
			return kvBlock{}, err
		}
		return b, nil
	}
	k, err := r.cfg.Source.Fetch(ctx, "k", j)
	if err != nil {
		return kvBlock{}, fmt.Errorf("rank %d: fetching key block %d: %w", r.rank, j, err)
	}
	v, err := r.cfg.Source.Fetch(ctx, "v", j)
	if err != nil {
		return kvBlock{}, fmt.Errorf("rank %d: fetching value block %d: %w", r.rank, j, err)
	}
	b := kvBlock{j: j, k: k, v: v}
	if err := r.checkKV(b); err != nil {
		return kvBlock{}, err
	}
	return b, nil
}

func (r *rankRun) checkKV(b kvBlock) error {
	_, n := r.plan.KSpan(b.j)
	bh := r.p.B * r.p.Hkv
	if b.stride != 0 {
		if !viewFits(b.k, bh, n, b.stride, r.p.D) || !viewFits(b.v, bh, n, b.stride, r.p.D) {
			return invalid("rank %d: key/value block %d: views of %d/%d values %d rows apart, expected %d heads of %d rows (D=%d)",
				r.rank, b.j, len(b.k), len(b.v), b.stride, bh, n, r.p.D)
		}
		return nil
	}
	want := bh * n * r.p.D
	if len(b.k) != want || len(b.v) != want {
		return invalid("rank %d: key/value block %d has %d/%d values, expected %d ([%d,%d,%d,%d])",
			r.rank, b.j, len(b.k), len(b.v), want, r.p.B, r.p.Hkv, n, r.p.D)
	}
	return nil
}

// viewFits reports whether x holds bh heads of rows×d values, stride rows
// apart (stride >= rows).
func viewFits(x []float32, bh, rows, stride, d int) bool {
	return stride >= rows && (bh == 0 || rows == 0 || len(x) >= ((bh-1)*stride+rows)*d)
}

// compact returns a contiguous copy [B, Hkv, n, D] of a view.
func (r *rankRun) compact(b kvBlock) kvBlock {
	if b.stride == 0 {
		return b
	}
	_, n := r.plan.KSpan(b.j)
	bh := r.p.B * r.p.Hkv
	return kvBlock{j: b.j, k: gather(b.k, bh, b.stride, 0, n, r.p.D), v: gather(b.v, bh, b.stride, 0, n, r.p.D)}
}

// prefetch calls use on the key/value blocks in order while a goroutine
// fetches the next one from the Source (double buffering against the
// store): at most one block waits while another is used. It returns after
// the fetching goroutine has exited.
func (r *rankRun) prefetch(ctx context.Context, blocks []int, use func(kvBlock) error) error {
	type fetched struct {
		b   kvBlock
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan fetched, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ch)
		for _, j := range blocks {
			b, err := r.fetchKV(ctx, j)
			select {
			case ch <- fetched{b, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	for f := range ch {
		if f.err != nil {
			return f.err
		}
		if err := use(f.b); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// fold folds the held blocks into every owned query block they are visible
// to: one kernels.FoldBlocks call per run of query blocks, over the held
// blocks the run sees, in order (the same result as folding them one by
// one, with each query tile loaded once).
func (r *rankRun) fold(ctx context.Context, held []kvBlock, states []*kernels.State, count bool) error {
	if count {
		for _, b := range held {
			r.countPairs(b.j)
		}
	}
	kv := make([]kernels.KV, 0, len(held))
	for i, run := range r.runs {
		kv = kv[:0]
		for _, b := range held {
			if r.sees(run, b.j) {
				start, n := r.plan.KSpan(b.j)
				kv = append(kv, kernels.KV{K: b.k, V: b.v, Start: start, N: n, Stride: b.stride})
			}
		}
		if len(kv) == 0 {
			continue
		}
		if err := states[i].FoldBlocks(ctx, r.p, run.q, run.start, run.qStride, kv); err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			return fmt.Errorf("rank %d: folding key blocks into query blocks %v: %w", r.rank, run.blocks, err)
		}
	}
	return nil
}

// countPairs adds key block j's pairs with the owned query blocks to the
// progress: visible ones as folded, hidden ones as skipped.
func (r *rankRun) countPairs(j int) {
	for _, run := range r.runs {
		for _, qi := range run.blocks {
			if c := r.pairs[qi].Pairs(j); c > 0 {
				r.prog.Pairs++
				r.prog.FLOPs += float64(c) * r.plan.PairFLOPs()
			} else {
				r.prog.Skipped++
			}
		}
	}
}

// group runs functions concurrently; the first error cancels the others.
type group struct {
	wg     sync.WaitGroup
	cancel context.CancelFunc
	mu     sync.Mutex
	err    error
}

func newGroup(ctx context.Context) (*group, context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	return &group{cancel: cancel}, ctx
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.record(f())
	}()
}

func (g *group) record(err error) {
	if err == nil {
		return
	}
	g.mu.Lock()
	// Keep the cause, not the cancellation it caused in the others.
	if g.err == nil || (errors.Is(g.err, context.Canceled) && !errors.Is(err, context.Canceled)) {
		g.err = err
	}
	g.mu.Unlock()
	g.cancel()
}

func (g *group) Wait() error {
	g.wg.Wait()
	g.cancel()
	return g.err
}
