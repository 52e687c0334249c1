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

// TestClientMHABackwardReal runs MHABackward (a layer forward+backward
// job) on an embedded cluster of two workers, causal, with biases, x of
// rank 2 (B = 1) and a ragged last block: y, dX and every weight and bias
// gradient are within 2e-4 · max(1, max|ref|) of the float64 reference,
// the watch sees the forward phase, then the backward one; bad inputs are
// refused before anything is uploaded, and FetchMHAGrads of a forward
// layer job is refused.
func TestClientMHABackwardReal(t *testing.T) {
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
	const n, dModel, heads, d = 300, 16, 2, 8
	const hd = heads * d
	r := testrand.New(17)
	mk := func(scale float32, shape ...int) *tensor.Tensor {
		size := 1
		for _, s := range shape {
			size *= s
		}
		x := r.Slice(size, testrand.Normal)
		for i := range x {
			x[i] *= scale
		}
		return tensor.New(x, shape...)
	}
	x, dy := mk(1, n, dModel), mk(1, n, dModel)
	w := client.MHAWeights{Heads: heads, Wq: mk(0.3, hd, dModel), Wk: mk(0.3, hd, dModel), Wv: mk(0.3, hd, dModel),
		Wo: mk(0.3, dModel, hd), Bq: mk(1, hd), Bk: mk(1, hd), Bv: mk(1, hd), Bo: mk(1, dModel)}
	opts := client.JobOptions{Causal: true, Block: 64}
	var mu sync.Mutex
	var phases []string
	res, err := cl.MHABackward(ctx, x, dy, w, opts, func(st *pb.JobStatus) {
		mu.Lock()
		defer mu.Unlock()
		if p := st.GetPhase(); p != "" && (len(phases) == 0 || phases[len(phases)-1] != p) {
			phases = append(phases, p)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &attnref.MHA{B: 1, N: n, DModel: dModel, Heads: heads, D: d, Mask: attnref.Mask{Causal: true}}
	ref := m.Backward(x.Data, w.Wq.Data, w.Wk.Data, w.Wv.Data, w.Wo.Data, w.Bq.Data, w.Bk.Data, w.Bv.Data, w.Bo.Data, dy.Data)
	wantY := m.Forward(x.Data, w.Wq.Data, w.Wk.Data, w.Wv.Data, w.Wo.Data, w.Bq.Data, w.Bk.Data, w.Bv.Data, w.Bo.Data)
	for _, c := range []struct {
		what  string
		got   *tensor.Tensor
		want  []float64
		shape []int
	}{
		{"y", res.Y, wantY, []int{1, n, dModel}}, {"dx", res.DX, ref.DX, []int{1, n, dModel}},
		{"dwq", res.DWq, ref.DWq, []int{hd, dModel}}, {"dwk", res.DWk, ref.DWk, []int{hd, dModel}},
		{"dwv", res.DWv, ref.DWv, []int{hd, dModel}}, {"dwo", res.DWo, ref.DWo, []int{dModel, hd}},
		{"dbq", res.DBq, ref.DBq, []int{hd}}, {"dbk", res.DBk, ref.DBk, []int{hd}},
		{"dbv", res.DBv, ref.DBv, []int{hd}}, {"dbo", res.DBo, ref.DBo, []int{dModel}},
	} {
		if c.got == nil || !slices.Equal(c.got.Shape, c.shape) {
			t.Fatalf("%s: %v, want shape %v", c.what, c.got, c.shape)
		}
		tol := 2e-4 * max(1, attnref.MaxAbs(c.want))
		if dd := attnref.MaxAbsDiff(c.got.Data, c.want); !(dd <= tol) {
			t.Fatalf("%s differs from the float64 reference by %g, want <= %g", c.what, dd, tol)
		}
	}
	mu.Lock()
	if !slices.Equal(phases, []string{"forward", "backward"}) && !slices.Equal(phases, []string{"backward"}) {
		t.Errorf("phases seen %v, want forward then backward", phases)
	}
	mu.Unlock()

	for _, c := range []struct {
		x, dy *tensor.Tensor
		want  string
	}{
		{x, nil, "dy is missing"},
		{nil, dy, "x is missing"},
		{x, mk(1, n-1, dModel), "dy has shape"},
	} {
		if _, err := cl.SubmitMHABackward(ctx, c.x, c.dy, w, opts); !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SubmitMHABackward: %v, want ErrInvalid naming %q", err, c.want)
		}
	}
	y, st, err := cl.MHA(ctx, x, w, opts, nil)
	if err != nil || y == nil {
		t.Fatalf("forward layer job: %v", err)
	}
	if _, err := cl.FetchMHAGrads(ctx, st); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("FetchMHAGrads of a forward job: %v, want ErrInvalid", err)
	}
}
