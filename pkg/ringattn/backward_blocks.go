package ringattn

import (
	"context"
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// loadRows fetches the backward inputs of the given query blocks
// (ascending), grouped into runs of consecutive blocks, and computes each
// run's Δ = rowsum(dO∘O).
func (r *bwdRun) loadRows(ctx context.Context, blocks []int) ([]*bwdRows, error) {
	p := r.p
	bh := p.B * p.Hq
	var out []*bwdRows
	for i := 0; i < len(blocks); {
		e := i + 1
		for e < len(blocks) && blocks[e] == blocks[e-1]+1 {
			e++
		}
		run := &bwdRows{blocks: blocks[i:e]}
		run.start, _ = r.plan.QSpan(run.blocks[0])
		for _, qi := range run.blocks {
			_, n := r.plan.QSpan(qi)
			run.rows += n
			run.pairs = append(run.pairs, r.plan.BlockPairs(qi))
		}
		for _, t := range []struct {
			name string
			dst  *[]float32
			d    int
		}{{"q", &run.q, p.D}, {"do", &run.do, p.D}, {"lse", &run.lse, 1}} {
			x, err := r.fetchRows(ctx, t.name, run, t.d)
			if err != nil {
				return nil, err
			}
			*t.dst = x
		}
		run.delta = make([]float32, bh*run.rows)
		if err := r.delta(ctx, run); err != nil {
			return nil, err
		}
		run.dq = make([]float32, bh*run.rows*p.D)
		out = append(out, run)
		i = e
	}
	return out, nil
}

// fetchRows loads tensor `name` ([B, Hq, len, d] by query block) over the
// rows of a run, contiguous [B, Hq, rows, d]: in place from a ViewSource
// when its view is contiguous (the run is the whole sequence, or B·Hq = 1),
// else copied from the view; in one piece from a RunSource; else block by
// block. The result is only read.
func (r *bwdRun) fetchRows(ctx context.Context, name string, run *bwdRows, d int) ([]float32, error) {
	bh := r.p.B * r.p.Hq
	if r.views != nil && name != "lse" {
		x, stride, err := r.viewRows(ctx, name, run)
		if err != nil {
			return nil, err
		}
		if stride == run.rows || bh == 1 {
			return x[: bh*run.rows*d : bh*run.rows*d], nil
		}
		return gather(x, bh, stride, 0, run.rows, d), nil
	}
	var out []float32
	if len(run.blocks) > 1 {
		out = make([]float32, bh*run.rows*d)
	}
	for _, qi := range run.blocks {
		qs, n := r.plan.QSpan(qi)
		x, err := r.cfg.Source.Fetch(ctx, name, qi)
		if err != nil {
			return nil, fmt.Errorf("rank %d: fetching %s of query block %d: %w", r.rank, name, qi, err)
		}
		if want := bh * n * d; len(x) != want {
			return nil, invalid("rank %d: %s of query block %d has %d values, expected %d", r.rank, name, qi, len(x), want)
		}
		if len(run.blocks) == 1 {
			return x, nil
		}
		scatter(out, x, bh, run.rows, qs-run.start, n, d)
	}
	return out, nil
}

// viewRows lends tensor `name` ([B, Hq, len, D] by query block) over the
// rows of a run from the ViewSource: head i starts at row i·stride.
func (r *bwdRun) viewRows(ctx context.Context, name string, run *bwdRows) ([]float32, int, error) {
	x, stride, err := r.views.View(ctx, name, run.blocks[0], len(run.blocks))
	if err != nil {
		return nil, 0, fmt.Errorf("rank %d: fetching %s of query blocks %v: %w", r.rank, name, run.blocks, err)
	}
	if !viewFits(x, r.p.B*r.p.Hq, run.rows, stride, r.p.D) {
		return nil, 0, invalid("rank %d: %s of query blocks %v: a view of %d values %d rows apart, expected %d heads of %d rows (D=%d)",
			r.rank, name, run.blocks, len(x), stride, r.p.B*r.p.Hq, run.rows, r.p.D)
	}
	return x, stride, nil
}

// delta sets run.delta = rowsum(dO∘O) over the run's rows (run.do loaded).
// From a ViewSource, O is read in place, head by head; the rows are
// independent, so the values are those of one call over a copy.
func (r *bwdRun) delta(ctx context.Context, run *bwdRows) error {
	p := r.p
	bh, rows, d := p.B*p.Hq, run.rows, p.D
	if r.views == nil {
		o, err := r.fetchRows(ctx, "o", run, d)
		if err != nil {
			return err
		}
		if err := kernels.BackwardDelta(o, run.do, run.delta, d); err != nil {
			return fmt.Errorf("rank %d: query blocks %v: %w", r.rank, run.blocks, err)
		}
		return nil
	}
	o, stride, err := r.viewRows(ctx, "o", run)
	if err != nil {
		return err
	}
	for i := range bh {
		oi := o[i*stride*d : (i*stride+rows)*d]
		if err := kernels.BackwardDelta(oi, run.do[i*rows*d:(i+1)*rows*d], run.delta[i*rows:(i+1)*rows], d); err != nil {
			return fmt.Errorf("rank %d: query blocks %v: %w", r.rank, run.blocks, err)
		}
	}
	return nil
}

// contrib adds to g the contributions of the query rows `runs` to the
// gradients of key/value block b, run by run in order (BackwardBlock adds
// the runs' dQ too). With g zeroed beforehand this is the rank's
// contribution c_{x,j}: a function of the plan and the inputs only.
func (r *bwdRun) contrib(ctx context.Context, runs []*bwdRows, b kvBlock, g gradPair, count bool) error {
	start, n := r.plan.KSpan(b.j)
	return r.contribKV(ctx, runs, kernels.KV{K: b.k, V: b.v, Start: start, N: n}, []int{b.j}, g, count)
}

// contribKV is contrib for the consecutive key blocks js held contiguous
// in kv (one BackwardBlock call per run).
func (r *bwdRun) contribKV(ctx context.Context, runs []*bwdRows, kv kernels.KV, js []int, g gradPair, count bool) error {
	for _, run := range runs {
		sees := false
		for _, j := range js {
			if count {
				for _, bp := range run.pairs {
					if c := bp.Pairs(j); c > 0 {
						r.prog.Pairs++
						r.prog.FLOPs += 2.5 * float64(c) * r.plan.PairFLOPs()
					} else {
						r.prog.Skipped++
					}
				}
			}
			sees = sees || run.sees(j)
		}
		if !sees {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rows := &kernels.BackwardRows{Start: run.start, Rows: run.rows, Q: run.q, DO: run.do,
			LSE: run.lse, Delta: run.delta, DQ: run.dq}
		if err := r.p.BackwardBlock(rows, kv, g.dk, g.dv); err != nil {
			return fmt.Errorf("rank %d: backward of query blocks %v with key blocks %v: %w", r.rank, run.blocks, js, err)
		}
	}
	return nil
}

// contribSet computes the rank's contributions to the held blocks, in
// order, into fresh buffers. Runs of consecutive key blocks are copied
// into one contiguous set and computed in one BackwardBlock call per query
// run: the kernel tiles the set's keys rather than each block's (a
// 1024-key block is not a multiple of its 192-key tiles), and by the
// kernel's partition property the result is bit-identical to one call per
// block in the same order — dK/dV of every block, and the runs' dQ.
func (r *bwdRun) contribSet(ctx context.Context, held []kvBlock, count bool) ([]gradPair, error) {
	out := make([]gradPair, len(held))
	bh, d := r.p.B*r.p.Hkv, r.p.D
	for i := 0; i < len(held); {
		e := i + 1
		for e < len(held) && held[e].j == held[e-1].j+1 {
			e++
		}
		if e == i+1 {
			out[i] = r.newGrad(held[i].j)
			if err := r.contrib(ctx, r.mine, r.compact(held[i]), out[i], count); err != nil {
				return nil, err
			}
			i = e
			continue
		}
		start, _ := r.plan.KSpan(held[i].j)
		js := make([]int, 0, e-i)
		total := 0
		for _, b := range held[i:e] {
			_, n := r.plan.KSpan(b.j)
			total += n
			js = append(js, b.j)
		}
		// The set and its dK/dV live in the rank's scratch, reused from
		// step to step (the kernel returns before the next step starts;
		// the per-block results below are fresh, as they travel).
		size := bh * total * d
		for t := range r.scratch {
			r.scratch[t] = grow(r.scratch[t], size)
		}
		k, v := r.scratch[0][:size], r.scratch[1][:size]
		g := gradPair{dk: r.scratch[2][:size], dv: r.scratch[3][:size]}
		clear(g.dk)
		clear(g.dv)
		off := 0
		for _, b := range held[i:e] {
			_, n := r.plan.KSpan(b.j)
			place(k, b.k, b.stride, bh, total, off, n, d)
			place(v, b.v, b.stride, bh, total, off, n, d)
			off += n
		}
		if err := r.contribKV(ctx, r.mine, kernels.KV{K: k, V: v, Start: start, N: total}, js, g, count); err != nil {
			return nil, err
		}
		off = 0
		for m, b := range held[i:e] {
			_, n := r.plan.KSpan(b.j)
			out[i+m] = gradPair{dk: gather(g.dk, bh, total, off, n, d), dv: gather(g.dv, bh, total, off, n, d)}
			off += n
		}
		i = e
	}
	return out, nil
}

// place copies the bh heads of n rows of a block (contiguous, or a view
// with heads stride rows apart when stride > 0) into rows [off, off+n) of
// the bh [total, d] matrices of dst.
func place(dst, blk []float32, stride, bh, total, off, n, d int) {
	if stride == 0 {
		scatter(dst, blk, bh, total, off, n, d)
		return
	}
	for i := range bh {
		copy(dst[(i*total+off)*d:(i*total+off+n)*d], blk[i*stride*d:(i*stride+n)*d])
	}
}

func (r *bwdRun) newGrad(j int) gradPair {
	_, n := r.plan.KSpan(j)
	size := r.p.B * r.p.Hkv * n * r.p.D
	return gradPair{dk: make([]float32, size), dv: make([]float32, size)}
}

// addInto sets acc[i] = acc[i] + x[i]: one rounding per element, so the
// chain of additions fixes the result.
func addInto(acc, x []float32) {
	x = x[:len(acc)]
	for i := range acc {
		acc[i] += x[i]
	}
}

// fetchContig loads key/value block j contiguous.
func (r *bwdRun) fetchContig(ctx context.Context, j int) (kvBlock, error) {
	b, err := r.fetchKV(ctx, j)
	if err != nil {
		return kvBlock{}, err
	}
	return r.compact(b), nil
}

// grow returns x if it holds n values, else a new slice of n.
func grow(x []float32, n int) []float32 {
	if cap(x) >= n {
		return x[:n]
	}
	return make([]float32, n)
}
