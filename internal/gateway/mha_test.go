package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/shard"
)

// mhaLayer is a layer's inputs as float32 slices and as .npy parts.
type mhaLayer struct {
	x, dy, wq, wk, wv, wo, bq, bk, bv, bo []float32
	parts                                 []part
}

// newMHALayer returns x (rank 2 when b == 0, meaning B = 1), dy (x's
// shape), weights [hd, dm] ×3 and [dm, hd] scaled by 0.3, and biases when
// bias is set.
func newMHALayer(t *testing.T, seed uint64, b, n, dm, hd int, bias bool) *mhaLayer {
	r := testrand.New(seed)
	xShape := []int{b, n, dm}
	if b == 0 {
		b, xShape = 1, []int{n, dm}
	}
	l := &mhaLayer{x: r.Slice(b*n*dm, testrand.Normal), dy: r.Slice(b*n*dm, testrand.Normal)}
	l.parts = []part{{"x", npyBytes(t, l.x, xShape...)}, {"dy", npyBytes(t, l.dy, xShape...)}}
	w := func(dst *[]float32, name string, shape ...int) {
		size := 1
		for _, d := range shape {
			size *= d
		}
		*dst = r.Slice(size, testrand.Normal)
		if len(shape) == 2 {
			for i := range *dst {
				(*dst)[i] *= 0.3
			}
		}
		l.parts = append(l.parts, part{name, npyBytes(t, *dst, shape...)})
	}
	w(&l.wq, "wq", hd, dm)
	w(&l.wk, "wk", hd, dm)
	w(&l.wv, "wv", hd, dm)
	w(&l.wo, "wo", dm, hd)
	if bias {
		w(&l.bq, "bq", hd)
		w(&l.bk, "bk", hd)
		w(&l.bv, "bv", hd)
		w(&l.bo, "bo", dm)
	}
	return l
}

// TestGatewayMHABackward: mha layer forward+backward jobs over HTTP on the
// dev cluster — causal with biases and B = 2, then windowed without biases
// and x of rank 2 — list y and every gradient among their outputs, and y,
// dx and each weight and bias gradient are within 2e-4·max(1, max|ref|) of
// the float64 reference (attnref.MHA); a layer without biases has no bias
// gradients (404).
func TestGatewayMHABackward(t *testing.T) {
	base := "http://" + cluster(t).HTTPAddr()
	for _, c := range []struct {
		name               string
		b, n, dm, heads, d int
		bias               bool
		spec               string
		mask               attnref.Mask
		outputs            string
	}{
		{"causal bias B=2", 2, 70, 12, 3, 4, true, `{"kind": "mha", "heads": 3, "causal": true, "backward": true, "block": 32}`,
			attnref.Mask{Causal: true}, "[y dx dwq dwk dwv dwo dbq dbk dbv dbo]"},
		{"window no bias rank 2", 0, 90, 10, 2, 6, false, `{"kind": "mha", "heads": 2, "window": [20, 5], "backward": true, "block": 16}`,
			attnref.Mask{Windowed: true, Left: 20, Right: 5}, "[y dx dwq dwk dwv dwo]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			hd := c.heads * c.d
			l := newMHALayer(t, uint64(40+c.n), c.b, c.n, c.dm, hd, c.bias)
			ct, body := multipartBody(t, c.spec, l.parts...)
			resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
			if resp.StatusCode != 201 {
				t.Fatalf("submit: %d %s", resp.StatusCode, rb)
			}
			var st struct {
				ID, State, Kind, Mode string
				Outputs               []string
			}
			json.Unmarshal(rb, &st)
			if st.Kind != "mha" || st.Mode != "forward_backward" {
				t.Fatalf("submitted %s: expected kind mha, mode forward_backward", rb)
			}
			resp, rb = do(t, "GET", base+"/v1/jobs/"+st.ID+"?wait=60s", "", nil)
			if err := json.Unmarshal(rb, &st); err != nil || resp.StatusCode != 200 || st.State != "succeeded" {
				t.Fatalf("wait: %d %s", resp.StatusCode, rb)
			}
			if fmt.Sprint(st.Outputs) != c.outputs {
				t.Fatalf("outputs %v, expected %s", st.Outputs, c.outputs)
			}
			b := max(c.b, 1)
			m := &attnref.MHA{B: b, N: c.n, DModel: c.dm, Heads: c.heads, D: c.d, Mask: c.mask}
			ref := m.Backward(l.x, l.wq, l.wk, l.wv, l.wo, l.bq, l.bk, l.bv, l.bo, l.dy)
			wantY := m.Forward(l.x, l.wq, l.wk, l.wv, l.wo, l.bq, l.bk, l.bv, l.bo)
			checks := []struct {
				name  string
				want  []float64
				shape []int
			}{
				{"y", wantY, []int{b, c.n, c.dm}}, {"dx", ref.DX, []int{b, c.n, c.dm}},
				{"dwq", ref.DWq, []int{hd, c.dm}}, {"dwk", ref.DWk, []int{hd, c.dm}},
				{"dwv", ref.DWv, []int{hd, c.dm}}, {"dwo", ref.DWo, []int{c.dm, hd}},
			}
			if c.bias {
				checks = append(checks, []struct {
					name  string
					want  []float64
					shape []int
				}{{"dbq", ref.DBq, []int{hd}}, {"dbk", ref.DBk, []int{hd}}, {"dbv", ref.DBv, []int{hd}}, {"dbo", ref.DBo, []int{c.dm}}}...)
			}
			for _, ch := range checks {
				got := fetchNPY(t, base, st.ID, ch.name+".npy", ch.shape...)
				e, tol := attnref.MaxAbsDiff(got.Data, ch.want), 2e-4*max(1, attnref.MaxAbs(ch.want))
				t.Logf("%s: max |err| %.3g (tolerance %.3g)", ch.name, e, tol)
				if !(e <= tol) {
					t.Fatalf("%s: max |err| %g against float64, expected <= %g", ch.name, e, tol)
				}
			}
			if !c.bias {
				resp, rb := do(t, "GET", base+"/v1/jobs/"+st.ID+"/outputs/dbq", "", nil)
				if resp.StatusCode != 404 || !strings.Contains(string(rb), `"field":"name"`) {
					t.Fatalf("dbq of a layer without biases: %d %s, expected 404 naming name", resp.StatusCode, rb)
				}
			}
		})
	}
	// A forward layer job has y only: its gradients are 404.
	l := newMHALayer(t, 9, 1, 20, 8, 8, false)
	fwd := append([]part{l.parts[0]}, l.parts[2:]...)
	ct, body := multipartBody(t, `{"kind": "mha", "heads": 2}`, fwd...)
	resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
	if resp.StatusCode != 201 {
		t.Fatalf("forward submit: %d %s", resp.StatusCode, rb)
	}
	id := decodeJob(t, rb).ID
	if _, rb = do(t, "GET", base+"/v1/jobs/"+id+"?wait=60s", "", nil); fmt.Sprint(decodeJob(t, rb).Outputs) != "[y]" {
		t.Fatalf("forward layer job: %s, expected outputs [y]", rb)
	}
	if resp, rb := do(t, "GET", base+"/v1/jobs/"+id+"/outputs/dx", "", nil); resp.StatusCode != 404 {
		t.Fatalf("dx of a forward layer job: %d %s, expected 404", resp.StatusCode, rb)
	}
	resp, rb = do(t, "GET", base+"/v1/info", "", nil)
	var info struct{ Outputs map[string][]string }
	if json.Unmarshal(rb, &info) != nil || resp.StatusCode != 200 || len(info.Outputs["mha_forward_backward"]) != 10 {
		t.Fatalf("/v1/info: %d %s, expected outputs.mha_forward_backward", resp.StatusCode, rb)
	}
}

// TestGatewayMHABackwardErrors: a malformed layer backward submit is a 400
// naming the part or spec field at fault, before anything is uploaded.
func TestGatewayMHABackwardErrors(t *testing.T) {
	base := gatewayServer(t, gateway.Config{})
	l := newMHALayer(t, 11, 1, 16, 8, 8, true)
	byName := map[string][]byte{}
	for _, p := range l.parts {
		byName[p.name] = p.data
	}
	with := func(repl map[string][]byte, drop ...string) []part {
		var out []part
		for _, p := range l.parts {
			if slices.Contains(drop, p.name) {
				continue
			}
			if d, ok := repl[p.name]; ok {
				p.data = d
			}
			out = append(out, p)
		}
		return out
	}
	const spec = `{"kind": "mha", "heads": 2, "backward": true}`
	for _, c := range []struct {
		name, spec   string
		parts        []part
		field, inMsg string
	}{
		{"no dy", spec, with(nil, "dy"), "dy", `missing part "dy": a mha backward job takes x, dy`},
		{"dy without backward", `{"kind": "mha", "heads": 2}`, l.parts, "dy", "spec.backward"},
		{"dy shape", spec, with(map[string][]byte{"dy": npyBytes(t, make([]float32, 15*8), 15, 8)}), "dy", "x's"},
		{"dy rank", spec, with(map[string][]byte{"dy": npyBytes(t, make([]float32, 16*8), 16, 8)}), "dy", "want x's shape [1 16 8]"},
		{"wk shape", spec, with(map[string][]byte{"wk": npyBytes(t, make([]float32, 8*4), 4, 8)}), "wk", "want wq's shape [8 8]"},
		{"wq heads", `{"kind": "mha", "heads": 3, "backward": true}`, l.parts, "wq", "multiple of heads = 3"},
		{"wo shape", spec, with(map[string][]byte{"wo": npyBytes(t, make([]float32, 8*4), 8, 4)}), "wo", "want [d_model, H·D] = [8 8]"},
		{"bo shape", spec, with(map[string][]byte{"bo": npyBytes(t, make([]float32, 4), 4)}), "bo", "want [d_model] = [8]"},
		{"x rank", spec, with(map[string][]byte{"x": npyBytes(t, make([]float32, 16*8), 1, 1, 16, 8),
			"dy": npyBytes(t, make([]float32, 16*8), 1, 1, 16, 8)}), "x", "[B,N,d_model]"},
		{"three biases", spec, with(nil, "bo"), "bq", "all of bq, bk, bv, bo or none"},
		{"do part", spec, append(with(nil), part{"do", byName["dy"]}), "do", "unexpected part"},
		{"return_lse", `{"kind": "mha", "heads": 2, "backward": true, "return_lse": true}`, l.parts, "spec.return_lse", "no lse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ct, body := multipartBody(t, c.spec, c.parts...)
			resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
			var e apiError
			if err := json.Unmarshal(rb, &e); err != nil {
				t.Fatalf("%d: not a JSON error: %s", resp.StatusCode, rb)
			}
			if resp.StatusCode != 400 || e.Error.Field != c.field || !strings.Contains(e.Error.Message, c.inMsg) {
				t.Fatalf("got %d %s, expected 400 naming %q with %q", resp.StatusCode, rb, c.field, c.inMsg)
			}
		})
	}
}

// TestGatewayMHABackwardLimits: a layer backward job is counted with its
// gradients (shard.Tensors{Grad: true}): at the job-byte limit it is
// served, one byte under it is 413 naming the spec, and the forward's
// byte count alone is not enough.
func TestGatewayMHABackwardLimits(t *testing.T) {
	d := cluster(t)
	const n, dm, heads, hd = 32, 8, 2, 8
	req := &shard.Request{B: 1, Hq: heads, Hkv: heads, N: n, Nk: n, D: hd / heads, Block: 16, Ranks: 1}
	fwdBytes, ok1 := shard.JobBytes(req, shard.Tensors{DModel: dm, Bias: true})
	gradBytes, ok2 := shard.JobBytes(req, shard.Tensors{DModel: dm, Bias: true, Grad: true})
	if !ok1 || !ok2 || gradBytes <= fwdBytes {
		t.Fatalf("JobBytes: backward %d, forward %d (ok %v %v): expected the backward's larger", gradBytes, fwdBytes, ok1, ok2)
	}
	l := newMHALayer(t, 12, 1, n, dm, hd, true)
	ct, body := multipartBody(t, `{"kind": "mha", "heads": 2, "backward": true, "block": 16}`, l.parts...)
	for _, c := range []struct {
		maxJobBytes int64
		status      int
	}{{gradBytes, 201}, {gradBytes - 1, 413}, {fwdBytes, 413}} {
		lim := shard.DefaultLimits()
		lim.MaxJobBytes = c.maxJobBytes
		cl, err := client.Connect(context.Background(), d.NATSConfig(), client.Options{Limits: lim})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		g, err := gateway.New(cl, gateway.Config{Limits: lim})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(g)
		t.Cleanup(srv.Close)
		resp, rb := do(t, "POST", srv.URL+"/v1/jobs", ct, body)
		var e apiError
		json.Unmarshal(rb, &e)
		if resp.StatusCode != c.status || (c.status == 413 && !strings.HasPrefix(e.Error.Field, "spec")) {
			t.Fatalf("MaxJobBytes %d (job %d bytes): %d %s, expected %d", c.maxJobBytes, gradBytes, resp.StatusCode, rb, c.status)
		}
	}
}
