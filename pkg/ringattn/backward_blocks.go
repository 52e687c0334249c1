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
		var strides [3]int
		for i, t := range []struct {
			name string
			dst  *[]float32
			d    int
		}{{"q", &run.q, p.D}, {"do", &run.do, p.D}, {"lse", &run.lse, 1}} {
			x, stride, err := r.fetchRows(ctx, t.name, run, t.d)
			if err != nil {
				return nil, err
			}
			*t.dst, strides[i] = x, stride
		}
		// Q and dO are read in place when they are views alike (lse never
		// is a view).
		run.qStride = strides[0]
		if strides[0] != strides[1] {
			run.q, run.do = r.compactRows(run.q, run, strides[0]), r.compactRows(run.do, run, strides[1])
			run.qStride = run.rows
		}
		run.delta = make([]float32, bh*run.rows)
		if err := r.delta(ctx, run); err != nil {
			return nil, err
		}
		run.dq = gradBufs.get(bh * run.rows * p.D) // back after putDQ (ringSteps)
		out = append(out, run)
		i = e
	}
	return out, nil
}

// fetchRows loads tensor `name` ([B, Hq, len, d] by query block) over the
// rows of a run, [B, Hq, rows, d] with head i from row i·stride: in place
// from a ViewSource (stride is the view's; rows apart when the run is the
// whole sequence or B·Hq = 1), else contiguous (stride = rows), in one
// piece from a RunSource or block by block. The result is only read.
func (r *bwdRun) fetchRows(ctx context.Context, name string, run *bwdRows, d int) ([]float32, int, error) {
	bh := r.p.B * r.p.Hq
	if r.views != nil && name != "lse" {
		x, stride, err := r.viewRows(ctx, name, run)
		if err != nil {
			return nil, 0, err
		}
		if stride == run.rows || bh == 1 {
			return x[: bh*run.rows*d : bh*run.rows*d], run.rows, nil
		}
		return x[:((bh-1)*stride+run.rows)*d], stride, nil
	}
	var out []float32
	if len(run.blocks) > 1 {
		out = make([]float32, bh*run.rows*d)
	}
	for _, qi := range run.blocks {
		qs, n := r.plan.QSpan(qi)
		x, err := r.cfg.Source.Fetch(ctx, name, qi)
		if err != nil {
			return nil, 0, fmt.Errorf("rank %d: fetching %s of query block %d: %w", r.rank, name, qi, err)
		}
		if want := bh * n * d; len(x) != want {
			return nil, 0, invalid("rank %d: %s of query block %d has %d values, expected %d", r.rank, name, qi, len(x), want)
		}
		if len(run.blocks) == 1 {
			return x, run.rows, nil
		}
		scatter(out, x, bh, run.rows, qs-run.start, n, d)
	}
	return out, run.rows, nil
}

// compactRows returns x, the run's rows of a [B, Hq, ·, D] tensor head i
// from row i·stride, as contiguous [B, Hq, rows, D] (x itself when it is).
func (r *bwdRun) compactRows(x []float32, run *bwdRows, stride int) []float32 {
	if stride == run.rows {
		return x
	}
	return gather(x, r.p.B*r.p.Hq, stride, 0, run.rows, r.p.D)
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
		// Without views everything fetched is contiguous.
		o, _, err := r.fetchRows(ctx, "o", run, d)
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
		doi := run.do[i*run.qStride*d : (i*run.qStride+rows)*d]
		if err := kernels.BackwardDelta(oi, doi, run.delta[i*rows:(i+1)*rows], d); err != nil {
			return fmt.Errorf("rank %d: query blocks %v: %w", r.rank, run.blocks, err)
		}
	}
	return nil
}

// contrib adds to g the contributions of the query rows `runs` to the
// gradients of key/value block b (contiguous or a view), run by run in
// order (BackwardBlockTo adds the runs' dQ too). With g zeroed beforehand
// this is the rank's contribution c_{x,j}: a function of the plan and the
// inputs only.
func (r *bwdRun) contrib(ctx context.Context, runs []*bwdRows, b kvBlock, g gradPair, count bool) error {
	start, n := r.plan.KSpan(b.j)
	return r.contribKV(ctx, runs, kernels.KV{K: b.k, V: b.v, Start: start, N: n, Stride: b.stride}, []int{b.j}, g, count)
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
		rows := &kernels.BackwardRows{Start: run.start, Rows: run.rows, Q: run.q, DO: run.do, Stride: run.qStride,
			LSE: run.lse, Delta: run.delta, DQ: run.dq}
		if err := r.p.BackwardBlockTo(rows, kv, g.dk, g.dv, g.stride); err != nil {
			return fmt.Errorf("rank %d: backward of query blocks %v with key blocks %v: %w", r.rank, run.blocks, js, err)
		}
	}
	return nil
}

// contribSet computes the rank's contributions to the held blocks, in
// order. Runs of consecutive key blocks are computed as one set, in one
// BackwardBlockTo call per query run: the kernel tiles the set's keys
// rather than each block's (a 1024-key block is not a multiple of its
// 192-key tiles), and by the kernel's partition property the result is
// bit-identical to one call per block in the same order — dK/dV of every
// block, and the runs' dQ.
//
// The set is read in place when the Source lends views (setView), else
// copied into the rank's scratch. Its dK/dV go to one buffer: on a
// FrameSharer ring a fresh one, of which each block's contribution is a
// view (gradPair.stride), so nothing is copied before the accumulators
// travel; elsewhere the rank's scratch, each block's part copied out
// contiguous, as it is sent. A single block is computed in place from
// what the rank holds.
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
			if r.ledger != nil {
				r.ledger.lend(out[i].dk, out[i].dv, out[i:i+1])
			}
			if err := r.contrib(ctx, r.mine, held[i], out[i], count); err != nil {
				return nil, err
			}
			i = e
			continue
		}
		set := held[i:e]
		start, _ := r.plan.KSpan(set[0].j)
		js := make([]int, 0, len(set))
		total := 0
		for _, b := range set {
			_, n := r.plan.KSpan(b.j)
			total += n
			js = append(js, b.j)
		}
		size := bh * total * d
		kv := kernels.KV{Start: start, N: total}
		k, v, stride, ok, err := r.setView(ctx, set, total)
		if err != nil {
			return nil, err
		}
		if ok {
			kv.K, kv.V, kv.Stride = k, v, stride
		} else {
			// The rank's scratch, reused from step to step: the kernel
			// returns before the next step starts.
			r.scratch[0], r.scratch[1] = grow(r.scratch[0], size), grow(r.scratch[1], size)
			kv.K, kv.V = r.scratch[0], r.scratch[1]
			off := 0
			for _, b := range set {
				_, n := r.plan.KSpan(b.j)
				place(kv.K, b.k, b.stride, bh, total, off, n, d)
				place(kv.V, b.v, b.stride, bh, total, off, n, d)
				off += n
			}
		}
		// Views into g travel on a FrameSharer ring: g is a buffer of its
		// own (zeroed, from gradBufs; given back there through the ledger).
		// Else the blocks' parts are copied out and g is the rank's scratch.
		var g gradPair
		if r.share {
			g = gradPair{dk: gradBufs.get(size), dv: gradBufs.get(size)}
		} else {
			r.scratch[2], r.scratch[3] = grow(r.scratch[2], size), grow(r.scratch[3], size)
			g = gradPair{dk: r.scratch[2], dv: r.scratch[3]}
			clear(g.dk)
			clear(g.dv)
		}
		if err := r.contribKV(ctx, r.mine, kv, js, g, count); err != nil {
			return nil, err
		}
		off := 0
		for m, b := range set {
			_, n := r.plan.KSpan(b.j)
			if r.share {
				end := ((bh-1)*total + off + n) * d
				out[i+m] = gradPair{dk: g.dk[off*d : end : end], dv: g.dv[off*d : end : end], stride: total}
			} else {
				out[i+m] = gradPair{dk: gather(g.dk, bh, total, off, n, d), dv: gather(g.dv, bh, total, off, n, d)}
			}
			off += n
		}
		if r.ledger != nil {
			r.ledger.lend(g.dk, g.dv, out[i:e])
		}
		i = e
	}
	return out, nil
}

// setView lends the keys and values of a run of consecutive blocks, set,
// of total rows as one view from the Source when it is a ViewSource, and
// the held blocks are views too (ok false otherwise: they are copied). The
// blocks' values are the Source's whichever rank fetched them, so reading
// them in place is reading them.
func (r *bwdRun) setView(ctx context.Context, set []kvBlock, total int) (k, v []float32, stride int, ok bool, err error) {
	if r.views == nil {
		return nil, nil, 0, false, nil
	}
	for _, b := range set {
		if b.stride == 0 {
			return nil, nil, 0, false, nil
		}
	}
	bh, d := r.p.B*r.p.Hkv, r.p.D
	k, ks, err := r.views.View(ctx, "k", set[0].j, len(set))
	if err != nil {
		return nil, nil, 0, false, fmt.Errorf("rank %d: keys of blocks %d..%d: %w", r.rank, set[0].j, set[len(set)-1].j, err)
	}
	v, vs, err := r.views.View(ctx, "v", set[0].j, len(set))
	if err != nil {
		return nil, nil, 0, false, fmt.Errorf("rank %d: values of blocks %d..%d: %w", r.rank, set[0].j, set[len(set)-1].j, err)
	}
	if ks != vs || !viewFits(k, bh, total, ks, d) || !viewFits(v, bh, total, vs, d) {
		return nil, nil, 0, false, invalid("rank %d: key/value blocks %d..%d lent as %d/%d values with strides %d/%d, expected %d heads of %d rows (D=%d)",
			r.rank, set[0].j, set[len(set)-1].j, len(k), len(v), ks, vs, bh, total, d)
	}
	return k, v, ks, true, nil
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
	return gradPair{dk: gradBufs.get(size), dv: gradBufs.get(size)}
}

// addInto sets acc[i] = acc[i] + x[i]: one rounding per element, so the
// chain of additions fixes the result.
func addInto(acc, x []float32) {
	x = x[:len(acc)]
	for i := range acc {
		acc[i] += x[i]
	}
}

// addGrad adds x to acc, both the dK/dV of a block of n rows, either of
// them possibly a view (gradPair.stride).
func (r *bwdRun) addGrad(acc, x gradPair, n int) {
	bh, d := r.p.B*r.p.Hkv, r.p.D
	if acc.stride == 0 && x.stride == 0 {
		addInto(acc.dk, x.dk)
		addInto(acc.dv, x.dv)
		return
	}
	as, xs := max(acc.stride, n), max(x.stride, n)
	for i := range bh {
		addInto(acc.dk[i*as*d:(i*as+n)*d], x.dk[i*xs*d:(i*xs+n)*d])
		addInto(acc.dv[i*as*d:(i*as+n)*d], x.dv[i*xs*d:(i*xs+n)*d])
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
