package coordinator

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	imetrics "github.com/ringattn/ringattn/internal/metrics"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The ops endpoints (DESIGN §7) answer from this node's copy of the
// replicated state, so a follower's view may trail the leader's by the
// replication delay; /v1/cluster names the leader.

func (c *Coordinator) startHTTP() error {
	ln, err := net.Listen("tcp", c.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("coordinator: HTTP on %s: %w", c.cfg.HTTPAddr, err)
	}
	c.httpL = ln
	c.httpS = &http.Server{Handler: c.Handler(), ReadHeaderTimeout: 5 * time.Second}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.httpS.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("HTTP server stopped", "err", err)
		}
	}()
	c.log.Info("ops HTTP listening", "addr", ln.Addr().String())
	return nil
}

// HTTPAddr is the address the ops server listens on ("" if disabled).
func (c *Coordinator) HTTPAddr() string {
	if c.httpL == nil {
		return ""
	}
	return c.httpL.Addr().String()
}

// Handler serves the HTML status page at /, /metrics, /healthz, /readyz,
// /v1/cluster, /v1/jobs and /v1/jobs/{id}.
func (c *Coordinator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.jobsAccess(c.serveStatus))
	if c.deps.Gatherer != nil {
		mux.Handle("GET /metrics", imetrics.Handler(c.deps.Gatherer))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if id := c.Leader(); id != "" {
			writeText(w, http.StatusOK, "ready; leader "+id)
			return
		}
		writeText(w, http.StatusServiceUnavailable, "not ready: no known leader")
	})
	mux.HandleFunc("GET /v1/cluster", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, r, http.StatusOK, c.cluster())
	})
	mux.HandleFunc("GET /v1/jobs", c.jobsAccess(func(w http.ResponseWriter, r *http.Request) {
		var states []pb.JobState
		for _, s := range strings.Split(r.URL.Query().Get("state"), ",") {
			if s == "" {
				continue
			}
			v, ok := pb.JobState_value["JOB_STATE_"+strings.ToUpper(s)]
			if !ok {
				writeJSONError(w, http.StatusBadRequest, "state", fmt.Sprintf("%q: want queued, running, succeeded, failed, canceled or expired", s))
				return
			}
			states = append(states, pb.JobState(v))
		}
		limit := 0
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				writeJSONError(w, http.StatusBadRequest, "limit", fmt.Sprintf("%q: want an integer >= 0", s))
				return
			}
			limit = n
		}
		writeJSON(w, r, http.StatusOK, c.list(states, limit))
	}))
	mux.HandleFunc("GET /v1/jobs/{id}", c.jobsAccess(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var j *cpb.Job
		c.fsm.view(func(s *State) { j = s.Job(id) })
		if j == nil {
			writeJSONError(w, http.StatusNotFound, "id", "unknown job "+id)
			return
		}
		writeJSON(w, r, http.StatusOK, c.status(j))
	}))
	return mux
}

// jobsAccess guards an endpoint that shows jobs (Config.OpsToken): with a
// token it wants `Authorization: Bearer <token>` (401 otherwise); without
// one it is open unless tenants are enforced (403: it would show every
// tenant's jobs).
func (c *Coordinator) jobsAccess(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := c.cfg.OpsToken; tok != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(tok)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="ringattn-ops"`)
				writeJSONError(w, http.StatusUnauthorized, "authorization", "want Authorization: Bearer <the coordinator's --ops-token>")
				return
			}
		} else if c.enforceTenants() {
			writeJSONError(w, http.StatusForbidden, "", "job listings show every tenant's jobs: with tenants enforced they need the coordinator's --ops-token")
			return
		}
		h(w, r)
	}
}

func writeText(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintln(w, s)
}

func writeProto(w http.ResponseWriter, code int, m proto.Message) {
	data, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(data)
}

func writeJSONError(w http.ResponseWriter, code int, field, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"field": field, "error": msg})
}
