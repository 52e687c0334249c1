package client

import (
	"context"
	"fmt"
	"slices"

	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Tensors of a layer job's backward pass in the store (the worker writes
// them; see internal/worker/DESIGN.md): dy is uploaded like x; the output
// namespace holds y, the attention's o, lse, dq, dk, dv, and per block the
// block's share of the layer's gradients — dxq (by query block) and dxkv
// (by key block) whose sum is dX, and the weight and bias gradients of the
// rows of that block, summed here over the blocks.
const (
	tensorDY   = "dy"
	tensorDXQ  = "dxq"
	tensorDXKV = "dxkv"
)

// MHAGradResult is a finished layer forward+backward job's output: y and
// the gradients of sum(y·dY) with respect to x and every parameter, shaped
// like them. The bias gradients are nil for a layer without biases.
type MHAGradResult struct {
	Status             *pb.JobStatus
	Y                  *tensor.Tensor // [B, N, d_model]
	DX                 *tensor.Tensor // [B, N, d_model]
	DWq, DWk, DWv, DWo *tensor.Tensor // [H·D, d_model] ×3, [d_model, H·D]
	DBq, DBk, DBv, DBo *tensor.Tensor // [H·D] ×3, [d_model]
}

// SubmitMHABackward uploads x [B, N, d_model] (rank 2 means B=1), dY (x's
// shape) and the weights and submits a forward+backward layer job: the
// cluster computes y, then the gradients of sum(y·dY).
func (c *Client) SubmitMHABackward(ctx context.Context, x, dy *tensor.Tensor, w MHAWeights, o JobOptions) (*pb.JobStatus, error) {
	if dy == nil {
		return nil, fmt.Errorf("%w: dy is missing", ErrInvalid)
	}
	return c.submitMHA(ctx, x, dy, w, o)
}

// FetchMHAGrads downloads y and the gradients of a succeeded layer
// forward+backward job: dX = dxq + dxkv block by block, and each weight or
// bias gradient as the sum, in block order and in float64, of the blocks'
// shares. Each share is the one complete write of its gradient unit, so
// every row of the sequence enters each sum exactly once.
func (c *Client) FetchMHAGrads(ctx context.Context, st *pb.JobStatus) (*MHAGradResult, error) {
	store, ref, block, err := c.outputs(ctx, st)
	if err != nil {
		return nil, err
	}
	s := st.GetSpec()
	if !IsMHAGradJob(s) {
		return nil, fmt.Errorf("%w: job %s is not an mha forward+backward job: no layer gradients", ErrInvalid, st.GetId())
	}
	b, n, dm := int(s.GetB()), int(s.GetN()), int(s.GetDModel())
	xs := transport.Shape{b, 1, n, dm}
	res := &MHAGradResult{Status: st}
	var dxkv *tensor.Tensor
	if err := c.fetchOutputs(ctx, store, ref, block, []download{
		{tensorY, xs, []int{b, n, dm}, &res.Y}, {tensorDXQ, xs, []int{b, n, dm}, &res.DX}, {tensorDXKV, xs, []int{b, n, dm}, &dxkv},
	}); err != nil {
		return nil, err
	}
	for i, v := range dxkv.Data {
		res.DX.Data[i] += v
	}
	names, shapes := MHAGradShapes(s)
	dsts := []**tensor.Tensor{&res.DX, &res.DWq, &res.DWk, &res.DWv, &res.DWo, &res.DBq, &res.DBk, &res.DBv, &res.DBo}
	for i := 1; i < len(names); i++ { // names[0] is dx, summed above
		if *dsts[i], err = sumBlocks(ctx, store, ref, names[i], xs.Blocks(block), shapes[i]...); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// sumBlocks returns Σ blocks 0..count-1 of tensor name, each holding a
// tensor of shape, summed in float64 in block order.
func sumBlocks(ctx context.Context, store *transport.Store, ref, name string, count int, shape ...int) (*tensor.Tensor, error) {
	size := 1
	for _, d := range shape {
		size *= d
	}
	acc := make([]float64, size)
	for blk := range count {
		x, err := store.GetBlock(ctx, ref, name, blk)
		if err != nil {
			return nil, fmt.Errorf("client: fetching %s block %d: %w", name, blk, err)
		}
		if len(x) != size {
			return nil, fmt.Errorf("client: fetching %s block %d: %d values, expected %v = %d", name, blk, len(x), shape, size)
		}
		for i, v := range x {
			acc[i] += float64(v)
		}
	}
	out := make([]float32, size)
	for i, v := range acc {
		out[i] = float32(v)
	}
	return tensor.FromData(out, shape...)
}

// MHAGradShapes names the gradients of a layer forward+backward job with
// spec s beyond y, in the order they are listed, with their shapes: dx
// [B,N,d_model], dwq, dwk, dwv [H·D,d_model], dwo [d_model,H·D] and, when
// the layer has biases, dbq, dbk, dbv [H·D] and dbo [d_model].
func MHAGradShapes(s *pb.JobSpec) (names []string, shapes [][]int) {
	b, n, dm, hd := int(s.GetB()), int(s.GetN()), int(s.GetDModel()), int(s.GetHq()*s.GetD())
	names = []string{"dx", "dwq", "dwk", "dwv", "dwo"}
	shapes = [][]int{{b, n, dm}, {hd, dm}, {hd, dm}, {hd, dm}, {dm, hd}}
	if s.GetMhaBias() {
		names = append(names, "dbq", "dbk", "dbv", "dbo")
		shapes = append(shapes, []int{hd}, []int{hd}, []int{hd}, []int{dm})
	}
	return names, shapes
}

// IsMHAGradJob reports whether s is a layer forward+backward job, one whose
// outputs include the gradients MHAGradShapes lists.
func IsMHAGradJob(s *pb.JobSpec) bool {
	return s.GetKind() == pb.JobKind_JOB_KIND_MHA && s.GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD
}

// ReadMHAGrad reads one gradient (a name MHAGradShapes lists) of the
// succeeded layer forward+backward job st from store, computed as
// FetchMHAGrads does: dx as dxq + dxkv, a weight or bias gradient as the
// float64 sum of its per-block shares in block order. It is FetchMHAGrads
// for one tensor, for servers that hold a store (the HTTP gateway).
func ReadMHAGrad(ctx context.Context, store *transport.Store, st *pb.JobStatus, name string) (*tensor.Tensor, error) {
	s := st.GetSpec()
	names, shapes := MHAGradShapes(s)
	i := slices.Index(names, name)
	if !IsMHAGradJob(s) || i < 0 {
		return nil, fmt.Errorf("%w: job %s has no layer gradient %q", ErrInvalid, st.GetId(), name)
	}
	ref := st.GetOutputRef()
	if ref == "" {
		ref = st.GetId()
	}
	block := int(s.GetBlock())
	if block <= 0 {
		block = DefaultBlock
	}
	xs := transport.Shape{int(s.GetB()), 1, int(s.GetN()), int(s.GetDModel())}
	if name != "dx" {
		return sumBlocks(ctx, store, ref, name, xs.Blocks(block), shapes[i]...)
	}
	dx, err := store.GetTensor(ctx, ref, tensorDXQ, xs, block)
	if err != nil {
		return nil, fmt.Errorf("client: fetching %s: %w", tensorDXQ, err)
	}
	dxkv, err := store.GetTensor(ctx, ref, tensorDXKV, xs, block)
	if err != nil {
		return nil, fmt.Errorf("client: fetching %s: %w", tensorDXKV, err)
	}
	if len(dxkv) != len(dx) {
		return nil, fmt.Errorf("client: %s has %d values, %s %d", tensorDXKV, len(dxkv), tensorDXQ, len(dx))
	}
	for j, v := range dxkv {
		dx[j] += v
	}
	return tensor.FromData(dx, shapes[i]...)
}

// MHABackward runs a layer's forward and backward on the cluster: it
// uploads x, dY and the weights, submits a forward+backward job, waits and
// returns y with the gradients of sum(y·dY). progress, when not nil, is
// called on every status change (JobStatus.phase says which pass runs).
func (c *Client) MHABackward(ctx context.Context, x, dy *tensor.Tensor, w MHAWeights, o JobOptions, progress func(*pb.JobStatus)) (*MHAGradResult, error) {
	st, err := c.SubmitMHABackward(ctx, x, dy, w, o)
	if err != nil {
		return nil, err
	}
	st, err = c.Watch(ctx, st.GetId(), 0, progress)
	if err != nil {
		return nil, err
	}
	return c.FetchMHAGrads(ctx, st)
}
