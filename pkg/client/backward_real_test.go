package client_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestClientAttentionBackwardReal runs AttentionBackward (forward+backward)
// and AttentionBackwardFrom (o and lse given) on an embedded cluster for
// causal GQA with a ragged last block: dQ, dK, dV are within 2e-4 ·
// max(1, max|ref|) of the float64 reference, O and LSE of the forward
// too, and the watch sees the forward phase, then the backward one.
func TestClientAttentionBackwardReal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 2, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const b, hq, hkv, n, d = 1, 4, 2, 300, 16
	r := testrand.New(11)
	q := tensor.New(r.Slice(b*hq*n*d, testrand.Normal), b, hq, n, d)
	k := tensor.New(r.Slice(b*hkv*n*d, testrand.Normal), b, hkv, n, d)
	v := tensor.New(r.Slice(b*hkv*n*d, testrand.Normal), b, hkv, n, d)
	do := tensor.New(r.Slice(b*hq*n*d, testrand.Normal), b, hq, n, d)
	opts := client.JobOptions{Causal: true, Block: 64}
	var mu sync.Mutex
	var phases []string
	res, err := cl.AttentionBackward(ctx, q, k, v, do, opts, func(st *pb.JobStatus) {
		mu.Lock()
		defer mu.Unlock()
		if p := st.GetPhase(); p != "" && (len(phases) == 0 || phases[len(phases)-1] != p) {
			phases = append(phases, p)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ref := &attnref.Problem{B: b, Hq: hq, Hkv: hkv, N: n, Nk: n, D: d, Mask: attnref.Mask{Causal: true}}
	wdq, wdk, wdv := ref.Backward(q.Data, k.Data, v.Data, do.Data)
	wo, wl := ref.Attention(q.Data, k.Data, v.Data)
	check := func(what string, got *tensor.Tensor, want []float64, shape ...int) {
		t.Helper()
		if got == nil || !slices.Equal(got.Shape, shape) {
			t.Fatalf("%s: %v, want shape %v", what, got, shape)
		}
		tol := 2e-4 * max(1, attnref.MaxAbs(want))
		if dd := attnref.MaxAbsDiff(got.Data, want); !(dd <= tol) {
			t.Fatalf("%s differs from the float64 reference by %g, want <= %g", what, dd, tol)
		}
	}
	check("dq", res.DQ, wdq, b, hq, n, d)
	check("dk", res.DK, wdk, b, hkv, n, d)
	check("dv", res.DV, wdv, b, hkv, n, d)
	check("o", res.O, wo, b, hq, n, d)
	check("lse", res.LSE, wl, b, hq, n)
	mu.Lock()
	if !slices.Equal(phases, []string{"forward", "backward"}) && !slices.Equal(phases, []string{"backward"}) {
		t.Errorf("phases seen %v, want forward then backward", phases)
	}
	mu.Unlock()

	from, err := cl.AttentionBackwardFrom(ctx, q, k, v, res.O, res.LSE, do, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	check("dq (o, lse given)", from.DQ, wdq, b, hq, n, d)
	check("dk (o, lse given)", from.DK, wdk, b, hkv, n, d)
	check("dv (o, lse given)", from.DV, wdv, b, hkv, n, d)
	if from.O != nil || from.LSE != nil || from.Status.GetSpec().GetMode() != pb.JobMode_JOB_MODE_BACKWARD {
		t.Fatalf("backward-only job: mode %v, O %v: want BACKWARD without forward outputs", from.Status.GetSpec().GetMode(), from.O)
	}

	// Bad inputs are refused before anything is uploaded.
	short := tensor.New(make([]float32, b*hq*(n-1)*d), b, hq, n-1, d)
	for _, c := range []struct {
		do, o, lse *tensor.Tensor
		want       string
	}{
		{short, nil, nil, "do has shape"},
		{do, res.O, nil, "both o and lse"},
		{do, short, res.LSE, "o has shape"},
		{do, res.O, tensor.New(make([]float32, hq*n), hq, n, 1), "lse has shape"},
	} {
		_, err := cl.SubmitAttentionBackward(ctx, q, k, v, c.do, c.o, c.lse, opts)
		if !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SubmitAttentionBackward: %v, want ErrInvalid naming %q", err, c.want)
		}
	}
}
