package worker

import (
	"errors"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
)

// TestWorkerLayerGradsFrom: LayerDO and LayerGradsFrom around the
// kernels' attention backward give the float64 reference's layer
// gradients (with biases and without), and refuse tensors of the wrong
// length naming them.
func TestWorkerLayerGradsFrom(t *testing.T) {
	for _, bias := range []bool{true, false} {
		j := newMHAGradJob(7, bias, true)
		j.n = 77 // the reference is O(N²)
		j.x, j.dy = j.x[:j.b*j.n*j.dModel], j.dy[:j.b*j.n*j.dModel]
		j.ref.N = j.n
		w := j.ws
		l := &ringattn.Layer{DModel: j.dModel, Heads: j.heads, D: j.d, Wq: w["wq"], Wk: w["wk"], Wv: w["wv"], Wo: w["wo"],
			Bq: w["bq"], Bk: w["bk"], Bv: w["bv"], Bo: w["bo"]}
		p := kernels.Params{Shape: kernels.Shape{B: j.b, Hq: j.heads, Hkv: j.heads, D: j.d}, N: j.n, Nk: j.n,
			Mask: kernels.Mask{Causal: true}}
		if err := p.Validate(); err != nil {
			t.Fatal(err)
		}
		q, k, v, err := l.Project(j.x, j.b, j.n)
		if err != nil {
			t.Fatal(err)
		}
		o, lse := make([]float32, len(q)), make([]float32, j.b*j.heads*j.n)
		if err := kernels.Attention(&p, q, k, v, o, lse); err != nil {
			t.Fatal(err)
		}
		do, err := LayerDO(l, j.b, j.n, j.dy)
		if err != nil {
			t.Fatal(err)
		}
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		if err := kernels.AttentionBackward(&p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
			t.Fatal(err)
		}
		g, err := LayerGradsFrom(l, j.b, j.n, j.x, j.dy, o, dq, dk, dv)
		if err != nil {
			t.Fatal(err)
		}
		want := j.ref.Backward(j.x, w["wq"], w["wk"], w["wv"], w["wo"], w["bq"], w["bk"], w["bv"], w["bo"], j.dy)
		for _, c := range []struct {
			name string
			got  []float32
			want []float64
		}{{"dx", g.DX, want.DX}, {"dwq", g.DWq, want.DWq}, {"dwk", g.DWk, want.DWk}, {"dwv", g.DWv, want.DWv}, {"dwo", g.DWo, want.DWo},
			{"dbq", g.DBq, want.DBq}, {"dbk", g.DBk, want.DBk}, {"dbv", g.DBv, want.DBv}, {"dbo", g.DBo, want.DBo}} {
			if (c.got == nil) != (c.want == nil) {
				t.Fatalf("bias=%v: %s is %v, reference %v", bias, c.name, c.got != nil, c.want != nil)
			}
			tol := 2e-4 * max(1, attnref.MaxAbs(c.want))
			if d := attnref.MaxAbsDiff(c.got, c.want); !(d <= tol) {
				t.Fatalf("bias=%v: %s differs from the float64 reference by %g, want <= %g", bias, c.name, d, tol)
			}
		}
		if _, err := LayerGradsFrom(l, j.b, j.n, j.x, j.dy, o, dq, dk[1:], dv); !errors.Is(err, ringattn.ErrInvalid) || !strings.Contains(err.Error(), "layer dk has") {
			t.Errorf("short dk: %v, want ErrInvalid naming dk", err)
		}
		if _, err := LayerDO(l, j.b, j.n, j.dy[1:]); !errors.Is(err, ringattn.ErrInvalid) || !strings.Contains(err.Error(), "layer dY has") {
			t.Errorf("short dY: %v, want ErrInvalid naming dY", err)
		}
	}
}
