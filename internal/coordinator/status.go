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
}

type statusJob struct {
	ID, State, Kind, Shape, Strategy, Reason string
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
<p>Leader: <b>{{if .Leader}}{{.Leader}}{{else}}none known{{end}}</b> · term {{.Term}} · commit index {{.Commit}} · applied {{.Applied}} · version {{.Version}} · {{.Now}}</p>
<p>Queue depth {{.QueueDepth}}{{range .Counts}} · {{.State}} {{.N}}{{end}}</p>
<h2>Coordinators</h2>
<table id="peers"><tr><th>id</th><th>address</th><th>role</th></tr>
{{range .Peers}}<tr><td>{{.Id}}</td><td>{{.Address}}</td><td>{{if .Leader}}leader{{else if .Voter}}voter{{else}}non-voter{{end}}</td></tr>
{{end}}</table>
<h2>Workers</h2>
{{if .WorkersKnown}}<table id="workers"><tr><th>id</th><th>slots used / total</th><th>GFLOP/s</th><th>current job</th><th>last heartbeat</th><th>state</th></tr>
{{range .Workers}}<tr><td>{{.ID}}</td><td class="num">{{.Used}} / {{.Slots}}</td><td class="num">{{.GFLOPS}}</td><td>{{if .Jobs}}{{join .Jobs}}{{else}}idle{{end}}</td><td>{{.LastSeen}}</td><td>{{if .Leaving}}leaving{{else}}live{{end}}</td></tr>
{{else}}<tr><td colspan="6">no live workers</td></tr>
{{end}}</table>{{else}}<p>The worker registry lives on the leader{{if .Leader}} ({{.Leader}}){{end}}; this node is not it.</p>{{end}}
<h2>Jobs</h2>
<p>{{.JobsShown}} of {{.JobsTotal}}, newest first.</p>
<table id="jobs"><tr><th>id</th><th>state</th><th>kind</th><th>shape</th><th>progress</th><th>epoch</th><th>duration</th><th>strategy</th><th>workers</th><th>reason</th></tr>
{{range .Jobs}}<tr><td>{{.ID}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Kind}}</td><td>{{.Shape}}</td><td><progress max="100" value="{{.Percent}}"></progress> {{.Progress}}</td><td class="num">{{.Epoch}}</td><td class="num">{{.Duration}}</td><td>{{.Strategy}}</td><td>{{join .Workers}}</td><td>{{.Reason}}</td></tr>
{{else}}<tr><td colspan="10">no jobs</td></tr>
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
		p.Jobs = append(p.Jobs, statusJobOf(j, now))
	}
	for _, w := range cl.GetWorkers() {
		sw := statusWorker{ID: w.GetId(), Slots: w.GetSlots(), Used: w.GetUsedSlots(),
			GFLOPS: fmt.Sprintf("%.1f", w.GetGflops()), Jobs: running[w.GetId()], Leaving: w.GetLeaving()}
		if ms := w.GetLastSeenUnixMs(); ms > 0 {
			sw.LastSeen = fmt.Sprintf("%s ago", roundDur(now.Sub(time.UnixMilli(ms))))
		}
		p.Workers = append(p.Workers, sw)
	}
	slices.SortFunc(p.Workers, func(a, b statusWorker) int { return strings.Compare(a.ID, b.ID) })
	return p
}

func statusJobOf(j *pb.JobStatus, now time.Time) statusJob {
	s := j.GetSpec()
	sj := statusJob{ID: j.GetId(), State: stateName(j.GetState()), Epoch: j.GetEpoch(), Strategy: j.GetStrategy(),
		Reason: j.GetReason(), Workers: j.GetWorkers(),
		Kind:  strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "JOB_KIND_")),
		Shape: fmt.Sprintf("B=%d Hq=%d Hkv=%d N=%d Nk=%d D=%d", s.GetB(), s.GetHq(), s.GetHkv(), s.GetN(), s.GetNk(), s.GetD())}
	if s.GetMask().GetCausal() {
		sj.Shape += " causal"
	}
	if t := j.GetBlocksTotal(); t > 0 {
		sj.Percent = int(100 * j.GetBlocksDone() / t)
		sj.Progress = fmt.Sprintf("%d/%d blocks", j.GetBlocksDone(), t)
	}
	if c := j.GetCreatedUnixMs(); c > 0 {
		end := now
		if f := j.GetFinishedUnixMs(); f > 0 {
			end = time.UnixMilli(f)
		}
		sj.Duration = roundDur(end.Sub(time.UnixMilli(c))).String()
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
