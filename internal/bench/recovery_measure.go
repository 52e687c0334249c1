package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// waitMidJob waits until job id is RUNNING, then until its rank-1 worker
// (rank 0 of a one-rank plan) has computed a ring step of it (its step
// counter passed base) and still runs its shard. It returns the job's
// status when it was seen running and that worker. The second wait reads
// only the worker's metrics, so a busy API does not delay the fault.
func (b *recoveryBench) waitMidJob(ctx context.Context, id string, base map[string]float64) (*pb.JobStatus, *localcluster.Proc, error) {
	var st *pb.JobStatus
	err := poll(ctx, recoveryJobTimeout, "job "+id+" running", func(ctx context.Context) error {
		s, err := b.get(ctx, id)
		if err != nil {
			return err
		}
		st = s
		if client.Finished(s.GetState()) {
			return nil
		}
		if s.GetState() != pb.JobState_JOB_STATE_RUNNING || len(s.GetWorkers()) == 0 {
			return fmt.Errorf("job %s is %v", id, s.GetState())
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if client.Finished(st.GetState()) {
		return st, nil, fmt.Errorf("job %s %v in %.3f s before it was seen running: %w", id, st.GetState(), jobSeconds(st), errRerun)
	}
	ws := st.GetWorkers()
	if len(ws) != b.w {
		return st, nil, fmt.Errorf("job %s was planned on %v, not on all %d workers: %w", id, ws, b.w, errRerun)
	}
	victim := b.c.Worker(ws[min(1, len(ws)-1)])
	if victim == nil {
		return nil, nil, fmt.Errorf("job %s runs on %v, not workers of this cluster", id, ws)
	}
	late := false
	err = poll(ctx, recoveryJobTimeout, "job "+id+" mid-ring on "+victim.Name, func(ctx context.Context) error {
		steps := b.metric(ctx, victim, "ringattn_worker_ring_step_seconds_count")
		running := b.metric(ctx, victim, "ringattn_worker_shards_running")
		if steps > base[victim.Name] {
			late = running == 0 // its shard is over
			if late || running >= 1 {
				return nil
			}
		}
		return fmt.Errorf("%s: %g ring steps (%g before the job), %g shards running", victim.Name, steps, base[victim.Name], running)
	})
	switch {
	case err != nil:
		return nil, nil, err
	case late:
		return st, nil, fmt.Errorf("%s ran job %s's shard to its end before the fault could land mid-ring: %w", victim.Name, id, errRerun)
	}
	return st, victim, nil
}

// get is a job's status, one request.
func (b *recoveryBench) get(ctx context.Context, id string) (*pb.JobStatus, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return b.cl.Get(rctx, id)
}

// metric is a process's metric (NaN when unreachable).
func (b *recoveryBench) metric(ctx context.Context, p *localcluster.Proc, name string) float64 {
	v, err := b.c.Metric(ctx, p, name)
	if err != nil {
		return math.NaN()
	}
	return v
}

// follow polls job id until it is final (errors such as no leader or no
// NATS are retried) and returns its status and when the status first
// showed an epoch above `epoch` (zero if never).
func (b *recoveryBench) follow(ctx context.Context, id string, epoch uint64) (*pb.JobStatus, time.Time, error) {
	var st *pb.JobStatus
	var replanned time.Time
	err := poll(ctx, recoveryJobTimeout, "job "+id+" finished", func(ctx context.Context) error {
		s, err := b.get(ctx, id)
		if err != nil {
			return err
		}
		st = s
		if s.GetEpoch() > epoch && replanned.IsZero() {
			replanned = time.Now()
		}
		if client.Finished(s.GetState()) {
			return nil
		}
		return fmt.Errorf("job %s is %v in epoch %d (%d/%d blocks) on %v", id, s.GetState(), s.GetEpoch(),
			s.GetBlocksDone(), s.GetBlocksTotal(), s.GetWorkers())
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		return nil, time.Time{}, fmt.Errorf("job %s ended %v in epoch %d: %s", id, st.GetState(), st.GetEpoch(), st.GetReason())
	}
	return st, replanned, nil
}

// check downloads a succeeded job's output and compares it with the
// local kernel's; it returns max |diff| and an error above Tolerance.
func (b *recoveryBench) check(ctx context.Context, st *pb.JobStatus) (float64, error) {
	var res *client.AttentionResult
	err := poll(ctx, time.Minute, "the output of job "+st.GetId(), func(ctx context.Context) (err error) {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res, err = b.cl.FetchAttention(fctx, st)
		return err
	})
	if err != nil {
		return 0, err
	}
	diff := maxAbsDiff(b.want, res.O.Data)
	if !(diff <= Tolerance) {
		return diff, fmt.Errorf("job %s (epoch %d on %v): output differs from kernels.Attention by %g (> %g)",
			st.GetId(), st.GetEpoch(), st.GetWorkers(), diff, Tolerance)
	}
	return diff, nil
}

// waitWorkersIdle waits until the given workers (default: every running
// one) run no shard.
func (b *recoveryBench) waitWorkersIdle(ctx context.Context, ws ...*localcluster.Proc) error {
	return poll(ctx, time.Minute, "workers idle", func(ctx context.Context) error {
		list := ws
		if len(list) == 0 {
			list = b.c.Workers()
		}
		for _, w := range list {
			if !w.Running() {
				continue
			}
			if n, err := b.c.Metric(ctx, w, "ringattn_worker_shards_running"); err != nil || n != 0 {
				return fmt.Errorf("%s runs %g shards (%v)", w.Name, n, err)
			}
		}
		return nil
	})
}

// waitQuiet waits until a leader serves the API, every coordinator runs,
// exactly W worker processes run (none stopped), the leader lists exactly
// those as live, and none runs a shard: the next job is planned on all W.
func (b *recoveryBench) waitQuiet(ctx context.Context) error {
	if _, err := b.c.WaitLeader(ctx); err != nil {
		return err
	}
	for _, p := range b.c.Coordinators {
		if err := b.c.WaitCoordinator(ctx, p); err != nil {
			return err
		}
	}
	err := poll(ctx, time.Minute, fmt.Sprintf("%d live workers", b.w), func(ctx context.Context) error {
		var running []string
		for _, w := range b.c.Workers() {
			if w.Running() && !w.Stopped() {
				running = append(running, w.Name)
			}
		}
		slices.Sort(running)
		if len(running) != b.w {
			return fmt.Errorf("%d worker processes run, want %d", len(running), b.w)
		}
		live, err := b.c.LiveWorkers(ctx)
		if err != nil {
			return err
		}
		if !slices.Equal(live, running) {
			return fmt.Errorf("the leader lists %v as live, the running workers are %v", live, running)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return b.waitWorkersIdle(ctx)
}

// cell formats a time in seconds ("–" when NaN).
func cell(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return fmt.Sprintf("%.3f", v)
}

func maxOf(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return slices.Max(xs)
}

func (b *recoveryBench) print(w io.Writer, rows []*recoveryRow, undisturbed []float64) {
	p := b.p
	fmt.Fprintf(w, "Recovery from process faults: %d-process local cluster (NATS, 3 Raft coordinators, %d workers x %d kernel threads), GOMAXPROCS %d, kernel %s\n",
		4+b.w, b.w, b.threads, runtime.GOMAXPROCS(0), kernels.Impl())
	fmt.Fprintf(w, "job: B=1 H=%d N=Nk=%d D=%d %s, block %d (%.1f GFLOP; kernels.Attention here: %.3f s); %d runs per fault\n\n",
		p.Hq, p.N, p.D, maskName(p.Mask.Causal), b.block, p.VisibleFLOPs()/1e9, b.kernelSecs, b.repeat)
	fmt.Fprintln(w, "| fault | runs | re-plan p50 (s) | re-plan max (s) | done p50 (s) | done max (s) | job p50 (s) | undisturbed job (s) | epochs | max abs diff |")
	fmt.Fprintln(w, "|-------|------|-----------------|-----------------|--------------|--------------|-------------|---------------------|--------|--------------|")
	und := median(undisturbed)
	for _, r := range rows {
		rp50, rmax := cell(median(r.replan)), cell(maxOf(r.replan))
		if k := len(r.replan); k > 0 && k < len(r.done) {
			rp50 += fmt.Sprintf(" (%d of %d runs)", k, len(r.done))
		}
		lo, hi := slices.Min(r.epochs), slices.Max(r.epochs)
		epochs := fmt.Sprint(lo)
		if hi != lo {
			epochs = fmt.Sprintf("%d–%d", lo, hi)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %.1e |\n", r.f.label, len(r.done), rp50, rmax,
			cell(median(r.done)), cell(maxOf(r.done)), cell(median(r.job)), cell(und), epochs, r.diff)
	}
	t := b.t
	fmt.Fprintln(w, "\nre-plan = fault -> the leader starts a new epoch of the job (its EPOCH_STARTED event; the job status's epoch when the event was missed); – when every run finished in the epoch it was in.")
	fmt.Fprintln(w, "done = fault -> the job SUCCEEDED (the leader's finished time); job = the faulted job's started -> finished time; undisturbed job = the same job with no fault (median).")
	fmt.Fprintln(w, "epochs = the epochs the jobs finished in (1: never re-planned); max abs diff = largest |cluster - kernels.Attention| over the fault's runs (every output is checked; above 1e-4 is an error, not a row).")
	fmt.Fprintln(w, "The fault lands mid-ring: once the job's rank-1 worker has computed a ring step and still runs its shard. Medians and maxima are over the runs; the cluster is restored between runs.")
	fmt.Fprintf(w, "Timings: workers heartbeat every %v and are dead after %v of silence; Raft heartbeat and election timeouts %v (lease %v); a rank waits %v for a ring frame before reading the block from the store; requests time out after %v; drain timeout %v.\n",
		t.heartbeatInterval, t.heartbeatTimeout, t.raftTimeout, t.raftTimeout/2, t.recvTimeout, t.requestTimeout, t.drainTimeout)
	for _, r := range rows {
		if r.f.detail == "" {
			continue
		}
		fmt.Fprintf(w, "%s: fault -> %s p50 %s s, max %s s.\n", r.f.label, r.f.detail, cell(median(r.details)), cell(maxOf(r.details)))
	}
}

func (b *recoveryBench) plot(path string, rows []*recoveryRow, undisturbed []float64) error {
	var labels []string
	replan := barSeries{name: "fault -> re-plan"}
	done := barSeries{name: "fault -> done"}
	job := barSeries{name: "job with the fault"}
	und := barSeries{name: "job undisturbed"}
	for _, r := range rows {
		labels = append(labels, r.f.label)
		replan.values = append(replan.values, median(r.replan))
		done.values = append(done.values, median(r.done))
		job.values = append(job.values, median(r.job))
		und.values = append(und.values, median(undisturbed))
	}
	p := b.p
	title := fmt.Sprintf("recovery, %d workers, B=1 H=%d N=%d D=%d %s (medians of %d)", b.w, p.Hq, p.N, p.D, maskName(p.Mask.Causal), b.repeat)
	return writeBarsPNG(path, title, "seconds", labels, []barSeries{replan, done, job, und})
}
