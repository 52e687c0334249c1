package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Route is one endpoint the gateway serves, as ServeMux patterns are
// written; docs/openapi.yaml describes each (a test checks it).
type Route struct{ Method, Path string }

// Routes are the endpoints of the job API.
var Routes = []Route{
	{"GET", "/v1/info"},
	{"POST", "/v1/jobs"},
	{"GET", "/v1/jobs"},
	{"GET", "/v1/jobs/{id}"},
	{"DELETE", "/v1/jobs/{id}"},
	{"GET", "/v1/jobs/{id}/events"},
	{"GET", "/v1/jobs/{id}/outputs/{name}"},
}

// Gateway is the HTTP job API over one SDK client. Safe for concurrent use.
type Gateway struct {
	cl    *client.Client
	cfg   Config
	slots chan struct{}
	mux   *http.ServeMux
}

// New returns a gateway answering with cl (its limits should be cfg's).
func New(cl *client.Client, cfg Config) (*Gateway, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway: Config.%v", err)
	}
	g := &Gateway{cl: cl, cfg: cfg, slots: make(chan struct{}, cfg.MaxInFlight), mux: http.NewServeMux()}
	handlers := map[Route]http.HandlerFunc{
		{"GET", "/v1/info"}:                     g.info,
		{"POST", "/v1/jobs"}:                    g.submit,
		{"GET", "/v1/jobs"}:                     g.list,
		{"GET", "/v1/jobs/{id}"}:                g.get,
		{"DELETE", "/v1/jobs/{id}"}:             g.cancel,
		{"GET", "/v1/jobs/{id}/events"}:         g.events,
		{"GET", "/v1/jobs/{id}/outputs/{name}"}: g.output,
	}
	for _, r := range Routes {
		g.mux.HandleFunc(r.Method+" "+r.Path, handlers[r])
	}
	return g, nil
}

// Owns reports whether the gateway answers path (the job API's part of a
// shared mux: /v1/info and /v1/jobs...).
func Owns(path string) bool {
	return path == "/v1/info" || path == "/v1/jobs" || strings.HasPrefix(path, "/v1/jobs/")
}

// ServeHTTP checks the token, contains panics and routes the request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := &trackingWriter{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			g.cfg.Logger.Error("gateway: handler panicked", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
			if !rw.wrote {
				writeError(rw, &Error{Status: 500, Code: "internal", Message: "internal error (the gateway logged it)"})
			}
		}
	}()
	if g.cfg.Token != "" && !g.authorized(r) {
		rw.Header().Set("WWW-Authenticate", `Bearer realm="ringattn"`)
		writeError(rw, &Error{Status: 401, Code: "unauthenticated", Field: "Authorization", Message: "want the header Authorization: Bearer <token>"})
		return
	}
	if _, pattern := g.mux.Handler(r); pattern == "" {
		g.notRouted(rw, r)
		return
	}
	g.mux.ServeHTTP(rw, r) // sets the path values

}

func (g *Gateway) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), []byte(g.cfg.Token)) == 1
}

// notRouted answers 405 for a known path with another method, else 404.
func (g *Gateway) notRouted(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{"GET", "POST", "DELETE"} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := g.mux.Handler(probe); p != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, &Error{Status: 405, Code: "method_not_allowed", Message: fmt.Sprintf("%s %s: want %s", r.Method, r.URL.Path, strings.Join(allow, " or "))})
		return
	}
	writeError(w, &Error{Status: 404, Code: "not_found", Field: "path", Message: "no such endpoint: " + r.URL.Path})
}

// trackingWriter remembers whether a response was started, and passes
// Flush through for server-sent events.
type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (t *trackingWriter) WriteHeader(code int) { t.wrote = true; t.ResponseWriter.WriteHeader(code) }
func (t *trackingWriter) Write(b []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriter.Write(b)
}
func (t *trackingWriter) Flush() {
	if f, ok := t.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// acquire takes an in-flight slot, or answers 429.
func (g *Gateway) acquire(w http.ResponseWriter) bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
		writeError(w, &Error{Status: 429, Code: "busy", RetryAfter: time.Second,
			Message: fmt.Sprintf("this gateway is serving %d tensor transfers already; retry later", g.cfg.MaxInFlight)})
		return false
	}
}

func (g *Gateway) release() { <-g.slots }

// ctx bounds one call to the cluster.
func (g *Gateway) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), g.cfg.ClusterTimeout)
}

func (g *Gateway) info(w http.ResponseWriter, _ *http.Request) {
	l := g.cfg.Limits
	writeJSON(w, 200, map[string]any{
		"api": "v1", "version": g.cfg.Version,
		"kinds":    []string{"attention", "mha"},
		"backward": true,
		"outputs": map[string][]string{"attention": {"o", "lse"}, "mha": {"y"},
			"attention_backward": {"dq", "dk", "dv"}, "attention_forward_backward": {"o", "lse", "dq", "dk", "dv"},
			"mha_forward_backward": {"y", "dx", "dwq", "dwk", "dwv", "dwo", "dbq", "dbk", "dbv", "dbo"}},
		"limits": map[string]int64{"max_batch": l.MaxBatch, "max_heads": l.MaxHeads, "max_tokens": l.MaxTokens,
			"max_d": l.MaxD, "max_blocks": l.MaxBlocks, "max_docs": l.MaxDocs, "max_job_bytes": l.MaxJobBytes,
			"max_request_bytes": g.cfg.MaxRequestBytes},
	})
}

func (g *Gateway) submit(w http.ResponseWriter, r *http.Request) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		writeError(w, invalid("Content-Type", "%q: want multipart/form-data with a boundary (a JSON part \"spec\", then .npy parts)", r.Header.Get("Content-Type")))
		return
	}
	if r.ContentLength > g.cfg.MaxRequestBytes+maxSpecBytes+64<<10 {
		writeError(w, tooLarge("body", g.cfg.MaxRequestBytes))
		return
	}
	if !g.acquire(w) {
		return
	}
	defer g.release()
	// The parts' headers and the spec ride on top of the tensor budget.
	body := limitBody(r.Body, g.cfg.MaxRequestBytes+maxSpecBytes+64<<10)
	sub, err := decodeSubmit(body, params["boundary"], g.cfg.MaxRequestBytes, r.Header.Get("Idempotency-Key"))
	if err != nil {
		writeError(w, asError(err))
		return
	}
	ctx, cancel := g.ctx(r)
	defer cancel()
	var st *pb.JobStatus
	if sub.spec.Kind == "mha" {
		st, err = g.submitMHA(ctx, sub)
	} else {
		if err := checkAttentionShapes(sub.tensors); err != nil {
			writeError(w, err)
			return
		}
		if sub.spec.Backward {
			t := sub.tensors
			lse, e := checkBackwardShapes(t)
			if e != nil {
				writeError(w, e)
				return
			}
			st, err = g.cl.SubmitAttentionBackward(ctx, t["q"], t["k"], t["v"], t["do"], t["o"], lse, sub.opts)
		} else {
			st, err = g.cl.SubmitAttention(ctx, sub.tensors["q"], sub.tensors["k"], sub.tensors["v"], sub.spec.ReturnLSE, sub.opts)
		}
	}
	if err != nil {
		writeError(w, asError(err))
		return
	}
	w.Header().Set("Location", "/v1/jobs/"+st.GetId())
	writeJSON(w, 201, jobJSON(st))
}

// checkAttentionShapes names the tensor whose shape does not fit.
func checkAttentionShapes(t map[string]*tensor.Tensor) *Error {
	var s [3][]int
	for i, n := range attentionParts {
		sh, err := t[n].As4D()
		if err != nil {
			return invalid(n, "shape %s: want [B,H,N,D] (or [H,N,D], [N,D])", tensor.FormatShape(t[n].Shape))
		}
		s[i] = sh
	}
	q, k, v := s[0], s[1], s[2]
	if k[0] != q[0] || k[3] != q[3] {
		return invalid("k", "shape %v: want q's batch %d and head dim %d", k, q[0], q[3])
	}
	if v[0] != k[0] || v[1] != k[1] || v[2] != k[2] || v[3] != k[3] {
		return invalid("v", "shape %v: want k's %v", v, k)
	}
	if q[1]%k[1] != 0 {
		return invalid("k", "%d heads do not divide q's %d heads: want Hq %% Hkv == 0", k[1], q[1])
	}
	return nil
}

// checkBackwardShapes names the backward part whose shape does not fit
// q's (after checkAttentionShapes) and returns lse as [B, Hq, N] (nil when
// not given). lse may drop q's leading 1s as q may: [Hq, N] or [N].
func checkBackwardShapes(t map[string]*tensor.Tensor) (*tensor.Tensor, *Error) {
	q, _ := t["q"].As4D()
	for _, n := range []string{"do", "o"} {
		if t[n] == nil {
			continue
		}
		s, err := t[n].As4D()
		if err != nil || !slices.Equal(s, q) {
			return nil, invalid(n, "shape %s: want q's shape %s", tensor.FormatShape(t[n].Shape), tensor.FormatShape(t["q"].Shape))
		}
	}
	lse := t["lse"]
	if lse == nil {
		return nil, nil
	}
	want := []int{q[0], q[1], q[2]}
	got := lse.Shape
	for len(got) < 3 && len(got) > 0 {
		got = append([]int{1}, got...)
	}
	if !slices.Equal(got, want) {
		return nil, invalid("lse", "shape %s: want [B,Hq,N] = %v", tensor.FormatShape(lse.Shape), want)
	}
	return tensor.New(lse.Data, want...), nil
}

func (g *Gateway) list(w http.ResponseWriter, r *http.Request) {
	var states []pb.JobState
	for _, s := range strings.Split(r.URL.Query().Get("state"), ",") {
		if s == "" {
			continue
		}
		v, ok := pb.JobState_value["JOB_STATE_"+strings.ToUpper(s)]
		if !ok || v == 0 {
			writeError(w, invalid("state", "%q: want queued, running, succeeded, failed, canceled or expired", s))
			return
		}
		states = append(states, pb.JobState(v))
	}
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, invalid("limit", "%q: want an integer 1..10000", s))
			return
		}
		limit = n
	}
	ctx, cancel := g.ctx(r)
	defer cancel()
	jobs, err := g.cl.List(ctx, limit, states...)
	if err != nil {
		writeError(w, asError(err))
		return
	}
	out := make([]*Job, 0, len(jobs))
	for _, j := range jobs {
		out = append(out, jobJSON(j))
	}
	writeJSON(w, 200, map[string]any{"jobs": out})
}

func (g *Gateway) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if s := r.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			if n, nerr := strconv.ParseFloat(s, 64); nerr == nil && n >= 0 && n <= 1e6 {
				d, err = time.Duration(n*float64(time.Second)), nil
			} else {
				writeError(w, invalid("wait", "%q: want a duration (30s) or seconds", s))
				return
			}
		}
		// Long-poll: until the job finishes or the wait ends.
		ctx, cancel := context.WithTimeout(r.Context(), min(d, g.cfg.MaxWait))
		defer cancel()
		st, err := g.cl.Watch(ctx, id, time.Second, nil)
		if err == nil || (errors.Is(err, context.DeadlineExceeded) && st != nil && r.Context().Err() == nil) {
			writeJSON(w, 200, jobJSON(st))
			return
		}
		writeError(w, asError(err))
		return
	}
	ctx, cancel := g.ctx(r)
	defer cancel()
	st, err := g.cl.Get(ctx, id)
	if err != nil {
		writeError(w, asError(err))
		return
	}
	writeJSON(w, 200, jobJSON(st))
}

func (g *Gateway) cancel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := g.ctx(r)
	defer cancel()
	reason := r.URL.Query().Get("reason")
	if reason == "" {
		reason = "canceled over HTTP"
	}
	if len(reason) > 1024 {
		writeError(w, invalid("reason", "%d bytes: want at most 1024", len(reason)))
		return
	}
	st, err := g.cl.Cancel(ctx, r.PathValue("id"), reason)
	if err != nil {
		writeError(w, asError(err))
		return
	}
	writeJSON(w, 200, jobJSON(st))
}

// events streams the job's progress as server-sent events: "progress"
// events, then one "done" event with the final job, then the stream ends.
func (g *Gateway) events(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx, cancel := g.ctx(r)
	_, err := g.cl.Get(ctx, id) // a plain JSON error for an unknown job
	cancel()
	if err != nil {
		writeError(w, asError(err))
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(200)
	flusher, _ := w.(http.Flusher)
	send := func(event string, v any) {
		data, _ := json.Marshal(v)
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data)
		if flusher != nil {
			flusher.Flush()
		}
	}
	st, err := g.cl.WatchProgress(r.Context(), id, func(p client.Progress) { send("progress", progressJSON(p)) })
	if err != nil {
		if r.Context().Err() == nil {
			send("error", errorBody(asError(err)))
		}
		return
	}
	send("done", jobJSON(st))
}

// output serves one output tensor of a succeeded job as .npy.
func (g *Gateway) output(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("name")
	name = strings.TrimSuffix(name, ".npy")
	ctx, cancel := g.ctx(r)
	defer cancel()
	st, err := g.cl.Get(ctx, id)
	if err != nil {
		writeError(w, asError(err))
		return
	}
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		e := &Error{Status: 409, Code: "conflict", Field: "id",
			Message: fmt.Sprintf("job %s is %s, not succeeded: no outputs", id, stateName(st.GetState()))}
		if !client.Finished(st.GetState()) {
			e.Message = fmt.Sprintf("job %s is %s: wait for it to succeed (GET /v1/jobs/%s?wait=60s)", id, stateName(st.GetState()), id)
		}
		writeError(w, e)
		return
	}
	if !contains(outputsOf(st), name) {
		writeError(w, &Error{Status: 404, Code: "not_found", Field: "name",
			Message: fmt.Sprintf("%q: job %s has outputs %s", name, id, strings.Join(outputsOf(st), ", "))})
		return
	}
	if client.IsMHAGradJob(st.GetSpec()) && name != "y" {
		g.outputMHAGrad(ctx, w, st, name)
		return
	}
	s := st.GetSpec()
	b, h, n, d, dm := int(s.GetB()), int(s.GetHq()), int(s.GetN()), int(s.GetD()), int(s.GetDModel())
	hkv, nk := int(s.GetHkv()), int(s.GetNk())
	var sh transport.Shape
	var shape []int
	switch name {
	case transport.TensorDQ:
		sh, shape = transport.Shape{b, h, n, d}, []int{b, h, n, d}
	case transport.TensorDK, transport.TensorDV:
		sh, shape = transport.Shape{b, hkv, nk, d}, []int{b, hkv, nk, d}
	case transport.TensorO:
		sh, shape = transport.Shape{b, h, n, d}, []int{b, h, n, d}
	case transport.TensorLSE:
		sh, shape = transport.Shape{b, h, n, 1}, []int{b, h, n}
	case "y":
		sh, shape = transport.Shape{b, 1, n, dm}, []int{b, n, dm}
	default:
		writeError(w, &Error{Status: 404, Code: "not_found", Field: "name", Message: fmt.Sprintf("%q: not an output this gateway serves", name)})
		return
	}
	if !g.acquire(w) {
		return
	}
	defer g.release()
	store, err := g.cl.Store(ctx)
	if err != nil {
		writeError(w, asError(err))
		return
	}
	ref := st.GetOutputRef()
	if ref == "" {
		ref = st.GetId()
	}
	block := int(s.GetBlock())
	if block <= 0 {
		block = client.DefaultBlock
	}
	data, err := store.GetTensor(ctx, ref, name, sh, block)
	if err != nil {
		writeError(w, &Error{Status: 502, Code: "store", Field: "name", Message: fmt.Sprintf("fetching %s of job %s from the store: %v", name, id, err)})
		return
	}
	t, err := tensor.FromData(data, shape...)
	if err != nil {
		writeError(w, &Error{Status: 502, Code: "store", Field: "name", Message: fmt.Sprintf("output %s of job %s: %v", name, id, err)})
		return
	}
	g.writeNPY(w, id, name, t)
}

// outputMHAGrad serves one gradient of a layer forward+backward job.
func (g *Gateway) outputMHAGrad(ctx context.Context, w http.ResponseWriter, st *pb.JobStatus, name string) {
	if !g.acquire(w) {
		return
	}
	defer g.release()
	store, err := g.cl.Store(ctx)
	if err != nil {
		writeError(w, asError(err))
		return
	}
	t, _, err := mhaGrad(ctx, store, st, name)
	if err != nil {
		writeError(w, &Error{Status: 502, Code: "store", Field: "name", Message: fmt.Sprintf("fetching %s of job %s from the store: %v", name, st.GetId(), err)})
		return
	}
	g.writeNPY(w, st.GetId(), name, t)
}

// writeNPY answers 200 with t as a .npy attachment.
func (g *Gateway) writeNPY(w http.ResponseWriter, id, name string, t *tensor.Tensor) {
	w.Header().Set("Content-Type", "application/x-npy")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s-%s.npy"`, id, name))
	w.Header().Set("Content-Length", strconv.FormatInt(npySize(t), 10))
	w.WriteHeader(200)
	if err := tensor.EncodeNPY(w, t); err != nil {
		g.cfg.Logger.Debug("gateway: writing an output", "job", id, "name", name, "err", err)
	}
}

// npySize is the length of the .npy file EncodeNPY writes for t: its
// header (EncodeNPY's first write) and 4 bytes a value.
func npySize(t *tensor.Tensor) int64 {
	var h firstWrite
	_ = tensor.EncodeNPY(&h, t)
	return int64(h.n) + 4*int64(len(t.Data))
}

// firstWrite records the length of the first write and stops the writer.
type firstWrite struct{ n int }

var errStop = errors.New("stop")

func (f *firstWrite) Write(p []byte) (int, error) {
	f.n = len(p)
	return 0, errStop
}

// asError classifies an error of the SDK or the cluster.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var ae *client.APIError
	if errors.As(err, &ae) {
		out := &Error{Field: ae.Field, Message: strings.TrimPrefix(ae.Message, ae.Field+": ")}
		if out.Field == "job_id" {
			out.Field = "id" // the path's name for it
		}
		switch ae.Code {
		case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
			out.Status, out.Code = 400, "invalid_argument"
		case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
			out.Status, out.Code = 404, "not_found"
		case pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED:
			out.Status, out.Code = 429, "resource_exhausted"
			switch {
			case ae.Field == "spec" || strings.HasPrefix(ae.Field, "spec."):
				out.Status, out.Code = 413, "too_large"
			case ae.RetryAfter > 0: // the queue is full: retry later
				out.Code, out.RetryAfter = "queue_full", ae.RetryAfter
			}
		case pb.ErrorCode_ERROR_CODE_BUSY:
			out.Status, out.Code, out.RetryAfter = 503, "busy", max(ae.RetryAfter, time.Second/5)
		case pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION:
			out.Status, out.Code = 409, "conflict"
		case pb.ErrorCode_ERROR_CODE_NOT_LEADER, pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
			out.Status, out.Code = 503, "unavailable"
		default:
			out.Status, out.Code = 502, "internal"
		}
		return out
	}
	msg := strings.ReplaceAll(err.Error(), "client: ", "")
	switch {
	case errors.Is(err, client.ErrInvalid):
		return &Error{Status: 400, Code: "invalid_argument", Message: strings.TrimPrefix(msg, "invalid request: ")}
	case errors.Is(err, client.ErrNotFound):
		return &Error{Status: 404, Code: "not_found", Field: "id", Message: msg}
	case client.Unreachable(err), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: 503, Code: "unavailable", Message: "the cluster did not answer: " + msg}
	}
	return &Error{Status: 502, Code: "internal", Message: msg}
}
