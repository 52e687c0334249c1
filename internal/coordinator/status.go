package coordinator

import (
	"bytes"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// statusJobs bounds the jobs listed on the status page (newest first).
const statusJobs = 200

// statusPage is what the HTML status page at / shows: this node's view of
// the cluster (the leader's worker registry is only known on the leader).
type statusPage struct {
	Node, Leader, Version string
	// LeaderURL is the leader's status page ("" when unknown or this node).
	LeaderURL             string
	Term, Commit, Applied uint64
	Now                   string
	QueueDepth            int64
	Counts                []stateCount
	Peers                 []*pb.Peer
	Workers               []statusWorker
	WorkersKnown          bool
	Jobs                  []statusJob
	JobsShown, JobsTotal  int64
}

type stateCount struct {
	State string
	N     int64
}

type statusWorker struct {
	ID          string
	Slots, Used int32
	GFLOPS      string
	Jobs        []string
	LastSeen    string
	Leaving     bool
	// StepTime is the worker's mean time per progress step ("" unknown).
	StepTime string
}

type statusJob struct {
	ID, State, Kind, Shape, Strategy, Reason string
	Created, GFLOPS                          string
	Progress                                 string
	Percent                                  int
	Epoch                                    uint64
	Duration                                 string
	Workers                                  []string
}

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"join": func(s []string) string { return strings.Join(s, ", ") },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ringattn coordinator {{.Node}}</title>
<meta http-equiv="refresh" content="5">
<style>
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.succeeded{color:#070}.failed{color:#b00}.running{color:#05a}.queued{color:#850}
progress{width:8em}
</style></head><body>
<h1>ringattn coordinator {{.Node}}</h1>
<p id="links"><a href="/metrics">/metrics</a> · <a href="/v1/cluster">/v1/cluster</a> · <a href="/v1/jobs">/v1/jobs</a> · <a href="/healthz">/healthz</a> · <a href="/readyz">/readyz</a></p>
<p>Leader: <b>{{if .LeaderURL}}<a href="{{.LeaderURL}}">{{.Leader}}</a>{{else if .Leader}}{{.Leader}}{{else}}none known{{end}}</b>{{if eq .Leader .Node}} (this node){{end}} · term {{.Term}} · commit index {{.Commit}} · applied {{.Applied}} · version {{.Version}} · {{.Now}}</p>
<p>Queue depth {{.QueueDepth}}{{range .Counts}} · {{.State}} {{.N}}{{end}}</p>
<h2>Coordinators</h2>
<table id="peers"><tr><th>id</th><th>address</th><th>role</th></tr>
{{range .Peers}}<tr><td>{{.Id}}</td><td>{{.Address}}</td><td>{{if .Leader}}leader{{else if .Voter}}voter{{else}}non-voter{{end}}</td></tr>
{{end}}</table>
<h2>Workers</h2>
{{if .WorkersKnown}}<table id="workers"><tr><th>id</th><th>slots used / total</th><th>GFLOP/s</th><th>step time</th><th>current job</th><th>last heartbeat</th><th>state</th></tr>
{{range .Workers}}<tr><td>{{.ID}}</td><td class="num">{{.Used}} / {{.Slots}}</td><td class="num">{{.GFLOPS}}</td><td class="num">{{.StepTime}}</td><td>{{range $i, $j := .Jobs}}{{if $i}}, {{end}}<a href="/v1/jobs/{{$j}}">{{$j}}</a>{{else}}idle{{end}}</td><td>{{.LastSeen}}</td><td>{{if .Leaving}}leaving{{else}}live{{end}}</td></tr>
{{else}}<tr><td colspan="7">no live workers</td></tr>
{{end}}</table>{{else}}<p>The worker registry lives on the leader{{if .LeaderURL}} (<a href="{{.LeaderURL}}">{{.Leader}}'s status page</a>){{else if .Leader}} ({{.Leader}}){{end}}; this node is not it.</p>{{end}}
<h2>Jobs</h2>
<p>{{.JobsShown}} of {{.JobsTotal}}, newest first.</p>
<table id="jobs"><tr><th>id</th><th>state</th><th>kind</th><th>shape</th><th>progress</th><th>epoch</th><th>created (UTC)</th><th>duration</th><th>GFLOP/s</th><th>strategy</th><th>workers</th><th>reason</th></tr>
{{range .Jobs}}<tr><td><a href="/v1/jobs/{{.ID}}">{{.ID}}</a></td><td class="{{.State}}">{{.State}}</td><td>{{.Kind}}</td><td>{{.Shape}}</td><td><progress max="100" value="{{.Percent}}"></progress> {{.Progress}}</td><td class="num">{{.Epoch}}</td><td>{{.Created}}</td><td class="num">{{.Duration}}</td><td class="num">{{.GFLOPS}}</td><td>{{.Strategy}}</td><td>{{join .Workers}}</td><td>{{.Reason}}</td></tr>
{{else}}<tr><td colspan="12">no jobs</td></tr>
{{end}}</table>
</body></html>
`))

// statusData collects the status page from this node's state.
func (c *Coordinator) statusData() *statusPage {
	now := c.now()
	cl := c.cluster()
	p := &statusPage{
		Node: c.cfg.NodeID, Leader: cl.GetLeaderId(), Version: cl.GetVersion(),
		Term: cl.GetTerm(), Commit: cl.GetCommitIndex(), Applied: cl.GetAppliedIndex(),
		Now: now.UTC().Format(time.RFC3339), QueueDepth: cl.GetQueueDepth(), Peers: cl.GetPeers(),
		WorkersKnown: c.currentLeader() != nil,
	}
	if p.Leader != "" {
		p.LeaderURL = c.leaderHTTP(p.Leader)
	}
	flops := map[string]float64{} // job -> planned FLOPs of its current epoch
	c.fsm.view(func(s *State) {
		for id, j := range s.jobs {
			for _, rk := range j.Plan.GetRanks() {
				flops[id] += rk.GetCost()
			}
		}
	})
	var steps map[string]time.Duration
	if l := c.currentLeader(); l != nil {
		steps = l.stepTimes()
	}
	for st := pb.JobState_JOB_STATE_QUEUED; st <= pb.JobState_JOB_STATE_EXPIRED; st++ {
		p.Counts = append(p.Counts, stateCount{stateName(st), cl.GetJobsByState()[stateName(st)]})
	}
	list := c.list(nil, statusJobs)
	p.JobsShown, p.JobsTotal = int64(len(list.GetJobs())), list.GetTotal()
	running := map[string][]string{} // worker -> running jobs
	for _, j := range list.GetJobs() {
		if j.GetState() == pb.JobState_JOB_STATE_RUNNING {
			for _, w := range j.GetWorkers() {
				if !slices.Contains(running[w], j.GetId()) {
					running[w] = append(running[w], j.GetId())
				}
			}
		}
		p.Jobs = append(p.Jobs, statusJobOf(j, flops[j.GetId()], now))
	}
	for _, w := range cl.GetWorkers() {
		sw := statusWorker{ID: w.GetId(), Slots: w.GetSlots(), Used: w.GetUsedSlots(),
			GFLOPS: fmt.Sprintf("%.1f", w.GetGflops()), Jobs: running[w.GetId()], Leaving: w.GetLeaving()}
		if d, ok := steps[w.GetId()]; ok {
			sw.StepTime = roundDur(d).String()
		}
		if ms := w.GetLastSeenUnixMs(); ms > 0 {
			sw.LastSeen = fmt.Sprintf("%s ago", roundDur(now.Sub(time.UnixMilli(ms))))
		}
		p.Workers = append(p.Workers, sw)
	}
	slices.SortFunc(p.Workers, func(a, b statusWorker) int { return strings.Compare(a.ID, b.ID) })
	return p
}

// statusJobOf is one row of the jobs table; flops is the planned work of
// the job's current epoch (its GFLOP/s is that over the run time so far,
// scaled by the fraction done: after a re-plan it counts the last epoch's
// work only).
func statusJobOf(j *pb.JobStatus, flops float64, now time.Time) statusJob {
	s := j.GetSpec()
	sj := statusJob{ID: j.GetId(), State: stateName(j.GetState()), Epoch: j.GetEpoch(), Strategy: j.GetStrategy(),
		Reason: j.GetReason(), Workers: j.GetWorkers(),
		Kind:  strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "JOB_KIND_")),
		Shape: fmt.Sprintf("B=%d Hq=%d Hkv=%d N=%d Nk=%d D=%d", s.GetB(), s.GetHq(), s.GetHkv(), s.GetN(), s.GetNk(), s.GetD())}
	if s.GetMask().GetCausal() {
		sj.Shape += " causal"
	}
	if m := s.GetMode(); m != pb.JobMode_JOB_MODE_FORWARD {
		sj.Kind += " " + strings.ToLower(strings.TrimPrefix(m.String(), "JOB_MODE_"))
		if p := j.GetPhase(); p != "" && !Terminal(j.GetState()) {
			sj.Kind += ", " + p + " pass"
		}
	}
	frac := -1.0
	if t := j.GetBlocksTotal(); t > 0 {
		frac = float64(j.GetBlocksDone()) / float64(t)
		sj.Progress = fmt.Sprintf("%d/%d blocks", j.GetBlocksDone(), t)
	}
	if t := j.GetStepsTotal(); t > 0 && j.GetState() == pb.JobState_JOB_STATE_RUNNING {
		frac = float64(j.GetStepsDone()) / float64(t)
		sj.Progress += fmt.Sprintf(", %d/%d steps", j.GetStepsDone(), t)
	}
	if j.GetState() == pb.JobState_JOB_STATE_SUCCEEDED {
		frac = 1
	}
	sj.Percent = int(100 * max(frac, 0))
	end := now
	if f := j.GetFinishedUnixMs(); f > 0 {
		end = time.UnixMilli(f)
	}
	if c := j.GetCreatedUnixMs(); c > 0 {
		sj.Created = time.UnixMilli(c).UTC().Format("2006-01-02 15:04:05")
		sj.Duration = roundDur(end.Sub(time.UnixMilli(c))).String()
	}
	if s := j.GetStartedUnixMs(); s > 0 && flops > 0 && frac > 0 {
		if secs := end.Sub(time.UnixMilli(s)).Seconds(); secs > 0 {
			sj.GFLOPS = fmt.Sprintf("%.1f", flops*frac/secs/1e9)
		}
	}
	return sj
}

// roundDur keeps durations readable: ms below 10 s, then 0.1 s.
func roundDur(d time.Duration) time.Duration {
	if d < 10*time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(100 * time.Millisecond)
}

// serveStatus renders the HTML status page.
func (c *Coordinator) serveStatus(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	if err := statusTmpl.Execute(&buf, c.statusData()); err != nil {
		c.log.Error("status page", "err", err)
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}
