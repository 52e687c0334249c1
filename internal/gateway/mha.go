package gateway

import (
	"context"
	"slices"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// An mha job with spec.backward is a layer forward+backward job (the SDK's
// SubmitMHABackward): parts x, dy (x's shape, dL/dy) and the weights; it
// outputs y and the gradients of sum(y·dy) with respect to x and every
// parameter. The cluster stores those gradients in shares — dX as dxq + dxkv
// (by query and by key block), each weight and bias gradient as one share per
// block (internal/worker/DESIGN.md) — and lists only y among the job's
// outputs; the gateway lists and serves the summed gradients, as
// client.FetchMHAGrads computes them.

// outputsOf is the outputs the gateway serves for a job: the coordinator's
// list, and for a layer forward+backward job that has outputs y and its
// gradients.
func outputsOf(st *pb.JobStatus) []string {
	outs := st.GetOutputs()
	if len(outs) == 0 || !client.IsMHAGradJob(st.GetSpec()) {
		return outs
	}
	names, _ := client.MHAGradShapes(st.GetSpec())
	return append([]string{"y"}, names...)
}

// submitMHA checks the layer's part shapes, naming the part at fault, and
// submits a forward job, or with dy a forward+backward one.
func (g *Gateway) submitMHA(ctx context.Context, sub *submission) (*pb.JobStatus, error) {
	t := sub.tensors
	if err := checkMHAShapes(t, sub.spec.Heads); err != nil {
		return nil, err
	}
	w := client.MHAWeights{Heads: sub.spec.Heads, Wq: t["wq"], Wk: t["wk"], Wv: t["wv"], Wo: t["wo"],
		Bq: t["bq"], Bk: t["bk"], Bv: t["bv"], Bo: t["bo"]}
	if sub.spec.Backward {
		return g.cl.SubmitMHABackward(ctx, t["x"], t["dy"], w, sub.opts)
	}
	return g.cl.SubmitMHA(ctx, t["x"], w, sub.opts)
}

// checkMHAShapes names the layer part whose shape does not fit: x
// [B,N,d_model] or [N,d_model]; wq, wk, wv [H·D,d_model] with H = heads
// dividing H·D; wo [d_model,H·D]; bq, bk, bv [H·D] and bo [d_model] when
// given; dy x's shape when given.
func checkMHAShapes(t map[string]*tensor.Tensor, heads int) *Error {
	x := t["x"]
	if r := x.Rank(); r != 2 && r != 3 {
		return invalid("x", "shape %s: want [B,N,d_model] or [N,d_model]", tensor.FormatShape(x.Shape))
	}
	dm := x.Shape[x.Rank()-1]
	wq := t["wq"]
	if wq.Rank() != 2 || wq.Shape[1] != dm || wq.Shape[0] < heads || wq.Shape[0]%heads != 0 {
		return invalid("wq", "shape %s: want [H·D, d_model] with d_model = %d (x's last dim) and H·D a multiple of heads = %d",
			tensor.FormatShape(wq.Shape), dm, heads)
	}
	hd := wq.Shape[0]
	want := []struct {
		name  string
		shape []int
		what  string
	}{
		{"wk", []int{hd, dm}, "wq's shape"}, {"wv", []int{hd, dm}, "wq's shape"}, {"wo", []int{dm, hd}, "[d_model, H·D] ="},
		{"bq", []int{hd}, "[H·D] ="}, {"bk", []int{hd}, "[H·D] ="}, {"bv", []int{hd}, "[H·D] ="}, {"bo", []int{dm}, "[d_model] ="},
		{"dy", x.Shape, "x's shape"},
	}
	for _, w := range want {
		if p := t[w.name]; p != nil && !slices.Equal(p.Shape, w.shape) {
			return invalid(w.name, "shape %s: want %s %s", tensor.FormatShape(p.Shape), w.what, tensor.FormatShape(w.shape))
		}
	}
	return nil
}

// mhaGrad reads one gradient of a succeeded layer forward+backward job
// from the store, as client.FetchMHAGrads computes it. ok is false when
// name is not one of its gradients.
func mhaGrad(ctx context.Context, store *transport.Store, st *pb.JobStatus, name string) (t *tensor.Tensor, ok bool, err error) {
	names, _ := client.MHAGradShapes(st.GetSpec())
	if !client.IsMHAGradJob(st.GetSpec()) || !slices.Contains(names, name) {
		return nil, false, nil
	}
	t, err = client.ReadMHAGrad(ctx, store, st, name)
	return t, true, err
}
