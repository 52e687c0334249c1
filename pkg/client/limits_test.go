package client

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestClientLimitsBeforeUpload: a job past the limits is refused by the
// SDK naming the spec field, as the coordinator would, before the store is
// even opened (the wrapping seqlens_k used to be uploaded and
// submitted, then crash the planner).
func TestClientLimitsBeforeUpload(t *testing.T) {
	e := transporttest.RunServer(t)
	conn := transport.NewConn(transporttest.Connect(t, e), transporttest.Config(e).Subjects(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(ctx, conn, transporttest.Config(e), Options{})
	if err != nil {
		t.Fatal(err)
	}
	small, err := New(ctx, conn, transporttest.Config(e), Options{Limits: shard.Limits{MaxBatch: 1, MaxHeads: 1, MaxTokens: 64,
		MaxD: 8, MaxBlocks: 64, MaxDocs: 4, MaxJobBytes: 4 * 4 * 4 * 8}})
	if err != nil {
		t.Fatal(err)
	}
	qkv := func(n int) (q, k, v *tensor.Tensor) {
		return tensor.New(make([]float32, n*8), 1, 1, n, 8), tensor.New(make([]float32, n*8), 1, 1, n, 8), tensor.New(make([]float32, n*8), 1, 1, n, 8)
	}
	cases := []struct {
		name  string
		cl    *Client
		n     int
		opts  JobOptions
		code  pb.ErrorCode
		field string
		msg   string
	}{
		{"wrapping seqlens_k", c, 4, JobOptions{Block: 2, SeqLens: []int{1, 1, 1, 1}, SeqLensK: []int{1, math.MaxInt64, math.MaxInt64, 5}},
			pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.mask.seqlens_k", "item 1 = 9223372036854775807 brings the sum past nk = 4"},
		{"MaxBlocks+1", c, 65537, JobOptions{Block: 1}, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.block", "Limits.MaxBlocks"},
		{"window", c, 4, JobOptions{Windowed: true, Left: 1<<24 + 1}, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.mask.window_left", "want -1"},
		{"scale", c, 4, JobOptions{Scale: math.Inf(1)}, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.scale", "finite"},
		{"MaxJobBytes+1", small, 5, JobOptions{Block: 4}, pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, "spec", "job needs 640 bytes of tensors: want at most 512"},
		{"MaxTokens+1", small, 65, JobOptions{Block: 4}, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.n", "65: want 1..64"},
	}
	for _, tc := range cases {
		q, k, v := qkv(tc.n)
		_, err := tc.cl.SubmitAttention(ctx, q, k, v, false, tc.opts)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Code != tc.code || ae.Field != tc.field || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("%s: got %v, want %v on %s containing %q", tc.name, err, tc.code, tc.field, tc.msg)
		}
		if tc.code == pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT && !errors.Is(err, ErrInvalid) ||
			tc.code == pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED && !errors.Is(err, ErrExhausted) {
			t.Errorf("%s: %v does not wrap the sentinel of its code", tc.name, err)
		}
	}
	// At the limits it is accepted locally: the bytes are exactly 512 at
	// n = 4.
	spec := (&JobOptions{Block: 4}).spec(pb.JobKind_JOB_KIND_ATTENTION)
	spec.B, spec.Hq, spec.Hkv, spec.N, spec.Nk, spec.D = 1, 1, 1, 4, 4, 8
	if err := small.check(spec); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
	if c.store != nil || small.store != nil {
		t.Fatal("the store was opened for a job refused locally")
	}
	if _, err := New(ctx, conn, transporttest.Config(e), Options{Limits: shard.Limits{MaxBatch: 1}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid Options.Limits: %v", err)
	}
}

// TestClientInputRefFresh: every submit uploads under a namespace of its
// own, never one derived from the idempotency key (a retried or colliding
// key used to overwrite the inputs of the live job it named).
func TestClientInputRefFresh(t *testing.T) {
	o := JobOptions{IdempotencyKey: "same-key"}
	a, b := o.spec(pb.JobKind_JOB_KIND_ATTENTION), o.spec(pb.JobKind_JOB_KIND_ATTENTION)
	if a.IdempotencyKey != "same-key" || b.IdempotencyKey != "same-key" {
		t.Fatalf("keys %q, %q", a.IdempotencyKey, b.IdempotencyKey)
	}
	if a.InputRef == b.InputRef || !strings.HasPrefix(a.InputRef, "in-") || strings.Contains(a.InputRef, "same-key") {
		t.Fatalf("input refs %q and %q: want fresh random namespaces", a.InputRef, b.InputRef)
	}
}

// TestClientLimitsBackward: a backward job counts do, dq, dk, dv and lse
// against MaxJobBytes (65·n float32 for these shapes: 260 bytes at n = 1,
// 520 at n = 2 against a limit of 512), refused before any upload, while
// the forward of the same shape (128·n bytes) fits.
func TestClientLimitsBackward(t *testing.T) {
	e := transporttest.RunServer(t)
	conn := transport.NewConn(transporttest.Connect(t, e), transporttest.Config(e).Subjects(), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	small, err := New(ctx, conn, transporttest.Config(e), Options{Limits: shard.Limits{MaxBatch: 1, MaxHeads: 1, MaxTokens: 64,
		MaxD: 8, MaxBlocks: 64, MaxDocs: 4, MaxJobBytes: 512}})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(n int) *tensor.Tensor { return tensor.New(make([]float32, n*8), 1, 1, n, 8) }
	spec := func(n int, mode pb.JobMode) *pb.JobSpec {
		return &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 1, Hkv: 1, N: int64(n), Nk: int64(n), D: 8, Block: 4, Mode: mode}
	}
	if err := small.check(spec(1, pb.JobMode_JOB_MODE_FORWARD_BACKWARD)); err != nil {
		t.Fatalf("backward of 260 bytes under a 512-byte limit: %v", err)
	}
	if err := small.check(spec(2, pb.JobMode_JOB_MODE_FORWARD)); err != nil {
		t.Fatalf("forward of 256 bytes under a 512-byte limit: %v", err)
	}
	_, err = small.SubmitAttentionBackward(ctx, mk(2), mk(2), mk(2), mk(2), nil, nil, JobOptions{Block: 4})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED || ae.Field != "spec" || !strings.Contains(ae.Message, "520 bytes") {
		t.Fatalf("backward of 520 bytes: %v, want RESOURCE_EXHAUSTED naming 520 bytes", err)
	}
	if small.store != nil {
		t.Fatal("the store was opened for a refused job")
	}
}
