package localcluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// LoadFault is a process fault RunLoad injects while the load runs.
type LoadFault string

// The faults of a load run.
const (
	// FaultWorkerKill SIGKILLs a worker that runs a shard; a new worker
	// replaces it.
	FaultWorkerKill LoadFault = "worker-kill"
	// FaultWorkerTerm SIGTERMs a worker that runs a shard: it drains and
	// must exit 0; a new worker replaces it.
	FaultWorkerTerm LoadFault = "worker-term"
	// FaultLeaderKill SIGKILLs the coordinator leader while jobs run; it
	// is restarted with its data once a new leader serves.
	FaultLeaderKill LoadFault = "leader-kill"
	// FaultNATSRestart SIGKILLs the NATS server while jobs run and starts
	// it again on the same port and store.
	FaultNATSRestart LoadFault = "nats-restart"
)

// AllLoadFaults are every fault, in the order RunLoad injects them.
var AllLoadFaults = []LoadFault{FaultWorkerKill, FaultWorkerTerm, FaultLeaderKill, FaultNATSRestart}

// ParseLoadFaults reads "all", "none" or a comma list of fault names.
func ParseLoadFaults(s string) ([]LoadFault, error) {
	switch strings.TrimSpace(s) {
	case "all":
		return slices.Clone(AllLoadFaults), nil
	case "none", "":
		return nil, nil
	}
	var out []LoadFault
	for _, item := range strings.Split(s, ",") {
		f := LoadFault(strings.TrimSpace(item))
		if !slices.Contains(AllLoadFaults, f) {
			var names []string
			for _, a := range AllLoadFaults {
				names = append(names, string(a))
			}
			return nil, fmt.Errorf("%w: fault %q: want all, none or a comma list of %s", ErrInvalid, item, strings.Join(names, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// LoadConfig configures RunLoad. Zero values mean the defaults noted.
type LoadConfig struct {
	// Clients submit concurrently, each over its own NATS connection
	// (default 50).
	Clients int
	// Small and Large are the numbers of small jobs (a few blocks,
	// milliseconds of work) and larger jobs (a few GFLOP) (default 300
	// and 4).
	Small, Large int
	// Faults are injected in order, spread over the run: fault i of n
	// once (i+1)/(n+1) of the jobs finished (and not before the previous
	// fault's cluster is restored).
	Faults []LoadFault
	// Seed makes the inputs and the idempotency keys (default 1).
	Seed uint64
	// JobTimeout bounds each job from its first submit to its checked
	// outputs (default 5 min).
	JobTimeout time.Duration
	// ExpiryTimeout bounds the wait, after the load, for every job record
	// and every store namespace to be gone (default 2 min). The cluster's
	// coordinators need a short --job-ttl and --sweep-grace for it
	// (LoadCoordinatorArgs).
	ExpiryTimeout time.Duration
	// IdleTimeout bounds the wait for the processes' goroutines and RSS
	// to return to their idle level (default 60 s).
	IdleTimeout time.Duration
	// GoroutineSlack: a process is back at idle with at most idle +
	// GoroutineSlack goroutines (default 25).
	GoroutineSlack int
	// RSSSlack: ... and a resident set of at most idle + RSSSlack bytes
	// (default 96 MiB).
	RSSSlack int64
	// Logger receives progress (nil: discard).
	Logger *slog.Logger
}

func (c *LoadConfig) fill() error {
	if c.Clients == 0 {
		c.Clients = 50
	}
	if c.Small == 0 && c.Large == 0 {
		c.Small, c.Large = 300, 4
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.JobTimeout <= 0 {
		c.JobTimeout = 5 * time.Minute
	}
	if c.ExpiryTimeout <= 0 {
		c.ExpiryTimeout = 2 * time.Minute
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = time.Minute
	}
	if c.GoroutineSlack <= 0 {
		c.GoroutineSlack = 25
	}
	if c.RSSSlack <= 0 {
		c.RSSSlack = 96 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Clients < 1 || c.Clients > 1000:
		return fmt.Errorf("%w: Clients = %d: want 1..1000", ErrInvalid, c.Clients)
	case c.Small < 0 || c.Large < 0 || c.Small+c.Large > 1_000_000:
		return fmt.Errorf("%w: Small = %d, Large = %d: want >= 0 and at most 1000000 jobs", ErrInvalid, c.Small, c.Large)
	}
	for _, f := range c.Faults {
		if !slices.Contains(AllLoadFaults, f) {
			return fmt.Errorf("%w: fault %q: want one of %v", ErrInvalid, f, AllLoadFaults)
		}
	}
	return nil
}

// LoadCoordinatorArgs are coordinator flags that let a load run's jobs
// expire after jobTTL and orphaned uploads be swept after sweepGrace, so
// that RunLoad can check that nothing leaked. Tombstones (id, state,
// idempotency key of an expired job) stay for the run: RunLoad checks the
// keys against them. jobTTL must exceed the time a client takes from its
// job finishing to its outputs fetched, and sweepGrace the time from an
// upload to its submit committed (both grow with the load and with
// leader changes); RunLoad's wait for expiry takes at least the longer.
func LoadCoordinatorArgs(jobTTL, sweepGrace time.Duration) []string {
	return []string{"--job-ttl", jobTTL.String(), "--tombstone-ttl", "1h",
		"--sweep-grace", sweepGrace.String(), "--sweep-interval", "1s"}
}

// LoadFaultResult is what one injected fault did.
type LoadFaultResult struct {
	Fault LoadFault
	// Victim is the process hit.
	Victim string
	// At is the time of injection, since the run started.
	At time.Duration
	// Landed says whether the fault was injected where it must: on a
	// worker running a shard, or while jobs ran.
	Landed bool
	// Detail is the fault's own reaction time: worker-term the victim's
	// exit, leader-kill a new leader serving, nats-restart NATS serving
	// JetStream again (0 for worker-kill).
	Detail time.Duration
	// Stall is how long no job finished after the fault: fault -> the
	// first job finished after it.
	Stall time.Duration
	// Recovery is fault -> every job in flight at the fault finished.
	Recovery time.Duration
	// InFlight counts the jobs submitted and not finished at the fault.
	InFlight int
	// Err is why the fault went wrong (the victim did not exit 0, ...).
	Err string
}

// LoadProc is one process's goroutines and resident set, idle before the
// load and after it (once everything expired).
type LoadProc struct {
	Name                            string
	IdleGoroutines, AfterGoroutines float64
	IdleRSS, AfterRSS               int64
	// Skipped says why the process was not compared (restarted, ...).
	Skipped string
	// Role notes a coordinator whose role changed: its idle goroutines
	// are then those of a coordinator idle in its new role.
	Role string
}

// LoadReport is the result of RunLoad. Problems lists every guarantee
// that did not hold; a correct cluster has none.
type LoadReport struct {
	Jobs, Small, Large, Clients int
	Faults                      []LoadFaultResult
	// Succeeded: SUCCEEDED with outputs equal to the float64 reference.
	Succeeded int
	// Refused: submits the coordinator refused with an error, by text.
	Refused       int
	RefusalErrors map[string]int
	// Duplicates: keys that named more than one job, and jobs announced
	// finished more than once.
	Duplicates int
	// Lost: keys accepted whose job did not end SUCCEEDED with exact
	// outputs.
	Lost int
	// Submits counts submit calls (first, deliberate retry, retries
	// after transient errors); Existing how many answered an existing job.
	Submits, Existing int
	// Replanned counts jobs that finished in an epoch > 1.
	Replanned int
	// Elapsed is first submit -> last job checked; Throughput is
	// Succeeded / Elapsed in jobs/s.
	Elapsed    time.Duration
	Throughput float64
	// P50, P99, Max latency: first submit -> job seen finished.
	P50, P99, Max time.Duration
	// LeftRecords and LeftNamespaces are the job records (tombstones of
	// expired jobs not counted) and store namespaces left when the expiry
	// wait ended (0: nothing leaked).
	LeftRecords, LeftNamespaces int
	ExpiredAfter                time.Duration
	Procs                       []LoadProc
	Problems                    []string
}

// loadJob is one job of the load: its inputs are made from its seed.
type loadJob struct {
	idx   int
	key   string
	large bool
	p     attnref.Problem
	block int

	// Filled by its client.
	ids       []string
	refused   string
	submitAt  time.Time
	ackAt     time.Time
	doneAt    time.Time
	finishMs  int64
	epoch     uint64
	state     pb.JobState
	err       string
	succeeded bool
	submits   int
	existing  int
	stage     atomic.Int32 // a loadStage
	stageAt   atomic.Int64 // when it entered the stage (Unix ns)
}

// The stages of a load job, for the progress log.
const (
	stageQueued int32 = iota
	stageSubmit
	stageRetry
	stageWait
	stageFetch
	stageDone
)

var stageNames = []string{"not started", "submitting", "re-submitting", "waiting", "fetching", "done"}

func (j *loadJob) enter(stage int32) {
	j.stage.Store(stage)
	j.stageAt.Store(time.Now().UnixNano())
}

func (j *loadJob) inputs(seed uint64) (q, k, v []float32) {
	r := testrand.New(seed*1_000_003 + uint64(j.idx))
	p := j.p
	q = r.Slice(p.B*p.Hq*p.N*p.D, testrand.Normal)
	k = r.Slice(p.B*p.Hkv*p.Nk*p.D, testrand.Normal)
	v = r.Slice(p.B*p.Hkv*p.Nk*p.D, testrand.Normal)
	return
}

// loadJobs makes the jobs: small ones of 1..4 blocks of 64 tokens, and
// large ones of 12 blocks of 128 tokens (about 1.6 GFLOP each),
// interleaved.
func loadJobs(cfg *LoadConfig) []*loadJob {
	total := cfg.Small + cfg.Large
	out := make([]*loadJob, 0, total)
	every := 0
	if cfg.Large > 0 {
		every = max(1, total/cfg.Large)
	}
	large := 0
	for i := range total {
		j := &loadJob{idx: i, key: fmt.Sprintf("load-%d-%d", cfg.Seed, i)}
		if every > 0 && large < cfg.Large && (i%every == every/2 || total-i <= cfg.Large-large) {
			j.large = true
			large++
			j.p = attnref.Problem{B: 1, Hq: 4, Hkv: 2, N: 1536, Nk: 1536, D: 64, Mask: attnref.Mask{Causal: i%2 == 0}}
			j.block = 128
		} else {
			n := 64 * (1 + i%4)
			nk := n + 64*(i%2)
			j.p = attnref.Problem{B: 1, Hq: 2, Hkv: 1 + i%2, N: n, Nk: nk, D: 32, Mask: attnref.Mask{Causal: i%3 == 0}}
			j.block = 64
		}
		out = append(out, j)
	}
	return out
}

// check compares outputs with the float64 reference: every row of a
// small job, the first, middle and last row of every block of a large one.
func (j *loadJob) check(seed uint64, res *client.AttentionResult) error {
	q, k, v := j.inputs(seed)
	p := j.p
	if res.O == nil || res.LSE == nil || len(res.O.Data) != p.B*p.Hq*p.N*p.D || len(res.LSE.Data) != p.B*p.Hq*p.N {
		return errors.New("outputs have the wrong size")
	}
	o, lse := res.O.Data, res.LSE.Data
	var wantO, wantL []float64
	if !j.large {
		wantO, wantL = p.Attention(q, k, v)
	} else {
		var rows []int
		for s := 0; s < p.N; s += j.block {
			e := min(s+j.block, p.N)
			rows = append(rows, s, (s+e)/2, e-1)
		}
		slices.Sort(rows)
		rows = slices.Compact(rows)
		wantO, wantL = p.Rows(q, k, v, rows)
		gotO := make([]float32, 0, len(wantO))
		gotL := make([]float32, 0, len(wantL))
		for bh := 0; bh < p.B*p.Hq; bh++ {
			for _, row := range rows {
				at := bh*p.N + row
				gotO = append(gotO, o[at*p.D:(at+1)*p.D]...)
				gotL = append(gotL, lse[at])
			}
		}
		o, lse = gotO, gotL
	}
	const tol = 1e-4
	if d := attnref.MaxAbsDiff(o, wantO); !(d <= tol) {
		return fmt.Errorf("o differs from the float64 reference by %g, want <= %g", d, tol)
	}
	if d := attnref.MaxAbsDiff(lse, wantL); !(d <= tol) {
		return fmt.Errorf("lse differs from the float64 reference by %g, want <= %g", d, tol)
	}
	return nil
}

// loadRun is one RunLoad.
type loadRun struct {
	c     *Cluster
	cfg   LoadConfig
	log   *slog.Logger
	jobs  []*loadJob
	start time.Time

	finished atomic.Int64 // jobs done (succeeded, failed or refused)

	mu     sync.Mutex
	events map[string][]pb.JobState // FINISHED events by job
}

// RunLoad drives a load against a running cluster: cfg.Clients clients
// submit cfg.Small + cfg.Large attention jobs with idempotency keys, each
// submit repeated once with the same key (a client retrying after a lost
// reply), while cfg.Faults are injected. Each client waits for its job,
// fetches the outputs and checks them against a float64 reference. Then
// RunLoad checks that every key names exactly one job, waits until every
// job record and store namespace is gone (see LoadCoordinatorArgs) and
// until each process that ran throughout is back at its idle goroutines
// and RSS. The error is for a harness failure; the guarantees that did not
// hold are in the report's Problems.
func RunLoad(ctx context.Context, c *Cluster, cfg LoadConfig) (*LoadReport, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	r := &loadRun{c: c, cfg: cfg, log: cfg.Logger, jobs: loadJobs(&cfg), events: map[string][]pb.JobState{}}
	rep := &LoadReport{Jobs: len(r.jobs), Small: cfg.Small, Large: cfg.Large, Clients: cfg.Clients, RefusalErrors: map[string]int{}}

	idle, err := r.waitIdle(ctx, nil)
	if err != nil {
		return nil, err
	}
	events, err := transport.Dial(c.NATSConfig("load-events"), nil)
	if err != nil {
		return nil, err
	}
	defer events.Close()
	stopEvents, err := events.OnEvents("", transport.ServeConfig{}, func(ev *pb.JobEvent) {
		if ev.GetType() != pb.JobEventType_JOB_EVENT_TYPE_FINISHED {
			return
		}
		r.mu.Lock()
		r.events[ev.GetJobId()] = append(r.events[ev.GetJobId()], ev.GetState())
		r.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	defer stopEvents()
	flushCtx, cancelFlush := context.WithTimeout(ctx, 10*time.Second) // Flush needs a deadline
	defer cancelFlush()
	if err := events.Flush(flushCtx); err != nil {
		return nil, err
	}

	clients := make([]*client.Client, cfg.Clients)
	for i := range clients {
		cl, err := client.Connect(ctx, c.NATSConfig(fmt.Sprintf("load-client-%d", i)), client.Options{RequestTimeout: 2 * time.Second})
		if err != nil {
			for _, cl := range clients[:i] {
				cl.Close()
			}
			return nil, err
		}
		clients[i] = cl
	}
	closeClients := sync.OnceFunc(func() {
		for _, cl := range clients {
			cl.Close()
		}
	})
	defer closeClients()

	r.start = time.Now()
	faultsDone := make(chan []LoadFaultResult, 1)
	fctx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	go func() { faultsDone <- r.injectFaults(fctx) }()
	go r.logProgress(fctx)
	var wg sync.WaitGroup
	for i, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := i; k < len(r.jobs); k += len(clients) {
				if ctx.Err() != nil {
					return
				}
				r.runJob(ctx, cl, r.jobs[k])
				r.finished.Add(1)
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	stopFaults()
	closeClients()
	rep.Faults = <-faultsDone
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	r.log.Info("load done", "jobs", len(r.jobs), "took", end.Sub(r.start))

	// Outcomes, latencies.
	var lat []time.Duration
	for _, j := range r.jobs {
		rep.Submits += j.submits
		rep.Existing += j.existing
		switch {
		case j.refused != "":
			rep.Refused++
			rep.RefusalErrors[j.refused]++
		case j.succeeded:
			rep.Succeeded++
			lat = append(lat, j.doneAt.Sub(j.submitAt))
		default:
			rep.Lost++
			rep.Problems = append(rep.Problems, fmt.Sprintf("key %s (jobs %v): %s", j.key, j.ids, j.err))
		}
		if j.epoch > 1 {
			rep.Replanned++
		}
		if ids := slices.Compact(slices.Sorted(slices.Values(j.ids))); len(ids) > 1 {
			rep.Duplicates++
			rep.Problems = append(rep.Problems, fmt.Sprintf("key %s answered %d jobs: %v", j.key, len(ids), ids))
		}
	}
	rep.Elapsed = end.Sub(r.start)
	if rep.Elapsed > 0 {
		rep.Throughput = float64(rep.Succeeded) / rep.Elapsed.Seconds()
	}
	slices.Sort(lat)
	rep.P50, rep.P99 = quantile(lat, 0.5), quantile(lat, 0.99)
	if len(lat) > 0 {
		rep.Max = lat[len(lat)-1]
	}
	for i := range rep.Faults {
		r.faultTimes(&rep.Faults[i])
		if f := rep.Faults[i]; !f.Landed || f.Err != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("fault %s: %s", f.Fault, cmp.Or(f.Err, "did not land")))
		}
	}
	if len(rep.Faults) < len(cfg.Faults) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("only %d of %d faults were injected before the load ended", len(rep.Faults), len(cfg.Faults)))
	}

	// Every key names one job in the coordinators' records, and no job
	// was announced finished twice.
	rep.Problems = append(rep.Problems, r.checkRecords(ctx, rep)...)

	// Nothing leaked: every record and namespace expires.
	expStart := time.Now()
	rep.LeftRecords, rep.LeftNamespaces, err = r.waitExpired(ctx)
	rep.ExpiredAfter = time.Since(expStart)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	// The processes return to their idle level.
	after, err := r.waitIdle(ctx, idle)
	if err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	for _, p := range c.Procs() {
		lp := LoadProc{Name: p.Name}
		b, a := idle[p.Name], after[p.Name]
		switch {
		case b.pid == 0:
			lp.Skipped = "started during the load"
		case a.pid == 0:
			lp.Skipped = "gone (faulted)"
		case a.pid != b.pid:
			lp.Skipped = "restarted (faulted)"
		}
		lp.IdleGoroutines, lp.AfterGoroutines, lp.IdleRSS, lp.AfterRSS = b.goroutines, a.goroutines, b.rss, a.rss
		if a.pid != 0 && b.leader != a.leader {
			lp.IdleGoroutines = goroutineBase(idle, p.Name, a)
			lp.Role = "follower -> leader"
			if b.leader {
				lp.Role = "leader -> follower"
			}
		}
		rep.Procs = append(rep.Procs, lp)
	}
	return rep, nil
}

// logProgress logs every 5 s how many jobs are done and, while some are
// not, the oldest job of each stage.
func (r *loadRun) logProgress(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		count := make([]int, len(stageNames))
		oldest := make([]*loadJob, len(stageNames))
		for _, j := range r.jobs {
			st := j.stage.Load()
			count[st]++
			if o := oldest[st]; o == nil || j.stageAt.Load() < o.stageAt.Load() {
				oldest[st] = j
			}
		}
		args := []any{"done", r.finished.Load(), "of", len(r.jobs)}
		for st := stageSubmit; st < stageDone; st++ {
			if count[st] > 0 {
				o := oldest[st]
				args = append(args, stageNames[st], fmt.Sprintf("%d (oldest %s for %v)", count[st], o.key,
					time.Since(time.Unix(0, o.stageAt.Load())).Round(time.Millisecond)))
			}
		}
		r.log.Info("load progress", args...)
	}
}

// quantile of sorted durations (nearest rank).
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

// transient reports whether a submit or fetch error may go away by
// itself (no leader, NATS reconnecting, a timeout).
func transient(err error) bool {
	return !errors.Is(err, client.ErrInvalid) && !errors.Is(err, client.ErrExhausted) &&
		!errors.Is(err, client.ErrConflict) && !errors.Is(err, client.ErrNotFound) &&
		!errors.Is(err, client.ErrJobFailed) && !errors.Is(err, client.ErrJobCanceled)
}

// submit uploads and submits j (SubmitAttention: a fresh upload
// namespace each time), retrying transient errors with the same key.
func (r *loadRun) submit(ctx context.Context, cl *client.Client, j *loadJob, q, k, v *tensor.Tensor) (*pb.JobStatus, error) {
	var last error
	for attempt := 0; attempt < 8; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		j.submits++
		st, err := cl.SubmitAttention(sctx, q, k, v, true, client.JobOptions{Causal: j.p.Mask.Causal, Block: j.block, IdempotencyKey: j.key})
		cancel()
		if err == nil {
			return st, nil
		}
		last = err
		if !transient(err) || ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, last
}

// runJob is one client's life of one job.
func (r *loadRun) runJob(ctx context.Context, cl *client.Client, j *loadJob) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.JobTimeout)
	defer cancel()
	qd, kd, vd := j.inputs(r.cfg.Seed)
	p := j.p
	q := tensor.New(qd, p.B, p.Hq, p.N, p.D)
	k := tensor.New(kd, p.B, p.Hkv, p.Nk, p.D)
	v := tensor.New(vd, p.B, p.Hkv, p.Nk, p.D)
	j.submitAt = time.Now()
	j.enter(stageSubmit)
	defer j.enter(stageDone)
	st, err := r.submit(ctx, cl, j, q, k, v)
	if err != nil {
		if !transient(err) {
			j.refused = oneLine(err)
		} else {
			j.err = "submit: " + oneLine(err)
		}
		return
	}
	j.ackAt = time.Now()
	j.ids = append(j.ids, st.GetId())
	// The deliberate retry: the same submit again (a lost reply).
	j.enter(stageRetry)
	st2, err := r.submit(ctx, cl, j, q, k, v)
	switch {
	case err != nil:
		j.err = "retried submit: " + oneLine(err)
		return
	default:
		j.ids = append(j.ids, st2.GetId())
		j.existing++
	}
	id := st.GetId()
	j.enter(stageWait)
	var fin *pb.JobStatus
	err = Poll(ctx, 50*time.Millisecond, func() error {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := cl.Watch(wctx, id, 200*time.Millisecond, nil)
		if err != nil {
			if transient(err) {
				return err
			}
			return Permanent(err)
		}
		fin = s
		return nil
	}, "job "+id+" finished")
	if err != nil {
		j.err = "waiting: " + oneLine(err)
		return
	}
	j.doneAt = time.Now()
	j.state, j.epoch, j.finishMs = fin.GetState(), fin.GetEpoch(), fin.GetFinishedUnixMs()
	if fin.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		j.err = fmt.Sprintf("job %s ended %v: %s", id, fin.GetState(), fin.GetReason())
		return
	}
	j.enter(stageFetch)
	var res *client.AttentionResult
	fctx, fcancel := context.WithTimeout(ctx, time.Minute)
	defer fcancel()
	err = Poll(fctx, 100*time.Millisecond, func() (err error) {
		actx, cancel := context.WithTimeout(fctx, 20*time.Second)
		defer cancel()
		res, err = cl.FetchAttention(actx, fin)
		if err == nil {
			return nil
		}
		if !transient(err) {
			return Permanent(err)
		}
		// Outputs of an expired job are gone for good.
		if st, gerr := cl.Get(actx, id); gerr == nil && st.GetState() == pb.JobState_JOB_STATE_EXPIRED {
			return Permanent(fmt.Errorf("job %s expired before its outputs were fetched (the coordinators' --job-ttl is too short for this load): %w", id, err))
		}
		return err
	}, "fetching job "+id)
	if err != nil {
		j.err = "fetch: " + oneLine(err)
		return
	}
	if err := j.check(r.cfg.Seed, res); err != nil {
		j.err = fmt.Sprintf("job %s: %v", id, err)
		return
	}
	j.succeeded = true
}

func oneLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// injectFaults injects the configured faults in order, fault i once
// (i+1)/(n+1) of the jobs are done, each where it must land.
func (r *loadRun) injectFaults(ctx context.Context) []LoadFaultResult {
	var out []LoadFaultResult
	n := len(r.cfg.Faults)
	for i, f := range r.cfg.Faults {
		want := int64(len(r.jobs) * (i + 1) / (n + 1))
		err := Poll(ctx, 10*time.Millisecond, func() error {
			if d := r.finished.Load(); d < want {
				return fmt.Errorf("%d of %d jobs done", d, want)
			}
			return nil
		}, fmt.Sprintf("%d jobs done before %s", want, f))
		if err != nil {
			return out
		}
		res := r.inject(ctx, f)
		r.log.Info("fault injected", "fault", f, "victim", res.Victim, "landed", res.Landed, "detail", res.Detail, "err", res.Err)
		out = append(out, res)
	}
	return out
}

// inject lands one fault and restores the cluster after it.
func (r *loadRun) inject(ctx context.Context, f LoadFault) LoadFaultResult {
	c := r.c
	res := LoadFaultResult{Fault: f}
	fail := func(err error) LoadFaultResult {
		res.Err = oneLine(err)
		return res
	}
	switch f {
	case FaultWorkerKill, FaultWorkerTerm:
		// A worker running a shard now.
		var victim *Proc
		err := Poll(ctx, 2*time.Millisecond, func() error {
			for _, w := range c.Workers() {
				if !w.Running() {
					continue
				}
				if n, err := c.Metric(ctx, w, "ringattn_worker_shards_running"); err == nil && n > 0 {
					victim = w
					return nil
				}
			}
			if r.finished.Load() == int64(len(r.jobs)) {
				return Permanent(errors.New("every job finished before a worker ran a shard"))
			}
			return errors.New("no worker runs a shard")
		}, "a worker running a shard")
		if err != nil {
			return fail(err)
		}
		res.Victim, res.Landed = victim.Name, true
		at := time.Now()
		res.At = at.Sub(r.start)
		if f == FaultWorkerKill {
			if err := victim.Kill(); err != nil {
				return fail(err)
			}
		} else {
			ps, err := victim.Terminate(c.cfg.DrainTimeout + 10*time.Second)
			if err != nil {
				return fail(err)
			}
			res.Detail = time.Since(at)
			if ps.ExitCode() != 0 {
				return fail(fmt.Errorf("%s exited with %v after SIGTERM, want 0", victim.Name, ps))
			}
		}
		if _, err := c.AddWorker(ctx); err != nil {
			return fail(fmt.Errorf("replacing %s: %w", victim.Name, err))
		}
	case FaultLeaderKill, FaultNATSRestart:
		err := Poll(ctx, 2*time.Millisecond, func() error {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			ci, err := c.Client().Cluster(rctx)
			if err != nil {
				return err
			}
			if ci.GetJobsByState()["running"] > 0 {
				return nil
			}
			if r.finished.Load() == int64(len(r.jobs)) {
				return Permanent(errors.New("every job finished before the fault"))
			}
			return errors.New("no job running")
		}, "a job running")
		if err != nil {
			return fail(err)
		}
		res.Landed = true
		if f == FaultLeaderKill {
			leader, err := c.Leader(ctx)
			if err != nil {
				return fail(err)
			}
			res.Victim = leader.Name
			at := time.Now()
			res.At = at.Sub(r.start)
			if err := leader.Kill(); err != nil {
				return fail(err)
			}
			if _, err := c.WaitLeader(ctx, leader); err != nil {
				return fail(err)
			}
			res.Detail = time.Since(at)
			if err := c.RestartAndWait(ctx, leader); err != nil {
				return fail(fmt.Errorf("restarting %s: %w", leader.Name, err))
			}
		} else {
			res.Victim = c.NATS.Name
			at := time.Now()
			res.At = at.Sub(r.start)
			if err := c.NATS.Kill(); err != nil {
				return fail(err)
			}
			if err := c.RestartAndWait(ctx, c.NATS); err != nil {
				return fail(err)
			}
			res.Detail = time.Since(at)
		}
	}
	return res
}

// faultTimes fills a fault's stall and recovery from the jobs' times.
func (r *loadRun) faultTimes(f *LoadFaultResult) {
	if !f.Landed {
		return
	}
	at := r.start.Add(f.At)
	atMs := at.UnixMilli()
	var first, last int64
	for _, j := range r.jobs {
		if j.finishMs == 0 || j.finishMs < atMs {
			continue
		}
		if first == 0 || j.finishMs < first {
			first = j.finishMs
		}
		if !j.ackAt.IsZero() && j.ackAt.Before(at) {
			f.InFlight++
			last = max(last, j.finishMs)
		}
	}
	if first > 0 {
		f.Stall = time.Duration(first-atMs) * time.Millisecond
	}
	if last > 0 {
		f.Recovery = time.Duration(last-atMs) * time.Millisecond
	}
}

// checkRecords lists every job: each key of the load names exactly one
// job, no job of another key exists, and no job was announced finished
// more than once.
func (r *loadRun) checkRecords(ctx context.Context, rep *LoadReport) []string {
	var all []*pb.JobStatus
	err := Poll(ctx, PollInterval, func() (err error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		all, err = r.c.Client().List(rctx, 2*len(r.jobs)+1000)
		return err
	}, "listing jobs")
	if err != nil {
		return []string{err.Error()}
	}
	var probs []string
	byKey := map[string][]string{}
	for _, st := range all {
		key := st.GetSpec().GetIdempotencyKey()
		byKey[key] = append(byKey[key], st.GetId())
	}
	for _, j := range r.jobs {
		ids := byKey[j.key]
		delete(byKey, j.key)
		switch {
		case j.refused != "" && len(ids) == 0:
		case len(ids) > 1:
			rep.Duplicates++
			probs = append(probs, fmt.Sprintf("key %s names %d jobs in the records: %v", j.key, len(ids), ids))
		case len(ids) == 0:
			probs = append(probs, fmt.Sprintf("key %s (jobs %v) has no job record", j.key, j.ids))
		case len(j.ids) > 0 && ids[0] != j.ids[0]:
			probs = append(probs, fmt.Sprintf("key %s is job %s in the records, but its submit answered %s", j.key, ids[0], j.ids[0]))
		}
	}
	for key, ids := range byKey {
		if strings.HasPrefix(key, fmt.Sprintf("load-%d-", r.cfg.Seed)) {
			probs = append(probs, fmt.Sprintf("jobs %v have key %s, which no client of the load used", ids, key))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, ev := range r.events {
		if len(ev) > 1 {
			rep.Duplicates++
			probs = append(probs, fmt.Sprintf("job %s was announced finished %d times: %v", id, len(ev), ev))
		}
	}
	return probs
}

// waitExpired waits until the coordinators hold no job record and the
// store no namespace; it returns what is left when it gives up.
func (r *loadRun) waitExpired(ctx context.Context) (records, namespaces int, err error) {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.ExpiryTimeout)
	defer cancel()
	store, err := r.c.Client().Store(ctx)
	if err != nil {
		return -1, -1, err
	}
	err = r.pollLogged(wctx, "expiry", func() error {
		rctx, cancel := context.WithTimeout(wctx, 5*time.Second)
		defer cancel()
		ci, err := r.c.Client().Cluster(rctx)
		if err != nil {
			return err
		}
		records = 0
		for st, n := range ci.GetJobsByState() {
			if st != "expired" { // tombstones: id, state and key only
				records += int(n)
			}
		}
		ns, err := store.Namespaces(rctx)
		if err != nil {
			return err
		}
		namespaces = len(ns)
		if records > 0 || namespaces > 0 {
			return fmt.Errorf("%d job records (%v) and %d store namespaces left", records, ci.GetJobsByState(), namespaces)
		}
		return nil
	})
	return records, namespaces, err
}

// pollLogged polls f every 250 ms until it returns nil or ctx ends,
// logging its error every 5 s.
func (r *loadRun) pollLogged(ctx context.Context, what string, f func() error) error {
	next := time.Now().Add(5 * time.Second)
	return Poll(ctx, 250*time.Millisecond, func() error {
		err := f()
		if err != nil && time.Now().After(next) {
			r.log.Info("load: waiting for "+what, "last", err)
			next = time.Now().Add(5 * time.Second)
		}
		return err
	}, what)
}

// procSample is one process's goroutines and resident set.
type procSample struct {
	pid        int
	goroutines float64
	rss        int64
	leader     bool // a coordinator leading (it runs the scheduler and API)
}

// goroutineBase is the idle goroutines p is compared with: its own when
// it has the role it had idle, else those of a coordinator idle in its
// role now (a follower become leader runs the leader's goroutines).
func goroutineBase(idle map[string]procSample, name string, now procSample) float64 {
	b := idle[name]
	if b.leader == now.leader {
		return b.goroutines
	}
	base := 0.0
	for _, o := range idle {
		if o.leader == now.leader && o.goroutines > base && o.pid != 0 {
			base = o.goroutines
		}
	}
	return base
}

// sample scrapes every running process: goroutines from /metrics
// (coordinators and workers), RSS from /proc.
func (r *loadRun) sample(ctx context.Context) (map[string]procSample, error) {
	out := map[string]procSample{}
	leader, err := r.c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range r.c.Procs() {
		if !p.Running() {
			continue
		}
		s := procSample{pid: p.Pid(), rss: rss(p.Pid()), leader: p == leader}
		if p.Kind != KindNATS {
			g, err := r.c.Metric(ctx, p, "go_goroutines")
			if err != nil {
				return nil, err
			}
			s.goroutines = g
		}
		out[p.Name] = s
	}
	return out, nil
}

// waitIdle waits until the cluster runs no job and, when idle is given,
// every process that ran throughout has at most its idle goroutines and
// RSS plus the slack; it returns the last samples.
func (r *loadRun) waitIdle(ctx context.Context, idle map[string]procSample) (map[string]procSample, error) {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.IdleTimeout)
	defer cancel()
	var last map[string]procSample
	err := r.pollLogged(wctx, "idle", func() error {
		rctx, cancel := context.WithTimeout(wctx, 5*time.Second)
		defer cancel()
		ci, err := r.c.Client().Cluster(rctx)
		if err != nil {
			return err
		}
		if n := ci.GetJobsByState()["running"] + ci.GetJobsByState()["queued"]; n > 0 {
			return fmt.Errorf("%d jobs running or queued", n)
		}
		s, err := r.sample(rctx)
		if err != nil {
			return err
		}
		last = s
		var busy []string
		for name, a := range s {
			b, ok := idle[name]
			if !ok || b.pid != a.pid {
				continue
			}
			if g := goroutineBase(idle, name, a); a.goroutines > g+float64(r.cfg.GoroutineSlack) {
				busy = append(busy, fmt.Sprintf("%s has %g goroutines (idle %g)", name, a.goroutines, g))
			}
			if b.rss > 0 && a.rss > b.rss+r.cfg.RSSSlack {
				busy = append(busy, fmt.Sprintf("%s has %d MiB resident (idle %d MiB)", name, a.rss>>20, b.rss>>20))
			}
		}
		if len(busy) > 0 {
			slices.Sort(busy)
			return errors.New(strings.Join(busy, "; "))
		}
		return nil
	})
	return last, err
}

// rss is a process's resident set in bytes (VmRSS; 0 where /proc is
// unavailable).
func rss(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// Markdown renders the report: the summary table, the faults, the
// processes and the problems.
func (rep *LoadReport) Markdown() string {
	var b strings.Builder
	var faults []string
	for _, f := range rep.Faults {
		faults = append(faults, string(f.Fault))
	}
	fmt.Fprintf(&b, "| jobs (small+large) | clients | faults | successes | refusals | duplicates | lost | re-planned | throughput | p50 | p99 | max |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| %d (%d+%d) | %d | %s | %d | %d | %d | %d | %d | %.1f jobs/s | %v | %v | %v |\n\n",
		rep.Jobs, rep.Small, rep.Large, rep.Clients, cmp.Or(strings.Join(faults, ", "), "none"), rep.Succeeded, rep.Refused,
		rep.Duplicates, rep.Lost, rep.Replanned, rep.Throughput, rep.P50.Round(time.Millisecond), rep.P99.Round(time.Millisecond),
		rep.Max.Round(time.Millisecond))
	if len(rep.Faults) > 0 {
		fmt.Fprintf(&b, "| fault | victim | at | reaction | stall (fault -> next job done) | recovery (fault -> jobs in flight done) | jobs in flight |\n")
		fmt.Fprintf(&b, "|---|---|---|---|---|---|---|\n")
		for _, f := range rep.Faults {
			react := "-"
			switch {
			case f.Err != "":
				react = "ERROR: " + f.Err
			case f.Fault == FaultWorkerTerm:
				react = fmt.Sprintf("exited 0 after %v", f.Detail.Round(time.Millisecond))
			case f.Fault == FaultLeaderKill:
				react = fmt.Sprintf("new leader after %v", f.Detail.Round(time.Millisecond))
			case f.Fault == FaultNATSRestart:
				react = fmt.Sprintf("serving again after %v", f.Detail.Round(time.Millisecond))
			}
			fmt.Fprintf(&b, "| %s | %s | %v | %s | %v | %v | %d |\n", f.Fault, f.Victim, f.At.Round(time.Millisecond), react,
				f.Stall.Round(time.Millisecond), f.Recovery.Round(time.Millisecond), f.InFlight)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Submits: %d (%d answered an existing job: the deliberate retries). Leaks after %v: %d job records, %d store namespaces left.\n\n",
		rep.Submits, rep.Existing, rep.ExpiredAfter.Round(time.Millisecond), rep.LeftRecords, rep.LeftNamespaces)
	if len(rep.RefusalErrors) > 0 {
		b.WriteString("Refusals:\n")
		for _, e := range slices.Sorted(maps.Keys(rep.RefusalErrors)) {
			fmt.Fprintf(&b, "- %d× %s\n", rep.RefusalErrors[e], e)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "| process | goroutines idle -> after | RSS idle -> after |\n|---|---|---|\n")
	for _, p := range rep.Procs {
		if p.Skipped != "" {
			fmt.Fprintf(&b, "| %s | (%s) | |\n", p.Name, p.Skipped)
			continue
		}
		g := "-"
		if p.IdleGoroutines > 0 {
			g = fmt.Sprintf("%g -> %g", p.IdleGoroutines, p.AfterGoroutines)
		}
		if p.Role != "" {
			g += " (" + p.Role + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f -> %.1f MiB |\n", p.Name, g, float64(p.IdleRSS)/(1<<20), float64(p.AfterRSS)/(1<<20))
	}
	if len(rep.Problems) > 0 {
		fmt.Fprintf(&b, "\nProblems (%d):\n", len(rep.Problems))
		for i, p := range rep.Problems {
			if i == 20 {
				fmt.Fprintf(&b, "- ... %d more\n", len(rep.Problems)-20)
				break
			}
			fmt.Fprintf(&b, "- %s\n", p)
		}
	}
	return b.String()
}
