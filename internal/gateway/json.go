package gateway

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Job is a job's status as JSON: numbers as numbers, short state names.
type Job struct {
	ID             string   `json:"id"`
	State          string   `json:"state"`
	Reason         string   `json:"reason,omitempty"`
	Kind           string   `json:"kind"`
	Mode           string   `json:"mode"`            // forward, backward or forward_backward
	Phase          string   `json:"phase,omitempty"` // the pass a backward job runs: forward or backward
	Epoch          uint64   `json:"epoch"`
	BlocksDone     int64    `json:"blocks_done"`
	BlocksTotal    int64    `json:"blocks_total"`
	CreatedUnixMs  int64    `json:"created_unix_ms"`
	StartedUnixMs  int64    `json:"started_unix_ms,omitempty"`
	FinishedUnixMs int64    `json:"finished_unix_ms,omitempty"`
	ExpiresUnixMs  int64    `json:"expires_unix_ms,omitempty"`
	Outputs        []string `json:"outputs"`
	Strategy       string   `json:"strategy,omitempty"`
	Workers        []string `json:"workers,omitempty"`
	Shape          Shape    `json:"shape"`
}

// Shape is a job's dimensions.
type Shape struct {
	B      int64 `json:"b"`
	Hq     int64 `json:"hq"`
	Hkv    int64 `json:"hkv"`
	N      int64 `json:"n"`
	Nk     int64 `json:"nk"`
	D      int64 `json:"d"`
	DModel int64 `json:"d_model,omitempty"`
}

func stateName(s pb.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

// modeName is a job mode's short name: forward, backward, forward_backward.
func modeName(m pb.JobMode) string {
	return strings.ToLower(strings.TrimPrefix(m.String(), "JOB_MODE_"))
}

func jobJSON(st *pb.JobStatus) *Job {
	s := st.GetSpec()
	j := &Job{ID: st.GetId(), State: stateName(st.GetState()), Reason: st.GetReason(),
		Kind: strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "JOB_KIND_")),
		Mode: modeName(s.GetMode()), Phase: st.GetPhase(),
		Epoch: st.GetEpoch(), BlocksDone: st.GetBlocksDone(), BlocksTotal: st.GetBlocksTotal(),
		CreatedUnixMs: st.GetCreatedUnixMs(), StartedUnixMs: st.GetStartedUnixMs(), FinishedUnixMs: st.GetFinishedUnixMs(),
		ExpiresUnixMs: st.GetExpiresUnixMs(), Outputs: outputsOf(st), Strategy: st.GetStrategy(), Workers: st.GetWorkers(),
		Shape: Shape{B: s.GetB(), Hq: s.GetHq(), Hkv: s.GetHkv(), N: s.GetN(), Nk: s.GetNk(), D: s.GetD(), DModel: s.GetDModel()}}
	if j.Outputs == nil {
		j.Outputs = []string{}
	}
	return j
}

// Progress is one server-sent "progress" event.
type Progress struct {
	State    string  `json:"state"`
	Done     int64   `json:"done"`
	Total    int64   `json:"total"`
	Unit     string  `json:"unit"`
	Fraction float64 `json:"fraction"`
	Rate     float64 `json:"rate,omitempty"`        // units per second, when known
	ETA      float64 `json:"eta_seconds,omitempty"` // when known
	Elapsed  float64 `json:"elapsed_seconds"`
	Epoch    uint64  `json:"epoch"`
}

func progressJSON(p client.Progress) *Progress {
	out := &Progress{State: stateName(p.Status.GetState()), Done: p.Done, Total: p.Total, Unit: p.Unit,
		Fraction: p.Fraction(), Elapsed: p.Elapsed.Seconds(), Epoch: p.Status.GetEpoch()}
	if p.RateOK && !math.IsNaN(p.Rate) && !math.IsInf(p.Rate, 0) {
		out.Rate = p.Rate
	}
	if p.ETAOK {
		out.ETA = p.ETA.Seconds()
	}
	return out
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func errorBody(e *Error) map[string]any {
	return map[string]any{"error": map[string]any{"code": e.Code, "field": e.Field, "message": e.Message, "status": e.Status}}
}

func writeError(w http.ResponseWriter, e *Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
	}
	writeJSON(w, e.Status, errorBody(e))
}
