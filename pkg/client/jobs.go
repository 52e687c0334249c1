package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// DefaultBlock is the block length used when a job does not set one.
const DefaultBlock = 1024

// Options of a job, shared by attention and mha jobs.
type JobOptions struct {
	Causal bool
	// Window bounds the keys around the (bottom-right aligned) diagonal;
	// -1 is unbounded. Used when Windowed.
	Windowed    bool
	Left, Right int
	// SeqLens packs documents (sum = N); SeqLensK for the keys (sum = Nk).
	SeqLens, SeqLensK []int
	Scale             float64 // 0 means 1/sqrt(D)
	Block             int     // tokens per block; 0 means DefaultBlock
	Strategy          string  // "" (auto), contiguous, zigzag, striped, splitkv, heads
	BF16Wire          bool    // key/value blocks travel the ring as bfloat16
	// Precision of the forward pass's products: kernels.PrecisionF32 (the
	// zero value) or kernels.PrecisionBF16 (scale·Q, K, V and the
	// probabilities rounded to bfloat16, float32 softmax statistics and
	// accumulation; key/value blocks then travel as bfloat16 too). The
	// backward pass of a job computes in float32 either way.
	Precision      kernels.Precision
	Parallelism    int // max ranks; 0 means as many as useful
	Priority       int
	AllowNonFinite bool
	// IdempotencyKey makes a retried submit return the same job; empty
	// means a random key (so the SDK's own retries are safe). Every submit
	// uploads its inputs under a fresh random namespace of its own, so a
	// retried or colliding key never overwrites the inputs of a live job.
	IdempotencyKey string
}

func (o *JobOptions) spec(kind pb.JobKind) *pb.JobSpec {
	block := o.Block
	if block <= 0 {
		block = DefaultBlock
	}
	s := &pb.JobSpec{Kind: kind, Scale: o.Scale, Block: int64(block), Strategy: o.Strategy,
		Parallelism: int32(o.Parallelism), Priority: int32(o.Priority), AllowNonfinite: o.AllowNonFinite,
		IdempotencyKey: o.IdempotencyKey,
		Mask: &pb.Mask{Causal: o.Causal, Windowed: o.Windowed, WindowLeft: int64(o.Left), WindowRight: int64(o.Right),
			Seqlens: toInt64(o.SeqLens), SeqlensK: toInt64(o.SeqLensK)}}
	if !o.Windowed {
		s.Mask.WindowLeft, s.Mask.WindowRight = 0, 0
	}
	if o.BF16Wire {
		s.WireDtype = pb.WireDType_WIRE_DTYPE_BF16
	}
	s.Precision = PrecisionToPB(o.Precision)
	if s.IdempotencyKey == "" {
		s.IdempotencyKey = randomID()
	}
	// A namespace of this submit alone, whatever the key.
	s.InputRef = "in-" + randomID()
	return s
}

// PrecisionToPB is the wire value of p; an unknown p maps to a value the
// coordinator (and Client's own check) refuses naming spec.precision.
func PrecisionToPB(p kernels.Precision) pb.Precision {
	switch p {
	case kernels.PrecisionF32:
		return pb.Precision_PRECISION_FP32
	case kernels.PrecisionBF16:
		return pb.Precision_PRECISION_BF16
	}
	return pb.Precision(int32(p))
}

// check applies the job limits to spec before anything is uploaded, with
// the rules the coordinator applies (shard.Limits.Check): an error is an
// *APIError naming the spec field, as the coordinator would answer.
func (c *Client) check(spec *pb.JobSpec) error {
	if math.IsNaN(spec.Scale) || math.IsInf(spec.Scale, 0) || spec.Scale < 0 {
		return &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "spec.scale",
			Message: fmt.Sprintf("%v: want a finite number > 0 (or 0 for 1/sqrt(d))", spec.Scale)}
	}
	if _, err := transport.PrecisionFromPB(spec.Precision); err != nil {
		var fe *transport.FieldError
		errors.As(err, &fe)
		return &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: fe.Field, Message: fe.Msg}
	}
	req := shard.Request{B: int(spec.B), Hq: int(spec.Hq), Hkv: int(spec.Hkv), D: int(spec.D), N: int(spec.N), Nk: int(spec.Nk),
		Block: int(spec.Block), Ranks: 1, Strategy: shard.Strategy(spec.Strategy)}
	if m := spec.Mask; m != nil {
		req.Mask = shard.Mask{Causal: m.Causal, Windowed: m.Windowed, Left: int(m.WindowLeft), Right: int(m.WindowRight),
			SeqLens: fromInt64(m.Seqlens), SeqLensK: fromInt64(m.SeqlensK)}
	}
	t := shard.Tensors{LSE: spec.WantLse, Grad: spec.Mode != pb.JobMode_JOB_MODE_FORWARD}
	if spec.Kind == pb.JobKind_JOB_KIND_MHA {
		if spec.DModel < 1 {
			return &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "spec.d_model",
				Message: fmt.Sprintf("%d: an mha job wants d_model >= 1", spec.DModel)}
		}
		t = shard.Tensors{DModel: int(spec.DModel), Bias: spec.MhaBias, Grad: t.Grad}
	}
	err := c.limits.Check(&req, t)
	var fe *shard.FieldError
	if err == nil || !errors.As(err, &fe) {
		return err
	}
	ae := &APIError{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, Field: "spec", Message: fe.Msg}
	if fe.Field != "" {
		ae.Field += "." + fe.Field
	}
	if errors.Is(fe, shard.ErrLimit) {
		ae.Code = pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED
	}
	return ae
}

func fromInt64(x []int64) []int {
	if x == nil {
		return nil
	}
	out := make([]int, len(x))
	for i, v := range x {
		out[i] = int(v)
	}
	return out
}

func toInt64(x []int) []int64 {
	if x == nil {
		return nil
	}
	out := make([]int64, len(x))
	for i, v := range x {
		out[i] = int64(v)
	}
	return out
}

func randomID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Store returns the client's tensor store, opening the bucket on first use.
func (c *Client) Store(ctx context.Context) (*transport.Store, error) {
	c.storeMu.Lock()
	defer c.storeMu.Unlock()
	if c.store != nil {
		return c.store, nil
	}
	s, err := c.conn.OpenStore(ctx, transport.StoreConfig{Bucket: transport.TenantBucket(c.cfg.Bucket, c.tenant())})
	if err != nil {
		return nil, err
	}
	c.store = s
	return s, nil
}

func shape4(name string, t *tensor.Tensor) ([]int, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: %s is missing", ErrInvalid, name)
	}
	s, err := t.As4D()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, name, err)
	}
	return s, nil
}

// SubmitAttention uploads q [B,Hq,N,D], k and v [B,Hkv,Nk,D] (rank 2 and 3
// mean B=1, H=1) and submits the job. The returned status names the job.
func (c *Client) SubmitAttention(ctx context.Context, q, k, v *tensor.Tensor, wantLSE bool, o JobOptions) (*pb.JobStatus, error) {
	qs, err := shape4("q", q)
	if err != nil {
		return nil, err
	}
	ks, err := shape4("k", k)
	if err != nil {
		return nil, err
	}
	vs, err := shape4("v", v)
	if err != nil {
		return nil, err
	}
	spec := o.spec(pb.JobKind_JOB_KIND_ATTENTION)
	spec.B, spec.Hq, spec.N, spec.D = int64(qs[0]), int64(qs[1]), int64(qs[2]), int64(qs[3])
	spec.Hkv, spec.Nk = int64(ks[1]), int64(ks[2])
	spec.WantLse = wantLSE
	if vs != nil && (vs[0] != ks[0] || vs[1] != ks[1] || vs[2] != ks[2] || vs[3] != ks[3]) {
		return nil, fmt.Errorf("%w: v has shape %v, expected k's %v", ErrInvalid, v.Shape, k.Shape)
	}
	if qs[0] != ks[0] || qs[3] != ks[3] {
		return nil, fmt.Errorf("%w: k has shape %v, expected q's batch %d and head dim %d", ErrInvalid, k.Shape, qs[0], qs[3])
	}
	if err := c.check(spec); err != nil {
		return nil, err
	}
	st, err := c.Store(ctx)
	if err != nil {
		return nil, err
	}
	ups := []upload{{transport.TensorQ, q, qs}, {transport.TensorK, k, ks}, {transport.TensorV, v, vs}}
	if err := c.uploadInputs(ctx, st, spec.InputRef, ups, int(spec.Block)); err != nil {
		return nil, err
	}
	return c.Submit(ctx, spec)
}

// AttentionResult is a finished attention job's output.
type AttentionResult struct {
	Status *pb.JobStatus
	O      *tensor.Tensor // [B, Hq, N, D]
	LSE    *tensor.Tensor // [B, Hq, N]; nil unless asked for
}

// outputs checks that st is a succeeded job and returns the store, the
// namespace of its outputs and its block length.
func (c *Client) outputs(ctx context.Context, st *pb.JobStatus) (*transport.Store, string, int, error) {
	if err := jobError(st); err != nil {
		return nil, "", 0, err
	}
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		return nil, "", 0, fmt.Errorf("%w: job %s is %v, not succeeded", ErrConflict, st.GetId(), st.GetState())
	}
	store, err := c.Store(ctx)
	if err != nil {
		return nil, "", 0, err
	}
	ref := st.GetOutputRef()
	if ref == "" {
		ref = st.GetId()
	}
	block := int(st.GetSpec().GetBlock())
	if block <= 0 {
		block = DefaultBlock
	}
	return store, ref, block, nil
}

// FetchAttention downloads the outputs of a succeeded attention job.
func (c *Client) FetchAttention(ctx context.Context, st *pb.JobStatus) (*AttentionResult, error) {
	store, ref, block, err := c.outputs(ctx, st)
	if err != nil {
		return nil, err
	}
	s := st.GetSpec()
	b, h, n, d := int(s.GetB()), int(s.GetHq()), int(s.GetN()), int(s.GetD())
	res := &AttentionResult{Status: st}
	ds := []download{{transport.TensorO, transport.Shape{b, h, n, d}, []int{b, h, n, d}, &res.O}}
	if s.GetWantLse() {
		ds = append(ds, download{transport.TensorLSE, transport.Shape{b, h, n, 1}, []int{b, h, n}, &res.LSE})
	}
	if err := c.fetchOutputs(ctx, store, ref, block, ds); err != nil {
		return nil, err
	}
	return res, nil
}

// Attention uploads the inputs, submits, waits and fetches the result.
// progress, when not nil, is called on every status change.
func (c *Client) Attention(ctx context.Context, q, k, v *tensor.Tensor, wantLSE bool, o JobOptions, progress func(*pb.JobStatus)) (*AttentionResult, error) {
	st, err := c.SubmitAttention(ctx, q, k, v, wantLSE, o)
	if err != nil {
		return nil, err
	}
	st, err = c.Watch(ctx, st.GetId(), 0, progress)
	if err != nil {
		return nil, err
	}
	return c.FetchAttention(ctx, st)
}

// MHAWeights are a torch.nn.MultiheadAttention layer's parameters: Wq, Wk,
// Wv [H·D, d_model], Wo [d_model, H·D]; the biases are optional (all or none).
type MHAWeights struct {
	Heads          int
	Wq, Wk, Wv, Wo *tensor.Tensor
	Bq, Bk, Bv, Bo *tensor.Tensor
}

const tensorX, tensorY = "x", "y"

// SubmitMHA uploads x [B, N, d_model] (rank 2 means B=1) and the weights and
// submits a layer job.
func (c *Client) SubmitMHA(ctx context.Context, x *tensor.Tensor, w MHAWeights, o JobOptions) (*pb.JobStatus, error) {
	return c.submitMHA(ctx, x, nil, w, o)
}

// submitMHA submits a layer job: a forward one, or with dy (x's shape) a
// forward+backward one whose dy is uploaded like x.
func (c *Client) submitMHA(ctx context.Context, x, dy *tensor.Tensor, w MHAWeights, o JobOptions) (*pb.JobStatus, error) {
	if x == nil {
		return nil, fmt.Errorf("%w: x is missing", ErrInvalid)
	}
	var b, n, dm int
	switch x.Rank() {
	case 2:
		b, n, dm = 1, x.Shape[0], x.Shape[1]
	case 3:
		b, n, dm = x.Shape[0], x.Shape[1], x.Shape[2]
	default:
		return nil, fmt.Errorf("%w: x has shape %v, expected [B,N,d_model] or [N,d_model]", ErrInvalid, x.Shape)
	}
	if w.Heads < 1 || w.Wq == nil || w.Wq.Rank() != 2 || w.Wq.Shape[0]%w.Heads != 0 {
		return nil, fmt.Errorf("%w: wq must be [H·D, d_model] with H = heads = %d", ErrInvalid, w.Heads)
	}
	hd := w.Wq.Shape[0]
	spec := o.spec(pb.JobKind_JOB_KIND_MHA)
	spec.B, spec.Hq, spec.Hkv, spec.N, spec.Nk = int64(b), int64(w.Heads), int64(w.Heads), int64(n), int64(n)
	spec.D, spec.DModel = int64(hd/w.Heads), int64(dm)
	biases := []*tensor.Tensor{w.Bq, w.Bk, w.Bv, w.Bo}
	nb := 0
	for _, t := range biases {
		if t != nil {
			nb++
		}
	}
	if nb != 0 && nb != 4 {
		return nil, fmt.Errorf("%w: give all four biases bq, bk, bv, bo or none", ErrInvalid)
	}
	spec.MhaBias = nb == 4
	if dy != nil {
		if !slices.Equal(dy.Shape, x.Shape) {
			return nil, fmt.Errorf("%w: dy has shape %v, expected x's %v", ErrInvalid, dy.Shape, x.Shape)
		}
		spec.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	}
	if err := c.check(spec); err != nil {
		return nil, err
	}
	st, err := c.Store(ctx)
	if err != nil {
		return nil, err
	}
	ups := []upload{{tensorX, x, []int{b, 1, n, dm}}}
	if dy != nil {
		ups = append(ups, upload{tensorDY, dy, []int{b, 1, n, dm}})
	}
	weights := []upload{{"wq", w.Wq, nil}, {"wk", w.Wk, nil}, {"wv", w.Wv, nil}, {"wo", w.Wo, nil}}
	if spec.MhaBias {
		weights = append(weights, upload{"bq", w.Bq, nil}, upload{"bk", w.Bk, nil}, upload{"bv", w.Bv, nil}, upload{"bo", w.Bo, nil})
	}
	for _, wt := range weights {
		if wt.t == nil {
			return nil, fmt.Errorf("%w: %s is missing", ErrInvalid, wt.name)
		}
		// A weight is one block (block 0): one row of all its values.
		ups = append(ups, upload{wt.name, wt.t, []int{1, 1, 1, len(wt.t.Data)}})
	}
	if err := c.uploadInputs(ctx, st, spec.InputRef, ups, int(spec.Block)); err != nil {
		return nil, err
	}
	return c.Submit(ctx, spec)
}

// FetchMHA downloads y [B, N, d_model] of a succeeded layer job.
func (c *Client) FetchMHA(ctx context.Context, st *pb.JobStatus) (*tensor.Tensor, error) {
	store, ref, block, err := c.outputs(ctx, st)
	if err != nil {
		return nil, err
	}
	s := st.GetSpec()
	b, n, dm := int(s.GetB()), int(s.GetN()), int(s.GetDModel())
	var y *tensor.Tensor
	if err := c.fetchOutputs(ctx, store, ref, block, []download{{tensorY, transport.Shape{b, 1, n, dm}, []int{b, n, dm}, &y}}); err != nil {
		return nil, err
	}
	return y, nil
}

// MHA uploads, submits, waits and fetches a layer job's output.
func (c *Client) MHA(ctx context.Context, x *tensor.Tensor, w MHAWeights, o JobOptions, progress func(*pb.JobStatus)) (*tensor.Tensor, *pb.JobStatus, error) {
	st, err := c.SubmitMHA(ctx, x, w, o)
	if err != nil {
		return nil, nil, err
	}
	st, err = c.Watch(ctx, st.GetId(), 0, progress)
	if err != nil {
		return nil, st, err
	}
	y, err := c.FetchMHA(ctx, st)
	return y, st, err
}

// GradResult is a finished backward job's output: the gradients of the
// loss with respect to q, k and v given dO, and (forward+backward jobs
// only) the forward's outputs.
type GradResult struct {
	Status *pb.JobStatus
	DQ     *tensor.Tensor // [B, Hq, N, D]
	DK, DV *tensor.Tensor // [B, Hkv, Nk, D]
	// O [B, Hq, N, D] and LSE [B, Hq, N] of the forward pass; nil for a
	// BACKWARD job, whose o and lse were given.
	O, LSE *tensor.Tensor
}

// SubmitAttentionBackward uploads q [B,Hq,N,D], k and v [B,Hkv,Nk,D], dO
// (do, q's shape) and submits a backward job. With out and lse nil it is a
// forward+backward job (the cluster computes o and lse first); with both
// given (the forward's o [B,Hq,N,D] and lse [B,Hq,N], as FetchAttention
// returns them with wantLSE) it is a backward job that skips the forward.
func (c *Client) SubmitAttentionBackward(ctx context.Context, q, k, v, do, out, lse *tensor.Tensor, o JobOptions) (*pb.JobStatus, error) {
	qs, err := shape4("q", q)
	if err != nil {
		return nil, err
	}
	ks, err := shape4("k", k)
	if err != nil {
		return nil, err
	}
	vs, err := shape4("v", v)
	if err != nil {
		return nil, err
	}
	dos, err := shape4("do", do)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(dos, qs) {
		return nil, fmt.Errorf("%w: do has shape %v, expected q's %v", ErrInvalid, do.Shape, q.Shape)
	}
	if !slices.Equal(vs, ks) {
		return nil, fmt.Errorf("%w: v has shape %v, expected k's %v", ErrInvalid, v.Shape, k.Shape)
	}
	if qs[0] != ks[0] || qs[3] != ks[3] {
		return nil, fmt.Errorf("%w: k has shape %v, expected q's batch %d and head dim %d", ErrInvalid, k.Shape, qs[0], qs[3])
	}
	spec := o.spec(pb.JobKind_JOB_KIND_ATTENTION)
	spec.B, spec.Hq, spec.N, spec.D = int64(qs[0]), int64(qs[1]), int64(qs[2]), int64(qs[3])
	spec.Hkv, spec.Nk = int64(ks[1]), int64(ks[2])
	spec.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	ups := []upload{{transport.TensorQ, q, qs}, {transport.TensorK, k, ks}, {transport.TensorV, v, vs}, {transport.TensorDO, do, dos}}
	switch {
	case out == nil && lse == nil:
	case out == nil || lse == nil:
		return nil, fmt.Errorf("%w: give both o and lse of the forward (or neither, to compute them)", ErrInvalid)
	default:
		os, err := shape4("o", out)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(os, qs) {
			return nil, fmt.Errorf("%w: o has shape %v, expected q's %v", ErrInvalid, out.Shape, q.Shape)
		}
		if want := []int{qs[0], qs[1], qs[2]}; !slices.Equal(lse.Shape, want) && !(qs[0] == 1 && slices.Equal(lse.Shape, want[1:])) {
			return nil, fmt.Errorf("%w: lse has shape %v, expected [B, Hq, N] = %v", ErrInvalid, lse.Shape, want)
		}
		spec.Mode = pb.JobMode_JOB_MODE_BACKWARD
		ups = append(ups, upload{transport.TensorO, out, os}, upload{transport.TensorLSE, lse, []int{qs[0], qs[1], qs[2], 1}})
	}
	if err := c.check(spec); err != nil {
		return nil, err
	}
	st, err := c.Store(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.uploadInputs(ctx, st, spec.InputRef, ups, int(spec.Block)); err != nil {
		return nil, err
	}
	return c.Submit(ctx, spec)
}

// FetchGrads downloads the gradients (and, for a forward+backward job, o
// and lse) of a succeeded backward job.
func (c *Client) FetchGrads(ctx context.Context, st *pb.JobStatus) (*GradResult, error) {
	store, ref, block, err := c.outputs(ctx, st)
	if err != nil {
		return nil, err
	}
	s := st.GetSpec()
	if s.GetMode() == pb.JobMode_JOB_MODE_FORWARD {
		return nil, fmt.Errorf("%w: job %s is a forward job: no gradients", ErrInvalid, st.GetId())
	}
	b, hq, hkv, n, nk, d := int(s.GetB()), int(s.GetHq()), int(s.GetHkv()), int(s.GetN()), int(s.GetNk()), int(s.GetD())
	res := &GradResult{Status: st}
	ds := []download{
		{transport.TensorDQ, transport.Shape{b, hq, n, d}, []int{b, hq, n, d}, &res.DQ},
		{transport.TensorDK, transport.Shape{b, hkv, nk, d}, []int{b, hkv, nk, d}, &res.DK},
		{transport.TensorDV, transport.Shape{b, hkv, nk, d}, []int{b, hkv, nk, d}, &res.DV},
	}
	if s.GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD {
		ds = append(ds, download{transport.TensorO, transport.Shape{b, hq, n, d}, []int{b, hq, n, d}, &res.O},
			download{transport.TensorLSE, transport.Shape{b, hq, n, 1}, []int{b, hq, n}, &res.LSE})
	}
	if err := c.fetchOutputs(ctx, store, ref, block, ds); err != nil {
		return nil, err
	}
	return res, nil
}

// AttentionBackward runs attention forward and backward on the cluster:
// it uploads q [B,Hq,N,D], k, v [B,Hkv,Nk,D] and dO (q's shape), submits a
// forward+backward job, waits and returns dQ, dK, dV with the forward's O
// and LSE. progress, when not nil, is called on every status change
// (JobStatus.phase says which pass runs).
func (c *Client) AttentionBackward(ctx context.Context, q, k, v, do *tensor.Tensor, o JobOptions, progress func(*pb.JobStatus)) (*GradResult, error) {
	return c.AttentionBackwardFrom(ctx, q, k, v, nil, nil, do, o, progress)
}

// AttentionBackwardFrom is AttentionBackward given the forward's outputs
// out [B,Hq,N,D] and lse [B,Hq,N] (both, or neither to compute them): the
// job then runs the backward pass only.
func (c *Client) AttentionBackwardFrom(ctx context.Context, q, k, v, out, lse, do *tensor.Tensor, o JobOptions, progress func(*pb.JobStatus)) (*GradResult, error) {
	st, err := c.SubmitAttentionBackward(ctx, q, k, v, do, out, lse, o)
	if err != nil {
		return nil, err
	}
	st, err = c.Watch(ctx, st.GetId(), 0, progress)
	if err != nil {
		return nil, err
	}
	return c.FetchGrads(ctx, st)
}
