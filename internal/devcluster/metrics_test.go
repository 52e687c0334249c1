package devcluster_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// exposition is one scrape of a /metrics page in the Prometheus text format.
type exposition struct {
	help    map[string]string  // family -> HELP text
	typ     map[string]string  // family -> TYPE
	samples map[string]float64 // series as printed (name{labels}) -> value
}

func scrape(ctx context.Context, addr string) (*exposition, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s/metrics: %s: %s", addr, resp.Status, b)
	}
	e := &exposition{help: map[string]string{}, typ: map[string]string{}, samples: map[string]float64{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case strings.HasPrefix(line, "# HELP "):
			name, text, _ := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
			e.help[name] = text
		case strings.HasPrefix(line, "# TYPE "):
			name, t, _ := strings.Cut(strings.TrimPrefix(line, "# TYPE "), " ")
			e.typ[name] = t
		case strings.HasPrefix(line, "#"):
		default:
			i := strings.LastIndexByte(line, ' ')
			if i < 0 {
				return nil, fmt.Errorf("bad sample line %q", line)
			}
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				return nil, fmt.Errorf("bad sample line %q: %v", line, err)
			}
			e.samples[line[:i]] = v
		}
	}
	return e, sc.Err()
}

// value is the sample of series, and whether it was exposed.
func (e *exposition) value(series string) (float64, bool) {
	v, ok := e.samples[series]
	return v, ok
}

// family is the metric family a series belongs to (histogram suffixes
// stripped).
func family(series string) string {
	name, _, _ := strings.Cut(series, "{")
	for _, suf := range []string{"_count", "_sum", "_bucket"} {
		if s, ok := strings.CutSuffix(name, suf); ok {
			return s
		}
	}
	return name
}

// watcher scrapes a set of /metrics endpoints until stopped, keeping each
// series' minimum and maximum.
type watcher struct {
	mu       sync.Mutex
	min, max map[string]float64
	scrapes  int
	errs     []error
}

func (w *watcher) observe(prefix string, e *exposition) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.scrapes++
	for s, v := range e.samples {
		k := prefix + s
		if old, ok := w.min[k]; !ok || v < old {
			w.min[k] = v
		}
		if old, ok := w.max[k]; !ok || v > old {
			w.max[k] = v
		}
	}
}

func randTensor(r *testrand.Rand, shape ...int) *tensor.Tensor {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return tensor.New(r.Slice(n, testrand.Normal), shape...)
}

// TestDevclusterMetricsScrapedDuringJob runs a real in-process cluster
// (embedded NATS, a Raft coordinator, four workers), scrapes the
// coordinator's and two workers' /metrics while jobs run, and checks every
// DESIGN §7 metric is exposed with HELP text and moves: counters increase,
// gauges take more than one value (or, for the Raft state and term of a
// stable single-node cluster and the measured kernel speed, hold a positive
// value). A second job queues behind the first and one worker leaves
// mid-job (a re-plan); one worker waits on slower peers past its receive
// timeout (store fallbacks).
func TestDevclusterMetricsScrapedDuringJob(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Every worker reports 2 GFLOP/s (w2 a fifth of it), far below what
	// it measures: the big job's ranks then each hold far more compute
	// than the scheduler's minimum rank time, so it spreads over all four.
	const gflops = 2.0 // a float: gflops/5 below must not truncate to 0 (which means "measure")
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 1, WorkerThreads: 1, WorkerGFLOPS: gflops, Logger: xlog.Test(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	// Three more workers: two expose /metrics, the third leaves mid-job.
	wctx, wcancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { wcancel(); wg.Wait() }()
	newWorker := func(id string, tweak func(*worker.Config)) *worker.Worker {
		wc := worker.DefaultConfig()
		wc.ID = id
		wc.NATS = dev.NATSConfig()
		wc.NATS.Name = id
		wc.Threads = 1
		wc.HeartbeatInterval = 250 * time.Millisecond
		wc.MeasureDuration = 50 * time.Millisecond
		wc.GFLOPS = gflops
		if tweak != nil {
			tweak(&wc)
		}
		w, err := worker.New(wc)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(wctx); err != nil {
				t.Errorf("worker %s: %v", id, err)
			}
		}()
		select {
		case <-w.Ready():
		case <-ctx.Done():
			t.Fatalf("worker %s not ready", id)
		}
		return w
	}
	w1 := newWorker("observed-1", nil)
	// w2 reports a fifth of w1's kernel speed, so its plan share
	// is the smallest (but not empty): it finishes each step first and
	// waits for its predecessor's next frames longer than its 5 ms
	// receive timeout, and reads those blocks from the store instead
	// (store fallbacks).
	w2 := newWorker("observed-2", func(c *worker.Config) {
		c.GFLOPS = gflops / 5
		c.RecvTimeout = 5 * time.Millisecond
	})
	victim := newWorker("leaver-3", func(c *worker.Config) { c.MetricsAddr = worker.MetricsDisabled })

	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := testPoll(ctx, func() error {
		info, err := cl.Cluster(ctx)
		if err != nil {
			return err
		}
		if n := len(info.GetWorkers()); n != 4 {
			return fmt.Errorf("%d workers live, want 4", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	targets := map[string]string{"coord:": dev.HTTPAddr(), "w1:": w1.MetricsAddr(), "w2:": w2.MetricsAddr()}
	before := map[string]*exposition{}
	for p, addr := range targets {
		e, err := scrape(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		before[p] = e
	}

	wt := &watcher{min: map[string]float64{}, max: map[string]float64{}}
	for p, e := range before {
		wt.observe(p, e)
	}
	stop := make(chan struct{})
	var sw sync.WaitGroup
	for p, addr := range targets {
		sw.Add(1)
		go func() {
			defer sw.Done()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				e, err := scrape(ctx, addr)
				if err != nil {
					wt.mu.Lock()
					wt.errs = append(wt.errs, err)
					wt.mu.Unlock()
					continue
				}
				wt.observe(p, e)
			}
		}()
	}

	r := testrand.New(10)
	const h, n, d = 2, 4096, 64
	q, k, v := randTensor(r, 1, h, n, d), randTensor(r, 1, h, n, d), randTensor(r, 1, h, n, d)
	// Parallelism 4: one rank per worker, whatever the scheduler's gang
	// sizing makes of the measured speeds.
	big, err := cl.SubmitAttention(ctx, q, k, v, false, client.JobOptions{Block: 256, Parallelism: 4})
	if err != nil {
		t.Fatal(err)
	}
	sq, sk, sv := randTensor(r, 1, 1, 64, 16), randTensor(r, 1, 1, 64, 16), randTensor(r, 1, 1, 64, 16)
	small, err := cl.SubmitAttention(ctx, sq, sk, sv, false, client.JobOptions{Block: 32})
	if err != nil {
		t.Fatal(err)
	}
	// The leaver drains as soon as it holds a shard of the big job.
	if err := testPoll(ctx, func() error {
		for _, s := range victim.Shards() {
			if s.Job == big.GetId() && s.State == "running" {
				return nil
			}
		}
		return fmt.Errorf("leaver holds no running shard of %s", big.GetId())
	}); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	victim.Drain(dctx)
	dcancel()
	for _, id := range []string{big.GetId(), small.GetId()} {
		st, err := cl.Wait(ctx, id)
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Fatalf("job %s ended %v: %s", id, st.GetState(), st.GetReason())
		}
	}
	// One more scrape of each after the jobs (the last samples).
	after := map[string]*exposition{}
	close(stop)
	sw.Wait()
	for p, addr := range targets {
		e, err := scrape(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		after[p] = e
		wt.observe(p, e)
	}
	if len(wt.errs) > 0 {
		t.Errorf("%d scrapes failed; first: %v", len(wt.errs), wt.errs[0])
	}
	t.Logf("%d scrapes", wt.scrapes)

	const (
		counter = iota // strictly larger after than before
		gauge          // took at least two values during the run
		leader         // the Raft state of the leader (2) throughout
		present        // exposed with HELP; see below
	)
	checks := []struct {
		where, series string
		how           int
	}{
		// Coordinator.
		{"coord:", `ringattn_jobs{state="succeeded"}`, counter},
		{"coord:", `ringattn_jobs{state="running"}`, gauge},
		{"coord:", `ringattn_jobs{state="queued"}`, gauge},
		{"coord:", `ringattn_job_duration_seconds_count{state="succeeded"}`, counter},
		{"coord:", `ringattn_queue_depth`, gauge},
		{"coord:", `ringattn_workers_live`, gauge},
		{"coord:", `ringattn_replans_total`, counter},
		{"coord:", `ringattn_raft_state`, leader},
		{"coord:", `ringattn_raft_term`, leader},
		{"coord:", `ringattn_raft_commit_index`, counter},
		{"coord:", `ringattn_raft_applied_index`, counter},
		// Workers (w2 falls back to the store; both compute).
		{"w1:", `ringattn_worker_flops_total`, counter},
		{"w2:", `ringattn_worker_flops_total`, counter},
		{"w1:", `ringattn_worker_kernel_gflops`, leader},
		{"w1:", `ringattn_worker_last_shard_gflops`, counter},
		{"w1:", `ringattn_worker_ring_step_seconds_count`, counter},
		{"w1:", `ringattn_worker_ring_bytes_total{direction="sent"}`, counter},
		{"w1:", `ringattn_worker_ring_bytes_total{direction="received"}`, counter},
		{"w1:", `ringattn_worker_store_bytes_total{direction="read"}`, counter},
		{"w1:", `ringattn_worker_store_bytes_total{direction="written"}`, counter},
		{"w2:", `ringattn_worker_store_fallbacks_total`, counter},
		{"w1:", `ringattn_worker_shards_running`, gauge},
	}
	for _, c := range checks {
		fam := family(c.series)
		b, a := before[c.where], after[c.where]
		if help := a.help[fam]; strings.TrimSpace(help) == "" {
			t.Errorf("%s%s: no HELP text", c.where, fam)
		}
		if a.typ[fam] == "" {
			t.Errorf("%s%s: no TYPE", c.where, fam)
		}
		av, ok := a.value(c.series)
		if !ok {
			t.Errorf("%s%s: not exposed", c.where, c.series)
			continue
		}
		bv, _ := b.value(c.series)
		lo, hi := wt.min[c.where+c.series], wt.max[c.where+c.series]
		switch c.how {
		case counter:
			if !(av > bv) {
				t.Errorf("%s%s did not increase: %v before, %v after", c.where, c.series, bv, av)
			}
		case gauge:
			if !(hi > lo) {
				t.Errorf("%s%s never changed: stayed %v over %d scrapes", c.where, c.series, lo, wt.scrapes)
			}
		case leader:
			if !(lo > 0) {
				t.Errorf("%s%s: min %v, want > 0", c.where, c.series, lo)
			}
		}
		t.Logf("%-6s %-60s before %-12g after %-12g range [%g, %g]", c.where, c.series, bv, av, lo, hi)
	}
	// The dev cluster's own /metrics also gathers its in-process worker
	// (labelled worker="worker-0"), the Go runtime and the process (what
	// moves is TestDevclusterMetricsGathersEveryWorker's).
	for _, series := range []string{`ringattn_worker_flops_total{worker="worker-0"}`,
		`ringattn_worker_kernel_gflops{worker="worker-0"}`, `process_cpu_seconds_total`, `go_goroutines`} {
		if _, ok := after["coord:"].value(series); !ok || strings.TrimSpace(after["coord:"].help[family(series)]) == "" {
			t.Errorf("dev /metrics: %s not exposed with HELP", series)
		}
	}
	if v, _ := after["coord:"].value("ringattn_raft_state"); v != 2 {
		t.Errorf("ringattn_raft_state = %v on the only coordinator, want 2 (leader)", v)
	}

	// The Grafana dashboard queries only series these processes expose.
	exposed := map[string]bool{}
	for _, e := range after {
		for s := range e.samples {
			name, _, _ := strings.Cut(s, "{")
			exposed[name] = true
		}
	}
	var want []string
	for _, c := range checks {
		want = append(want, family(c.series))
	}
	checkDashboard(t, filepath.Join("..", "..", "deploy", "grafana", "ringattn.json"), exposed, want)
}

// dashboard is the part of a Grafana dashboard JSON the checks read.
type dashboard struct {
	UID    string           `json:"uid"`
	Title  string           `json:"title"`
	Panels []dashboardPanel `json:"panels"`
}

type dashboardPanel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

var metricRef = regexp.MustCompile(`\bringattn_[a-z0-9_]+`)

// checkDashboard parses the dashboard at path and checks its panels are
// well-formed, every ringattn_* series it queries is in exposed, and every
// family in want is queried by some panel.
func checkDashboard(t *testing.T, path string, exposed map[string]bool, want []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: uid %q, title %q, %d panels: want all set", path, d.UID, d.Title, len(d.Panels))
	}
	ids := map[int]bool{}
	queried := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("%s: panel id %d used twice", path, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W < 1 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H < 1 {
			t.Errorf("%s: panel %q has gridPos %+v outside the 24-column grid", path, p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("%s: panel %d (%q) needs a title and targets", path, p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			refs := metricRef.FindAllString(tg.Expr, -1)
			if len(refs) == 0 {
				t.Errorf("%s: panel %q target %s queries no ringattn metric: %q", path, p.Title, tg.RefID, tg.Expr)
			}
			for _, m := range refs {
				if !exposed[m] {
					t.Errorf("%s: panel %q queries %s, which no coordinator or worker exposes", path, p.Title, m)
				}
				queried[family(m)] = true
			}
		}
	}
	for _, f := range want {
		if !queried[f] {
			t.Errorf("%s: no panel shows %s", path, f)
		}
	}
}

// testPoll calls f every 10 ms until it succeeds or ctx ends.
func testPoll(ctx context.Context, f func() error) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ctx.Err(), err)
		case <-tick.C:
		}
	}
}
