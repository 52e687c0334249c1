package gateway_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
)

var (
	devOnce sync.Once
	dev     *devcluster.Cluster
	devErr  error
)

// cluster is one in-process dev cluster shared by the tests (it lives
// until the test binary exits); its HTTP address serves the job API.
func cluster(t testing.TB) *devcluster.Cluster {
	t.Helper()
	devOnce.Do(func() {
		dev, devErr = devcluster.Start(context.Background(), devcluster.Config{Workers: 2, WorkerThreads: 1, WorkerGFLOPS: 10})
	})
	if devErr != nil {
		t.Fatal(devErr)
	}
	return dev
}

func TestMain(m *testing.M) {
	code := m.Run()
	if dev != nil {
		dev.Close()
	}
	os.Exit(code)
}

// gatewayServer serves a gateway of its own config over the shared cluster.
func gatewayServer(t *testing.T, cfg gateway.Config) string {
	t.Helper()
	d := cluster(t)
	cl, err := client.Connect(context.Background(), d.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	g, err := gateway.New(cl, cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	return srv.URL
}

func npyBytes(t testing.TB, data []float32, shape ...int) []byte {
	var buf bytes.Buffer
	if err := tensor.EncodeNPY(&buf, tensor.New(data, shape...)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type part struct {
	name string
	data []byte
}

// multipartBody builds a submit body: spec JSON, then the parts in order.
func multipartBody(t testing.TB, spec string, parts ...part) (string, []byte) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if spec != "" {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="spec"`)
		h.Set("Content-Type", "application/json")
		w, _ := mw.CreatePart(h)
		io.WriteString(w, spec)
	}
	for _, p := range parts {
		w, _ := mw.CreateFormFile(p.name, p.name+".npy")
		w.Write(p.data)
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

type apiError struct {
	Error struct {
		Code, Field, Message string
		Status               int
	}
}

func do(t *testing.T, method, url, ctype string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

type job struct {
	ID, State, Reason string
	Outputs           []string
}

func decodeJob(t *testing.T, b []byte) job {
	t.Helper()
	var j job
	if err := json.Unmarshal(b, &j); err != nil || j.ID == "" {
		t.Fatalf("not a job: %s (%v)", b, err)
	}
	return j
}

// attentionInputs returns q [b,hq,n,d], k, v [b,hkv,nk,d] as .npy parts.
func attentionInputs(t testing.TB, seed uint64, b, hq, hkv, n, nk, d int) (q, k, v []float32, parts []part) {
	r := testrand.New(seed)
	q, k, v = r.Slice(b*hq*n*d, testrand.Normal), r.Slice(b*hkv*nk*d, testrand.Normal), r.Slice(b*hkv*nk*d, testrand.Normal)
	return q, k, v, []part{{"q", npyBytes(t, q, b, hq, n, d)}, {"k", npyBytes(t, k, b, hkv, nk, d)}, {"v", npyBytes(t, v, b, hkv, nk, d)}}
}

// TestGatewayAttentionRoundTrip: submit over HTTP, follow the server-sent
// events to the end, fetch o and lse as .npy, and check them against the
// float64 reference.
func TestGatewayAttentionRoundTrip(t *testing.T) {
	base := "http://" + cluster(t).HTTPAddr()
	const b, hq, hkv, n, nk, d = 1, 4, 2, 300, 300, 16
	q, k, v, parts := attentionInputs(t, 1, b, hq, hkv, n, nk, d)
	ct, body := multipartBody(t, `{"causal": true, "return_lse": true, "block": 64}`, parts...)
	resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
	if resp.StatusCode != 201 {
		t.Fatalf("submit: %d %s", resp.StatusCode, rb)
	}
	j := decodeJob(t, rb)
	if loc := resp.Header.Get("Location"); loc != "/v1/jobs/"+j.ID {
		t.Fatalf("Location %q, expected /v1/jobs/%s", loc, j.ID)
	}

	// Server-sent events: progress events, then done.
	sresp, err := http.Get(base + "/v1/jobs/" + j.ID + "/events")
	if err != nil {
		t.Fatal(err)
	}
	if ct := sresp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events Content-Type %q", ct)
	}
	sc := bufio.NewScanner(sresp.Body)
	var events []string
	var last string
	for sc.Scan() {
		line := sc.Text()
		if ev, ok := strings.CutPrefix(line, "event: "); ok {
			events = append(events, ev)
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			last = data
		}
	}
	sresp.Body.Close()
	if len(events) < 2 || events[len(events)-1] != "done" || events[0] != "progress" {
		t.Fatalf("events %v: expected progress ... done", events)
	}
	if fin := decodeJob(t, []byte(last)); fin.State != "succeeded" {
		t.Fatalf("final event %s", last)
	}

	ref := attnref.Problem{B: b, Hq: hq, Hkv: hkv, N: n, Nk: nk, D: d, Mask: attnref.Mask{Causal: true}}
	wantO, wantLSE := ref.Attention(q, k, v)
	for _, out := range []struct {
		name  string
		want  []float64
		shape []int
	}{{"o", wantO, []int{b, hq, n, d}}, {"lse", wantLSE, []int{b, hq, n}}} {
		resp, data := do(t, "GET", base+"/v1/jobs/"+j.ID+"/outputs/"+out.name, "", nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-npy" {
			t.Fatalf("%s: %d %s", out.name, resp.StatusCode, data)
		}
		if cl := resp.Header.Get("Content-Length"); cl != fmt.Sprint(len(data)) {
			t.Fatalf("%s: Content-Length %s, body %d bytes", out.name, cl, len(data))
		}
		got, err := tensor.DecodeNPY(data)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got.Shape) != fmt.Sprint(out.shape) {
			t.Fatalf("%s: shape %v, expected %v", out.name, got.Shape, out.shape)
		}
		if e := attnref.MaxAbsDiff(got.Data, out.want); e > 1e-4 {
			t.Fatalf("%s: max |err| %g against float64, expected <= 1e-4", out.name, e)
		}
	}
	// Long-poll of a finished job answers at once; list shows it.
	resp, rb = do(t, "GET", base+"/v1/jobs/"+j.ID+"?wait=30s", "", nil)
	if resp.StatusCode != 200 || decodeJob(t, rb).State != "succeeded" {
		t.Fatalf("long-poll: %d %s", resp.StatusCode, rb)
	}
	resp, rb = do(t, "GET", base+"/v1/jobs?state=succeeded&limit=50", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(rb), j.ID) {
		t.Fatalf("list: %d %s", resp.StatusCode, rb)
	}
	// The coordinator's ops endpoints share the address.
	if resp, rb := do(t, "GET", base+"/readyz", "", nil); resp.StatusCode != 200 {
		t.Fatalf("/readyz: %d %s", resp.StatusCode, rb)
	}
	if resp, rb := do(t, "GET", base+"/v1/cluster", "", nil); resp.StatusCode != 200 {
		t.Fatalf("/v1/cluster: %d %s", resp.StatusCode, rb)
	}
}

// fetchNPY gets one output of a succeeded job and checks its shape.
func fetchNPY(t *testing.T, base, id, name string, shape ...int) *tensor.Tensor {
	t.Helper()
	resp, data := do(t, "GET", base+"/v1/jobs/"+id+"/outputs/"+name, "", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-npy" {
		t.Fatalf("%s: %d %s", name, resp.StatusCode, data)
	}
	got, err := tensor.DecodeNPY(data)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.Shape) != fmt.Sprint(shape) {
		t.Fatalf("%s: shape %v, expected %v", name, got.Shape, shape)
	}
	return got
}

// TestGatewayBackward: a causal GQA problem of three documents, as a
// forward+backward job (dq, dk, dv, o, lse) and then as a backward job
// given that job's o and lse; every output against the float64
// reference within 2e-4·max(1, max|ref|).
func TestGatewayBackward(t *testing.T) {
	base := "http://" + cluster(t).HTTPAddr()
	const b, hq, hkv, n, d = 1, 4, 2, 96, 16
	q, k, v, parts := attentionInputs(t, 21, b, hq, hkv, n, n, d)
	dO := testrand.New(22).Slice(b*hq*n*d, testrand.Normal)
	parts = append(parts, part{"do", npyBytes(t, dO, b, hq, n, d)})
	seqlens := []int{40, 25, 31}
	ref := attnref.Problem{B: b, Hq: hq, Hkv: hkv, N: n, Nk: n, D: d, Mask: attnref.Mask{Causal: true, SeqLens: seqlens, SeqLensK: seqlens}}
	wantO, wantLSE := ref.Attention(q, k, v)
	dq, dk, dv := ref.Backward(q, k, v, dO)
	check := func(name string, got *tensor.Tensor, want []float64) {
		t.Helper()
		e, tol := attnref.MaxAbsDiff(got.Data, want), 2e-4*max(1, attnref.MaxAbs(want))
		t.Logf("%s: max |err| %.3g (tolerance %.3g)", name, e, tol)
		if e > tol {
			t.Fatalf("%s: max |err| %g against float64, expected <= %g", name, e, tol)
		}
	}
	run := func(spec string, parts []part, mode string, outputs string) string {
		t.Helper()
		ct, body := multipartBody(t, spec, parts...)
		resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
		if resp.StatusCode != 201 {
			t.Fatalf("submit: %d %s", resp.StatusCode, rb)
		}
		id := decodeJob(t, rb).ID
		resp, rb = do(t, "GET", base+"/v1/jobs/"+id+"?wait=60s", "", nil)
		var st struct {
			State, Mode, Phase string
			Outputs            []string
		}
		if err := json.Unmarshal(rb, &st); err != nil || resp.StatusCode != 200 || st.State != "succeeded" {
			t.Fatalf("wait: %d %s", resp.StatusCode, rb)
		}
		if st.Mode != mode || fmt.Sprint(st.Outputs) != outputs {
			t.Fatalf("status %s: expected mode %q, outputs %s", rb, mode, outputs)
		}
		return id
	}
	spec := `{"causal": true, "backward": true, "block": 16, "seqlens": [40, 25, 31]}`
	id := run(spec, parts, "forward_backward", "[o lse dq dk dv]")
	check("o", fetchNPY(t, base, id, "o", b, hq, n, d), wantO)
	lse := fetchNPY(t, base, id, "lse", b, hq, n)
	check("lse", lse, wantLSE)
	o := fetchNPY(t, base, id, "o", b, hq, n, d)
	check("dq", fetchNPY(t, base, id, "dq", b, hq, n, d), dq)
	check("dk", fetchNPY(t, base, id, "dk", b, hkv, n, d), dk)
	check("dv", fetchNPY(t, base, id, "dv", b, hkv, n, d), dv)

	// A backward job given the forward's o and lse (lse as [Hq, N]: q's
	// leading 1 may be dropped).
	var ob bytes.Buffer
	if err := tensor.EncodeNPY(&ob, o); err != nil {
		t.Fatal(err)
	}
	parts = append(parts, part{"o", ob.Bytes()}, part{"lse", npyBytes(t, lse.Data, hq, n)})
	id = run(spec, parts, "backward", "[dq dk dv]")
	check("dq (backward job)", fetchNPY(t, base, id, "dq", b, hq, n, d), dq)
	check("dk (backward job)", fetchNPY(t, base, id, "dk", b, hkv, n, d), dk)
	check("dv (backward job)", fetchNPY(t, base, id, "dv", b, hkv, n, d), dv)
	if resp, rb := do(t, "GET", base+"/v1/jobs/"+id+"/outputs/o", "", nil); resp.StatusCode != 404 {
		t.Fatalf("o of a backward job: %d %s, expected 404", resp.StatusCode, rb)
	}
	resp, rb := do(t, "GET", base+"/v1/info", "", nil)
	var info struct{ Backward bool }
	if json.Unmarshal(rb, &info) != nil || resp.StatusCode != 200 || !info.Backward {
		t.Fatalf("/v1/info: %d %s, expected backward: true", resp.StatusCode, rb)
	}
}

// TestGatewayMHA: a layer job with biases, checked against a float64
// computation of torch.nn.MultiheadAttention's forward.
func TestGatewayMHA(t *testing.T) {
	base := "http://" + cluster(t).HTTPAddr()
	const b, n, dm, h = 1, 70, 12, 3
	r := testrand.New(2)
	x := r.Slice(b*n*dm, testrand.Normal)
	w := map[string][]float32{}
	var parts []part
	parts = append(parts, part{"x", npyBytes(t, x, b, n, dm)})
	for _, name := range []string{"wq", "wk", "wv", "wo"} {
		w[name] = r.Slice(dm*dm, testrand.Normal)
		for i := range w[name] {
			w[name][i] *= 0.3
		}
		parts = append(parts, part{name, npyBytes(t, w[name], dm, dm)})
	}
	for _, name := range []string{"bq", "bk", "bv", "bo"} {
		w[name] = r.Slice(dm, testrand.Normal)
		parts = append(parts, part{name, npyBytes(t, w[name], dm)})
	}
	ct, body := multipartBody(t, `{"kind": "mha", "heads": 3, "causal": true, "block": 32}`, parts...)
	resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
	if resp.StatusCode != 201 {
		t.Fatalf("submit: %d %s", resp.StatusCode, rb)
	}
	j := decodeJob(t, rb)
	resp, rb = do(t, "GET", base+"/v1/jobs/"+j.ID+"?wait=60s", "", nil)
	if st := decodeJob(t, rb); st.State != "succeeded" || fmt.Sprint(st.Outputs) != "[y]" {
		t.Fatalf("job: %s", rb)
	}
	resp, data := do(t, "GET", base+"/v1/jobs/"+j.ID+"/outputs/y.npy", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("y: %d %s", resp.StatusCode, data)
	}
	y, err := tensor.DecodeNPY(data)
	if err != nil || fmt.Sprint(y.Shape) != fmt.Sprint([]int{b, n, dm}) {
		t.Fatalf("y: %v %v", y, err)
	}
	// Reference: project, attend per head (causal), project out.
	proj := func(wm, bv []float32) []float32 { // x·Wᵀ + b, [n, dm]
		out := make([]float32, n*dm)
		for i := 0; i < n; i++ {
			for o := 0; o < dm; o++ {
				s := float64(bv[o])
				for c := 0; c < dm; c++ {
					s += float64(x[i*dm+c]) * float64(wm[o*dm+c])
				}
				out[i*dm+o] = float32(s)
			}
		}
		return out
	}
	heads := func(m []float32) []float32 { // [n, h·d] -> [h, n, d]
		d := dm / h
		out := make([]float32, n*dm)
		for i := 0; i < n; i++ {
			for hh := 0; hh < h; hh++ {
				copy(out[(hh*n+i)*d:(hh*n+i+1)*d], m[i*dm+hh*d:i*dm+(hh+1)*d])
			}
		}
		return out
	}
	qh, kh, vh := heads(proj(w["wq"], w["bq"])), heads(proj(w["wk"], w["bk"])), heads(proj(w["wv"], w["bv"]))
	d := dm / h
	o, _ := (&attnref.Problem{B: 1, Hq: h, Hkv: h, N: n, Nk: n, D: d, Mask: attnref.Mask{Causal: true}}).Attention(qh, kh, vh)
	want := make([]float64, n*dm)
	for i := 0; i < n; i++ {
		for oc := 0; oc < dm; oc++ {
			s := float64(w["bo"][oc])
			for hh := 0; hh < h; hh++ {
				for c := 0; c < d; c++ {
					s += o[(hh*n+i)*d+c] * float64(w["wo"][oc*dm+hh*d+c])
				}
			}
			want[i*dm+oc] = s
		}
	}
	if e := attnref.MaxAbsDiff(y.Data, want); e > 1e-3 {
		t.Fatalf("y: max |err| %g against float64", e)
	}
}

// TestGatewayErrors: bad requests get the status of their kind and JSON
// naming the field.
func TestGatewayErrors(t *testing.T) {
	base := gatewayServer(t, gateway.Config{})
	_, _, _, good := attentionInputs(t, 3, 1, 2, 2, 16, 16, 8)
	_, _, _, bigD := attentionInputs(t, 3, 1, 1, 1, 2, 2, 257)
	q3 := npyBytes(t, make([]float32, 3*16*8), 1, 3, 16, 8)
	kBadD := npyBytes(t, make([]float32, 2*16*4), 1, 2, 16, 4)
	truncated := good[0].data[:len(good[0].data)-5]
	mc := func(spec string, parts ...part) (string, []byte) { return multipartBody(t, spec, parts...) }
	ct, body := mc(`{}`, good...)
	_ = body
	cases := []struct {
		name         string
		ctype        string
		body         []byte
		status       int
		field, inMsg string
	}{
		{"not multipart", "application/json", []byte(`{}`), 400, "Content-Type", "multipart/form-data"},
		{"no parts", ct, []byte("--" + strings.TrimPrefix(ct, "multipart/form-data; boundary=") + "--\r\n"), 400, "spec", "missing"},
		{"tensor first", "", nil, 400, "spec", "first"},
		{"spec not JSON", "", nil, 400, "spec", "not a JSON object"},
		{"unknown field", "", nil, 400, "spec.cuasal", "unknown field"},
		{"bad type", "", nil, 400, "spec.causal", "bool"},
		{"bad kind", "", nil, 400, "spec.kind", "attention or mha"},
		{"bad wire", "", nil, 400, "spec.wire", "f32 or bf16"},
		{"bad scale", "", nil, 400, "spec.scale", "finite"},
		{"backward no do", "", nil, 400, "do", "missing part"},
		{"backward bad do", "", nil, 400, "do", "want q's shape"},
		{"backward o only", "", nil, 400, "o", "or none"},
		{"backward bad lse", "", nil, 400, "lse", "[B,Hq,N]"},
		{"backward mha", "", nil, 400, "x", "a mha backward job takes x, dy, wq"},
		{"backward return_lse", "", nil, 400, "spec.return_lse", "no return_lse"},
		{"missing v", "", nil, 400, "v", "missing part"},
		{"duplicate", "", nil, 400, "q", "twice"},
		{"unknown part", "", nil, 400, "x", "unexpected part"},
		{"truncated npy", "", nil, 400, "q", "truncated"},
		{"k head dim", "", nil, 400, "k", "head dim"},
		{"gqa", "", nil, 400, "k", "Hq % Hkv"},
		{"d over limit", "", nil, 400, "spec.d", "1..256"},
		{"bad seqlens", "", nil, 400, "spec.mask.seqlens", ""},
		{"mha no heads", "", nil, 400, "spec.heads", "heads >= 1"},
		{"mha one bias", "", nil, 400, "bq", "or none"},
	}
	bodies := map[string]func() (string, []byte){
		"tensor first":   func() (string, []byte) { return mc("", good...) },
		"spec not JSON":  func() (string, []byte) { return mc(`[1`, good...) },
		"unknown field":  func() (string, []byte) { return mc(`{"cuasal": true}`, good...) },
		"bad type":       func() (string, []byte) { return mc(`{"causal": "yes"}`, good...) },
		"bad kind":       func() (string, []byte) { return mc(`{"kind": "conv"}`, good...) },
		"bad wire":       func() (string, []byte) { return mc(`{"wire": "f8"}`, good...) },
		"bad scale":      func() (string, []byte) { return mc(`{"scale": -1}`, good...) },
		"backward no do": func() (string, []byte) { return mc(`{"backward": true}`, good...) },
		"backward bad do": func() (string, []byte) {
			return mc(`{"backward": true}`, append(good[:3:3], part{"do", kBadD})...)
		},
		"backward o only": func() (string, []byte) {
			return mc(`{"backward": true}`, append(good[:3:3], part{"do", good[0].data}, part{"o", good[0].data})...)
		},
		"backward bad lse": func() (string, []byte) {
			return mc(`{"backward": true}`, append(good[:3:3], part{"do", good[0].data}, part{"o", good[0].data},
				part{"lse", npyBytes(t, make([]float32, 2*15), 1, 2, 15)})...)
		},
		"backward mha":        func() (string, []byte) { return mc(`{"kind": "mha", "heads": 1, "backward": true}`) },
		"backward return_lse": func() (string, []byte) { return mc(`{"backward": true, "return_lse": true}`, good...) },
		"missing v":           func() (string, []byte) { return mc(`{}`, good[:2]...) },
		"duplicate":           func() (string, []byte) { return mc(`{}`, good[0], good[0]) },
		"unknown part":        func() (string, []byte) { return mc(`{}`, part{"x", good[0].data}) },
		"truncated npy":       func() (string, []byte) { return mc(`{}`, part{"q", truncated}, good[1], good[2]) },
		"k head dim":          func() (string, []byte) { return mc(`{}`, good[0], part{"k", kBadD}, part{"v", kBadD}) },
		"gqa":                 func() (string, []byte) { return mc(`{}`, part{"q", q3}, good[1], good[2]) },
		"d over limit":        func() (string, []byte) { return mc(`{}`, bigD...) },
		"bad seqlens":         func() (string, []byte) { return mc(`{"seqlens": [10, 10]}`, good...) },
		"mha no heads":        func() (string, []byte) { return mc(`{"kind": "mha"}`) },
		"mha one bias": func() (string, []byte) {
			w := npyBytes(t, make([]float32, 16), 4, 4)
			return mc(`{"kind": "mha", "heads": 1}`, part{"x", npyBytes(t, make([]float32, 12), 3, 4)},
				part{"wq", w}, part{"wk", w}, part{"wv", w}, part{"wo", w}, part{"bq", npyBytes(t, make([]float32, 4), 4)})
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctype, b := c.ctype, c.body
			if f := bodies[c.name]; f != nil {
				ctype, b = f()
			}
			resp, rb := do(t, "POST", base+"/v1/jobs", ctype, b)
			var e apiError
			if err := json.Unmarshal(rb, &e); err != nil {
				t.Fatalf("%d: not a JSON error: %s", resp.StatusCode, rb)
			}
			if resp.StatusCode != c.status || e.Error.Field != c.field || !strings.Contains(e.Error.Message, c.inMsg) || e.Error.Status != c.status {
				t.Fatalf("got %d %s, expected %d naming field %q with %q", resp.StatusCode, rb, c.status, c.field, c.inMsg)
			}
		})
	}
	for _, c := range []struct {
		method, path string
		status       int
		field        string
	}{
		{"GET", "/v1/jobs/nosuchjob", 404, "id"},
		{"GET", "/v1/jobs/nosuchjob/events", 404, "id"},
		{"GET", "/v1/jobs/nosuchjob/outputs/o", 404, "id"},
		{"DELETE", "/v1/jobs/nosuchjob", 404, "id"},
		{"GET", "/v1/jobs?state=done", 400, "state"},
		{"GET", "/v1/jobs?limit=0", 400, "limit"},
		{"GET", "/v1/jobs/x?wait=soon", 400, "wait"},
		{"PUT", "/v1/jobs", 405, ""},
		{"GET", "/v1/nothing", 404, "path"},
	} {
		resp, rb := do(t, c.method, base+c.path, "", nil)
		var e apiError
		if json.Unmarshal(rb, &e) != nil || resp.StatusCode != c.status || e.Error.Field != c.field {
			t.Errorf("%s %s: %d %s, expected %d naming %q", c.method, c.path, resp.StatusCode, rb, c.status, c.field)
		}
	}
}

// TestGatewayRequestLimit: a body whose tensors are exactly
// MaxRequestBytes is served; one byte less of budget is 413.
func TestGatewayRequestLimit(t *testing.T) {
	_, _, _, parts := attentionInputs(t, 4, 1, 1, 1, 32, 32, 8)
	var total int64
	for _, p := range parts {
		total += int64(len(p.data))
	}
	ct, body := multipartBody(t, `{}`, parts...)
	for _, c := range []struct {
		limit  int64
		status int
	}{{total, 201}, {total - 1, 413}} {
		base := gatewayServer(t, gateway.Config{MaxRequestBytes: c.limit})
		resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
		if resp.StatusCode != c.status {
			t.Fatalf("limit %d for %d tensor bytes: %d %s, expected %d", c.limit, total, resp.StatusCode, rb, c.status)
		}
		if c.status == 413 && !strings.Contains(string(rb), `"too_large"`) {
			t.Fatalf("413 without code too_large: %s", rb)
		}
	}
	// A declared Content-Length far past the limit is refused unread.
	base := gatewayServer(t, gateway.Config{MaxRequestBytes: 10})
	req, _ := http.NewRequest("POST", base+"/v1/jobs", bytes.NewReader(body))
	req.Header.Set("Content-Type", ct)
	req.ContentLength = 1 << 40
	req.Body = io.NopCloser(io.LimitReader(strings.NewReader(""), 0))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		if resp.StatusCode != 413 {
			t.Fatalf("Content-Length 1 TiB: %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
}

// TestGatewayJobLimits: the job limits are the SDK's (and so the
// coordinator's) shard.Limits, with the NATS API's errors: N past
// MaxTokens is 400 naming spec.n; a job at MaxJobBytes is served, one
// byte under it is 413 naming the spec.
func TestGatewayJobLimits(t *testing.T) {
	d := cluster(t)
	const n = 64
	jobBytes, ok := shard.JobBytes(&shard.Request{B: 1, Hq: 1, Hkv: 1, N: n, Nk: n, D: 8, Block: 16, Ranks: 1}, shard.Tensors{})
	if !ok {
		t.Fatal("JobBytes overflowed")
	}
	serve := func(lim shard.Limits) string {
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
		return srv.URL
	}
	_, _, _, parts := attentionInputs(t, 10, 1, 1, 1, n, n, 8)
	ct, body := multipartBody(t, `{"block": 16}`, parts...)
	for _, c := range []struct {
		maxTokens, maxJobBytes int64
		status                 int
		field                  string
	}{{n, jobBytes, 201, ""}, {n - 1, jobBytes, 400, "spec.n"}, {n, jobBytes - 1, 413, "spec"}} {
		lim := shard.DefaultLimits()
		lim.MaxTokens, lim.MaxJobBytes = c.maxTokens, c.maxJobBytes
		resp, rb := do(t, "POST", serve(lim)+"/v1/jobs", ct, body)
		var e apiError
		json.Unmarshal(rb, &e)
		if resp.StatusCode != c.status || (c.field != "" && !strings.HasPrefix(e.Error.Field, c.field)) {
			t.Fatalf("MaxTokens %d, MaxJobBytes %d (job %d bytes, N %d): %d %s, expected %d naming %s",
				c.maxTokens, c.maxJobBytes, jobBytes, n, resp.StatusCode, rb, c.status, c.field)
		}
	}
	// A backward job stores do, dq, dk, dv (and lse) too: the same shape is
	// counted with them, at the limit and one byte under it.
	gradBytes, ok := shard.JobBytes(&shard.Request{B: 1, Hq: 1, Hkv: 1, N: n, Nk: n, D: 8, Block: 16, Ranks: 1}, shard.Tensors{Grad: true})
	if !ok || gradBytes <= jobBytes {
		t.Fatalf("backward JobBytes %d (ok %v), expected more than the forward's %d", gradBytes, ok, jobBytes)
	}
	ct, body = multipartBody(t, `{"block": 16, "backward": true}`, append(parts, part{"do", parts[0].data})...)
	for _, c := range []struct {
		maxJobBytes int64
		status      int
	}{{gradBytes, 201}, {gradBytes - 1, 413}, {jobBytes, 413}} {
		lim := shard.DefaultLimits()
		lim.MaxJobBytes = c.maxJobBytes
		resp, rb := do(t, "POST", serve(lim)+"/v1/jobs", ct, body)
		var e apiError
		json.Unmarshal(rb, &e)
		if resp.StatusCode != c.status || (c.status == 413 && !strings.HasPrefix(e.Error.Field, "spec")) {
			t.Fatalf("backward, MaxJobBytes %d (job %d bytes): %d %s, expected %d", c.maxJobBytes, gradBytes, resp.StatusCode, rb, c.status)
		}
	}
	lim := shard.DefaultLimits()
	lim.MaxTokens = 64
	resp, rb := do(t, "GET", serve(lim)+"/v1/info", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(rb), `"max_tokens":64`) {
		t.Fatalf("info: %s", rb)
	}
}

// TestGatewayBusy: past MaxInFlight transfers a submit gets 429 with
// Retry-After, and is served once the slot frees.
func TestGatewayBusy(t *testing.T) {
	base := gatewayServer(t, gateway.Config{MaxInFlight: 1})
	_, _, _, parts := attentionInputs(t, 5, 1, 1, 1, 16, 16, 8)
	ct, body := multipartBody(t, `{}`, parts...)
	// Hold the one slot with a body that is still arriving. The request
	// goes over a raw connection so its headers and half its body are
	// on the wire before the loop below starts (an http.Client may keep
	// a small half-written body in its buffer).
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /v1/jobs HTTP/1.1\r\nHost: gateway\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", ct, len(body))
	if _, err := conn.Write(body[:len(body)/2]); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
		if resp.StatusCode == 429 {
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(string(rb), `"busy"`) {
				t.Fatalf("429 without Retry-After or code busy: %s", rb)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 429 while the slot is held: %d %s", resp.StatusCode, rb)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := conn.Write(body[len(body)/2:]); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	held, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the held submit: %v", err)
	}
	held.Body.Close()
	if held.StatusCode != 201 {
		t.Fatalf("the held submit: %s", held.Status)
	}
	if resp, rb := do(t, "POST", base+"/v1/jobs", ct, body); resp.StatusCode != 201 {
		t.Fatalf("after the slot freed: %d %s", resp.StatusCode, rb)
	}
}

// TestGatewayAuth: with a token, every /v1 request needs it.
func TestGatewayAuth(t *testing.T) {
	base := gatewayServer(t, gateway.Config{Token: "s3cret"})
	for _, c := range []struct {
		hdr    string
		status int
	}{{"", 401}, {"Bearer wrong", 401}, {"Basic s3cret", 401}, {"Bearer s3cret", 200}} {
		var hdr []string
		if c.hdr != "" {
			hdr = []string{"Authorization", c.hdr}
		}
		resp, rb := do(t, "GET", base+"/v1/info", "", nil, hdr...)
		if resp.StatusCode != c.status {
			t.Fatalf("Authorization %q: %d %s, expected %d", c.hdr, resp.StatusCode, rb, c.status)
		}
		if c.status == 401 && (resp.Header.Get("WWW-Authenticate") == "" || !strings.Contains(string(rb), `"field":"Authorization"`)) {
			t.Fatalf("401 without WWW-Authenticate or field: %s", rb)
		}
	}
	if resp, rb := do(t, "GET", base+"/v1/jobs", "", nil); resp.StatusCode != 401 {
		t.Fatalf("list without a token: %d %s", resp.StatusCode, rb)
	}
}

// TestGatewayCancel: a running job canceled over HTTP ends canceled; its
// outputs are 409; canceling a succeeded job is 409.
func TestGatewayCancel(t *testing.T) {
	base := gatewayServer(t, gateway.Config{})
	_, _, _, parts := attentionInputs(t, 6, 1, 4, 4, 8192, 8192, 64)
	ct, body := multipartBody(t, `{"block": 512}`, parts...)
	resp, rb := do(t, "POST", base+"/v1/jobs", ct, body)
	if resp.StatusCode != 201 {
		t.Fatalf("submit: %d %s", resp.StatusCode, rb)
	}
	j := decodeJob(t, rb)
	resp, rb = do(t, "DELETE", base+"/v1/jobs/"+j.ID+"?reason=test", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("cancel: %d %s", resp.StatusCode, rb)
	}
	resp, rb = do(t, "GET", base+"/v1/jobs/"+j.ID+"?wait=30s", "", nil)
	if st := decodeJob(t, rb); st.State != "canceled" {
		t.Fatalf("after cancel: %s", rb)
	}
	resp, rb = do(t, "GET", base+"/v1/jobs/"+j.ID+"/outputs/o", "", nil)
	if resp.StatusCode != 409 || !strings.Contains(string(rb), "canceled") {
		t.Fatalf("outputs of a canceled job: %d %s", resp.StatusCode, rb)
	}
	// Canceling again is idempotent, as over NATS.
	resp, rb = do(t, "DELETE", base+"/v1/jobs/"+j.ID, "", nil)
	if resp.StatusCode != 200 || decodeJob(t, rb).State != "canceled" {
		t.Fatalf("second cancel: %d %s", resp.StatusCode, rb)
	}
	// A succeeded job cannot be canceled.
	_, _, _, small := attentionInputs(t, 8, 1, 1, 1, 16, 16, 8)
	ct, body = multipartBody(t, `{}`, small...)
	resp, rb = do(t, "POST", base+"/v1/jobs", ct, body)
	done := decodeJob(t, rb)
	if resp, rb = do(t, "GET", base+"/v1/jobs/"+done.ID+"?wait=30", "", nil); decodeJob(t, rb).State != "succeeded" {
		t.Fatalf("small job: %s", rb)
	}
	resp, rb = do(t, "DELETE", base+"/v1/jobs/"+done.ID, "", nil)
	if resp.StatusCode != 409 || !strings.Contains(string(rb), `"conflict"`) {
		t.Fatalf("cancel of a succeeded job: %d %s", resp.StatusCode, rb)
	}
}

// TestGatewayIdempotency: two submits with one Idempotency-Key are one job.
func TestGatewayIdempotency(t *testing.T) {
	base := gatewayServer(t, gateway.Config{})
	_, _, _, parts := attentionInputs(t, 7, 1, 1, 1, 16, 16, 8)
	ct, body := multipartBody(t, `{}`, parts...)
	key := fmt.Sprintf("idem-%d", time.Now().UnixNano())
	var ids []string
	for range 2 {
		resp, rb := do(t, "POST", base+"/v1/jobs", ct, body, "Idempotency-Key", key)
		if resp.StatusCode != 201 {
			t.Fatalf("submit: %d %s", resp.StatusCode, rb)
		}
		ids = append(ids, decodeJob(t, rb).ID)
	}
	if ids[0] != ids[1] {
		t.Fatalf("one key, jobs %v", ids)
	}
	ct2, body2 := multipartBody(t, `{"idempotency_key": "other"}`, parts...)
	resp, rb := do(t, "POST", base+"/v1/jobs", ct2, body2, "Idempotency-Key", key)
	if resp.StatusCode != 400 || !strings.Contains(string(rb), "Idempotency-Key") {
		t.Fatalf("conflicting keys: %d %s", resp.StatusCode, rb)
	}
}

// TestGatewayPanicContained: a handler that panics answers 500 JSON and the
// gateway serves on.
func TestGatewayPanicContained(t *testing.T) {
	g, err := gateway.New(nil, gateway.Config{}) // no client: every cluster call panics
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	defer srv.Close()
	for range 2 {
		resp, rb := do(t, "GET", srv.URL+"/v1/jobs/x", "", nil)
		if resp.StatusCode != 500 || !strings.Contains(string(rb), `"internal"`) {
			t.Fatalf("panicking handler: %d %s", resp.StatusCode, rb)
		}
	}
	if resp, _ := do(t, "GET", srv.URL+"/v1/info", "", nil); resp.StatusCode != 200 {
		t.Fatalf("after a panic: %d", resp.StatusCode)
	}
}

// TestGatewayUnreachable: with no coordinator answering, calls end in 503
// after ClusterTimeout.
func TestGatewayUnreachable(t *testing.T) {
	ns, err := transport.StartEmbedded(transport.EmbeddedConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{ns.ClientURL()}
	cl, err := client.Connect(context.Background(), cfg, client.Options{RequestTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	g, err := gateway.New(cl, gateway.Config{ClusterTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	defer srv.Close()
	for _, path := range []string{"/v1/jobs/x", "/v1/jobs"} {
		resp, rb := do(t, "GET", srv.URL+path, "", nil)
		if resp.StatusCode != 503 || !strings.Contains(string(rb), `"unavailable"`) {
			t.Fatalf("%s without a coordinator: %d %s", path, resp.StatusCode, rb)
		}
	}
}

func TestGatewayConfig(t *testing.T) {
	if err := (gateway.Config{}).WithDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []gateway.Config{{MaxRequestBytes: -1}, {MaxInFlight: -1}, {ClusterTimeout: -1}} {
		if _, err := gateway.New(nil, c); err == nil || !strings.Contains(err.Error(), "Config.") {
			t.Fatalf("%+v: %v, expected an error naming the field", c, err)
		}
	}
	for _, c := range []struct {
		addr, token string
		insecure    bool
		ok          bool
	}{
		{"127.0.0.1:8080", "", false, true}, {"localhost:80", "", false, true}, {"[::1]:1", "", false, true},
		{"0.0.0.0:8080", "", false, false}, {":8080", "", false, false}, {"10.0.0.1:80", "", false, false},
		{"0.0.0.0:8080", "t", false, true}, {":8080", "", true, true}, {"nonsense", "t", false, false},
	} {
		if err := gateway.CheckBind(c.addr, c.token, c.insecure); (err == nil) != c.ok {
			t.Errorf("CheckBind(%q, %q, %v) = %v, expected ok=%v", c.addr, c.token, c.insecure, err, c.ok)
		}
	}
}
