package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

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

	r.outcomes(rep, end)

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
	rep.Procs = r.procs(idle, after)
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
