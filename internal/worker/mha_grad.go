package worker

import (
	"context"
	"fmt"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Tensors of a layer (mha) job's backward pass (DESIGN.md, "Layer
// gradients"). It reads "dy" ([B, len, d_model] by sequence block, like x)
// from the inputs and o, lse from its forward pass; besides the attention's
// dq, dk, dv it writes, per gradient unit, the unit's share of the layer's
// gradients, each a function of complete blocks only:
//
//	dq unit i (query block i):  dxq_i = cat(dq_i)·Wq          [B, len, d_model]
//	                            dwq_i = cat(dq_i)ᵀ·x_i        [H·D, d_model]
//	                            dwo_i = dY_iᵀ·cat(o_i)        [d_model, H·D]
//	                            dbq_i = Σ_rows cat(dq_i), dbo_i = Σ_rows dY_i  (mha_bias)
//	dk/dv unit j (key block j): dxkv_j = cat(dk_j)·Wk + cat(dv_j)·Wv
//	                            dwk_j = cat(dk_j)ᵀ·x_j, dwv_j = cat(dv_j)ᵀ·x_j
//	                            dbk_j, dbv_j                  (mha_bias)
//
// The layer's gradients are dX = dxq + dxkv block by block and
// dW = Σ_blocks dW_block, which the reader (pkg/client) forms.
const (
	TensorDY   = "dy"
	TensorDXQ  = "dxq"
	TensorDXKV = "dxkv"
	TensorDWQ  = "dwq"
	TensorDWK  = "dwk"
	TensorDWV  = "dwv"
	TensorDWO  = "dwo"
	TensorDBQ  = "dbq"
	TensorDBK  = "dbk"
	TensorDBV  = "dbv"
	TensorDBO  = "dbo"
)

// layerGrad is a layer with the transposed weights its backward multiplies
// by (kernels.MatMulT computes A·Bᵀ).
type layerGrad struct {
	l                  *layer
	b                  int
	woT, wqT, wkT, wvT []float32 // [H·D, d_model], [d_model, H·D] ×3
}

func newLayerGrad(l *layer, b int) *layerGrad {
	hd := l.Heads * l.D
	return &layerGrad{l: l, b: b,
		woT: ringattn.Transpose(l.Wo, l.DModel, hd),
		wqT: ringattn.Transpose(l.Wq, hd, l.DModel), wkT: ringattn.Transpose(l.Wk, hd, l.DModel), wvT: ringattn.Transpose(l.Wv, hd, l.DModel)}
}

// rowsOf returns the sequence length of a block of t holding per values
// per (batch, position), or a CorruptBlockError.
func (g *layerGrad) rowsOf(ns, tensor string, block int, t []float32, per int) (int, error) {
	unit := g.b * per
	if len(t) == 0 || len(t)%unit != 0 {
		return 0, &transport.CorruptBlockError{Job: ns, Tensor: tensor, Block: block,
			Reason: fmt.Sprintf("%d values, expected a non-zero multiple of %d", len(t), unit)}
	}
	return len(t) / unit, nil
}

// dO is the attention's upstream gradient of a block: split(dY·Wo), dy
// [B, n, d_model] -> [B, H, n, D].
func (g *layerGrad) dO(dy []float32, n int) []float32 {
	l := g.l
	hd := l.Heads * l.D
	return ringattn.SplitHeads(ringattn.MatMulT(g.b*n, hd, l.DModel, dy, g.woT, nil), g.b, l.Heads, n, l.D)
}

// weightGrad returns cat(t)ᵀ·x [H·D, d_model] of a block: t [B, H, n, D],
// x [B, n, d_model].
func (g *layerGrad) weightGrad(t, x []float32, n int) []float32 {
	l := g.l
	rows := g.b * n
	return ringattn.MatMulT(l.Heads*l.D, l.DModel, rows, ringattn.CatHeadsT(t, g.b, l.Heads, n, l.D), ringattn.Transpose(x, rows, l.DModel), nil)
}

// mhaBwdSource serves a layer's backward rank: q, k, v projected from x
// (mhaSource), do = split(dY·Wo) from dy, o and lse from the forward.
type mhaBwdSource struct {
	proj *mhaSource
	in   *checkedSource
	olse *checkedSource
	g    *layerGrad
}

func (s *mhaBwdSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	switch tensor {
	case transport.TensorQ, transport.TensorK, transport.TensorV:
		return s.proj.Fetch(ctx, tensor, block)
	case transport.TensorO, transport.TensorLSE:
		return s.olse.Fetch(ctx, tensor, block)
	case transport.TensorDO:
		dy, err := s.in.Fetch(ctx, TensorDY, block)
		if err != nil {
			return nil, err
		}
		n, err := s.g.rowsOf(s.in.ns, TensorDY, block, dy, s.g.l.DModel)
		if err != nil {
			return nil, err
		}
		return s.g.dO(dy, n), nil
	}
	return nil, fmt.Errorf("%w: mha backward source asked for tensor %q, expected q, k, v, do, o or lse", ErrInvalidAssignment, tensor)
}

// mhaGradSink writes a layer backward rank's outputs: each complete dq
// (dk/dv) block as gradSink does, preceded by its unit's share of the
// layer's gradients (the tensors above). Every write is a function of
// complete blocks, so a unit written again by another epoch holds the same
// values up to float32 rounding, and nothing partial is ever stored.
type mhaGradSink struct {
	grads *gradSink
	w     blockWriter
	ns    string
	in    *checkedSource // x, dy
	olse  *checkedSource // o
	g     *layerGrad
	bias  bool
	met   *workerMetrics
}

func (s *mhaGradSink) put(ctx context.Context, tensor string, block int, x []float32) error {
	if err := retryStore(ctx, func() error { return s.w.PutBlock(ctx, s.ns, tensor, block, x, transport.F32) }); err != nil {
		return err
	}
	s.met.storeBytes.WithLabelValues("written").Add(float64(4 * len(x)))
	return nil
}

// inputs fetches the blocks named (from the inputs, or o from the forward)
// and checks that each holds n rows of per values per (batch, position).
func (s *mhaGradSink) inputs(ctx context.Context, block, n int, names ...string) ([][]float32, error) {
	l := s.g.l
	out := make([][]float32, len(names))
	for i, name := range names {
		src, per := s.in, l.DModel
		if name == transport.TensorO {
			src, per = s.olse, l.Heads*l.D
		}
		x, err := src.Fetch(ctx, name, block)
		if err != nil {
			return nil, err
		}
		if len(x) != s.g.b*n*per {
			return nil, &transport.CorruptBlockError{Job: src.ns, Tensor: name, Block: block,
				Reason: fmt.Sprintf("%d values, expected B·len·%d = %d·%d·%d like the gradient block", len(x), per, s.g.b, n, per)}
		}
		out[i] = x
	}
	return out, nil
}

func (s *mhaGradSink) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error {
	l := s.g.l
	n, err := s.g.rowsOf(s.ns, transport.TensorDQ, block, dq, l.Heads*l.D)
	if err != nil {
		return err
	}
	in, err := s.inputs(ctx, block, n, TensorX, TensorDY, transport.TensorO)
	if err != nil {
		return err
	}
	dxq, dwq, dwo, dbq, dbo := s.g.dqShares(dq, in[0], in[1], in[2], n, s.bias)
	if err := s.putAll(ctx, block, []string{TensorDXQ, TensorDWQ, TensorDWO, TensorDBQ, TensorDBO}, dxq, dwq, dwo, dbq, dbo); err != nil {
		return err
	}
	return s.grads.PutDQ(ctx, epoch, block, dq)
}

func (s *mhaGradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	l := s.g.l
	n, err := s.g.rowsOf(s.ns, transport.TensorDK, block, dk, l.Heads*l.D)
	if err != nil {
		return err
	}
	if len(dv) != len(dk) {
		return fmt.Errorf("%w: dv block %d has %d values, expected dk's %d", ringattn.ErrInvalid, block, len(dv), len(dk))
	}
	in, err := s.inputs(ctx, block, n, TensorX)
	if err != nil {
		return err
	}
	dxkv, dwk, dwv, dbk, dbv := s.g.dkvShares(dk, dv, in[0], n, s.bias)
	if err := s.putAll(ctx, block, []string{TensorDXKV, TensorDWK, TensorDWV, TensorDBK, TensorDBV}, dxkv, dwk, dwv, dbk, dbv); err != nil {
		return err
	}
	return s.grads.PutDKV(ctx, epoch, block, dk, dv)
}

// putAll writes data[i] as block of tensor names[i], skipping nil ones.
func (s *mhaGradSink) putAll(ctx context.Context, block int, names []string, data ...[]float32) error {
	for i, x := range data {
		if x == nil {
			continue
		}
		if err := s.put(ctx, names[i], block, x); err != nil {
			return err
		}
	}
	return nil
}

// dqShares returns the shares of the layer's gradients of n rows given
// their complete dq [B, H, n, D], x and dy [B, n, d_model] and the
// attention output o [B, H, n, D]: dxq = cat(dq)·Wq, dwq = cat(dq)ᵀ·x,
// dwo = dYᵀ·cat(o), and with bias dbq = Σ_rows cat(dq), dbo = Σ_rows dY
// (nil without).
func (g *layerGrad) dqShares(dq, x, dy, o []float32, n int, bias bool) (dxq, dwq, dwo, dbq, dbo []float32) {
	l := g.l
	hd, rows := l.Heads*l.D, g.b*n
	dqc := ringattn.CatHeads(dq, g.b, l.Heads, n, l.D)
	dxq = ringattn.MatMulT(rows, l.DModel, hd, dqc, g.wqT, nil)
	dwq = g.weightGrad(dq, x, n)
	dwo = ringattn.MatMulT(l.DModel, hd, rows, ringattn.Transpose(dy, rows, l.DModel), ringattn.CatHeadsT(o, g.b, l.Heads, n, l.D), nil)
	if bias {
		dbq, dbo = ringattn.ColSums(dqc, rows, hd), ringattn.ColSums(dy, rows, l.DModel)
	}
	return dxq, dwq, dwo, dbq, dbo
}

// dkvShares returns the shares of n rows given their complete dk, dv
// [B, H, n, D] and x: dxkv = cat(dk)·Wk + cat(dv)·Wv, dwk = cat(dk)ᵀ·x,
// dwv = cat(dv)ᵀ·x, and with bias dbk, dbv (nil without).
func (g *layerGrad) dkvShares(dk, dv, x []float32, n int, bias bool) (dxkv, dwk, dwv, dbk, dbv []float32) {
	l := g.l
	hd, rows := l.Heads*l.D, g.b*n
	dkc, dvc := ringattn.CatHeads(dk, g.b, l.Heads, n, l.D), ringattn.CatHeads(dv, g.b, l.Heads, n, l.D)
	dxkv = ringattn.MatMulT(rows, l.DModel, hd, dvc, g.wvT, ringattn.MatMulT(rows, l.DModel, hd, dkc, g.wkT, nil))
	dwk, dwv = g.weightGrad(dk, x, n), g.weightGrad(dv, x, n)
	if bias {
		dbk, dbv = ringattn.ColSums(dkc, rows, hd), ringattn.ColSums(dvc, rows, hd)
	}
	return dxkv, dwk, dwv, dbk, dbv
}

// LayerDO returns the upstream gradient of a layer's attention,
// split(dY·Wo) [B, Heads, n, D], for its rows dy [B, n, DModel].
func LayerDO(l *ringattn.Layer, b, n int, dy []float32) ([]float32, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if b < 1 || n < 1 || len(dy) != b*n*l.DModel {
		return nil, fmt.Errorf("%w: layer dY has %d values, expected B·n·DModel = %d·%d·%d", ringattn.ErrInvalid, len(dy), b, n, l.DModel)
	}
	return newLayerGrad(l, b).dO(dy, n), nil
}

// LayerGradsFrom returns the gradients of sum(y·dY) of a layer's forward
// over a whole sequence x [B, n, DModel], given its attention output o and
// the attention's gradients dq, dk, dv [B, Heads, n, D] of dO =
// LayerDO(dy) (from any backward: a ring's, the kernel's): the chain rule
// of ringattn.Layer.Backward after the attention, computed as the worker
// computes one block's shares (the sequence as one block). The bias
// gradients are nil for a layer without biases.
func LayerGradsFrom(l *ringattn.Layer, b, n int, x, dy, o, dq, dk, dv []float32) (*ringattn.LayerGrads, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	rows, t := b*n*l.DModel, b*n*l.Heads*l.D
	for _, c := range []struct {
		name      string
		got, want int
	}{{"x", len(x), rows}, {"dY", len(dy), rows}, {"o", len(o), t}, {"dq", len(dq), t}, {"dk", len(dk), t}, {"dv", len(dv), t}} {
		if b < 1 || n < 1 || c.got != c.want {
			return nil, fmt.Errorf("%w: layer %s has %d values, expected %d for B = %d, n = %d", ringattn.ErrInvalid, c.name, c.got, c.want, b, n)
		}
	}
	g := newLayerGrad(l, b)
	bias := l.Bq != nil
	out := &ringattn.LayerGrads{}
	var dxkv []float32
	out.DX, out.DWq, out.DWo, out.DBq, out.DBo = g.dqShares(dq, x, dy, o, n, bias)
	dxkv, out.DWk, out.DWv, out.DBk, out.DBv = g.dkvShares(dk, dv, x, n, bias)
	for i, v := range dxkv {
		out.DX[i] += v
	}
	return out, nil
}

// mhaParts is what a layer rank loaded: its projecting source and layer.
type mhaParts struct {
	proj  *mhaSource
	layer *layer
}

// backward returns the Source and GradSink of a layer's backward rank:
// src reads the job's inputs, olse the forward's o and lse, grads writes
// dq, dk, dv. The rank's own reads of x, dy and o for its gradient units
// are not counted as progress (units counts them with the writes).
func (m *mhaParts) backward(store *transport.Store, src, olse *checkedSource, grads *gradSink, t *task, met *workerMetrics) (ringattn.Source, ringattn.GradSink) {
	g := newLayerGrad(m.layer, t.params.B)
	quiet := func(c *checkedSource) *checkedSource {
		cp := *c
		cp.prog = nil
		return &cp
	}
	return &mhaBwdSource{proj: m.proj, in: src, olse: olse, g: g},
		&mhaGradSink{grads: grads, w: store, ns: t.outputRef, in: quiet(src), olse: quiet(olse), g: g, bias: t.bias, met: met}
}
