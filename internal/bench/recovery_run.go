package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// recoveryBench is one run of `bench recovery`.
type recoveryBench struct {
	env     *Env
	w       int
	threads int
	t       recoveryTimings
	p       kernels.Params
	block   int
	repeat  int

	c          *localcluster.Cluster
	cl         *client.Client
	q, k, v    *tensor.Tensor
	want       []float32 // kernels.Attention of q, k, v
	kernelSecs float64

	mu     sync.Mutex
	epochs map[string][]time.Time // EPOCH_STARTED events by job: epochs[id][e-1] is when epoch e started
}

// recoveryRow are one fault's measurements over its runs.
type recoveryRow struct {
	f                  recoveryFault
	replan             []float64 // runs with a re-plan only
	done, job, details []float64
	epochs             []uint64
	diff               float64
}

func (b *recoveryBench) run(ctx context.Context, faults []recoveryFault, dir, binDir, png string) (err error) {
	out := b.env.Stdout
	progress := b.env.Stderr

	// The inputs and the reference output, computed once.
	r := testrand.New(1)
	h, n, d := b.p.Hq, b.p.N, b.p.D
	b.q = tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d)
	b.k = tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d)
	b.v = tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d)
	b.want = make([]float32, h*n*d)
	t0 := time.Now()
	if err := kernels.Attention(&b.p, b.q.Data, b.k.Data, b.v.Data, b.want, nil); err != nil {
		return err
	}
	b.kernelSecs = time.Since(t0).Seconds()

	// The cluster's directory: --dir, or a temporary one kept when the
	// bench fails (its logs say why).
	keep := dir != ""
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ringattn-bench-recovery-"); err != nil {
			return err
		}
	}
	remove := !keep // cleared when processes failed: their logs stay
	defer func() {
		if remove {
			os.RemoveAll(dir)
		}
	}()
	buildDir := filepath.Join(dir, "bin")
	if !keep {
		tmp, err := os.MkdirTemp("", "ringattn-bench-recovery-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		buildDir = tmp
	}
	if binDir == "" {
		fmt.Fprintln(progress, "bench recovery: locating the coordinator, worker and nats-server binaries...")
	}
	bins, how, err := localcluster.Locate(ctx, binDir, buildDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "bench recovery: binaries %s; starting 3 coordinators and %d workers in %s\n", how, b.w, dir)
	t := b.t
	b.c, err = localcluster.Start(ctx, localcluster.Config{Bin: bins, Dir: dir, Coordinators: 3, Workers: b.w,
		HeartbeatTimeout: t.heartbeatTimeout, RaftTimeout: t.raftTimeout, HeartbeatInterval: t.heartbeatInterval,
		RecvTimeout: t.recvTimeout, RequestTimeout: t.requestTimeout, DrainTimeout: t.drainTimeout,
		WorkerThreads: b.threads, WorkerGFLOPS: 1, LogLevel: "info"})
	if err != nil {
		remove = false
		fmt.Fprintf(progress, "bench recovery: the processes' logs are in %s\n", filepath.Join(dir, "logs"))
		return fmt.Errorf("starting the cluster: %w", err)
	}
	defer func() {
		if err != nil {
			remove = false
			b.c.Kill()
			fmt.Fprintf(progress, "bench recovery: cluster killed; the processes' logs are in %s\n", filepath.Join(dir, "logs"))
			return
		}
		if cerr := b.c.Close(); cerr != nil {
			fmt.Fprintf(progress, "bench recovery: stopping the cluster: %v\n", cerr)
		}
	}()

	cfg := b.c.NATSConfig("ringattn-bench-recovery")
	if b.cl, err = client.Connect(ctx, cfg, client.Options{RequestTimeout: 2 * time.Second}); err != nil {
		return err
	}
	defer b.cl.Close()
	cfg.Name = "ringattn-bench-recovery-events"
	events, err := transport.Dial(cfg, nil)
	if err != nil {
		return err
	}
	defer events.Close()
	b.epochs = map[string][]time.Time{}
	stopEvents, err := events.OnEvents("", transport.ServeConfig{}, b.onEvent)
	if err != nil {
		return err
	}
	defer stopEvents()
	flushCtx, cancelFlush := context.WithTimeout(ctx, 10*time.Second) // Flush needs a deadline
	defer cancelFlush()
	if err := events.Flush(flushCtx); err != nil {
		return err
	}

	// The undisturbed job, then each fault.
	var undisturbed []float64
	for i := range b.repeat {
		var st *pb.JobStatus
		var diff float64
		for try := 1; ; try++ {
			st, diff, err = b.plainJob(ctx)
			if err == nil {
				break
			}
			if !errors.Is(err, errRerun) || try == maxTries {
				return fmt.Errorf("undisturbed job %d: %w", i+1, err)
			}
			fmt.Fprintf(progress, "undisturbed run %d/%d: %v; running it again\n", i+1, b.repeat, err)
		}
		secs := jobSeconds(st)
		undisturbed = append(undisturbed, secs)
		fmt.Fprintf(progress, "undisturbed run %d/%d: job %s %.3f s in epoch %d on %v, max abs diff %.1e\n",
			i+1, b.repeat, st.GetId(), secs, st.GetEpoch(), st.GetWorkers(), diff)
	}
	var rows []*recoveryRow
	for _, f := range faults {
		row := &recoveryRow{f: f}
		for i := range b.repeat {
			// A run that does not measure what it should is run
			// again (the machine may be busy), up to maxTries times.
			for try := 1; ; try++ {
				err := b.faultedJob(ctx, row, i)
				if err == nil {
					break
				}
				if !errors.Is(err, errRerun) {
					return fmt.Errorf("%s run %d: %w", f.name, i+1, err)
				}
				if try == maxTries {
					return fmt.Errorf("%s run %d: %w (%d times: make the job bigger with --seq or --heads, or the machine less busy)", f.name, i+1, err, try)
				}
				fmt.Fprintf(progress, "%s run %d/%d: %v; running it again\n", f.name, i+1, b.repeat, err)
			}
		}
		rows = append(rows, row)
	}
	b.print(out, rows, undisturbed)
	if png != "" {
		if err := b.plot(png, rows, undisturbed); err != nil {
			return err
		}
		fmt.Fprintf(out, "\nplot: %s\n", png)
	}
	return nil
}

// onEvent records when each epoch of a job started.
func (b *recoveryBench) onEvent(ev *pb.JobEvent) {
	if ev.GetType() != pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e := int(ev.GetEpoch())
	if e < 1 || e > 1000 {
		return
	}
	ts := b.epochs[ev.GetJobId()]
	for len(ts) < e {
		ts = append(ts, time.Time{})
	}
	if ts[e-1].IsZero() {
		ts[e-1] = time.UnixMilli(ev.GetUnixMs())
	}
	b.epochs[ev.GetJobId()] = ts
}

// replannedAt is when the first epoch above `after` of job id started
// (zero when no EPOCH_STARTED event of one was seen).
func (b *recoveryBench) replannedAt(id string, after uint64) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	ts := b.epochs[id]
	for e := int(after) + 1; e <= len(ts); e++ {
		if !ts[e-1].IsZero() {
			return ts[e-1]
		}
	}
	return time.Time{}
}

func jobSeconds(st *pb.JobStatus) float64 {
	return float64(st.GetFinishedUnixMs()-st.GetStartedUnixMs()) / 1000
}

func (b *recoveryBench) submit(ctx context.Context) (*pb.JobStatus, error) {
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return b.cl.SubmitAttention(sctx, b.q, b.k, b.v, false, client.JobOptions{Causal: b.p.Mask.Causal, Block: b.block})
}

// plainJob runs the job without a fault.
func (b *recoveryBench) plainJob(ctx context.Context) (*pb.JobStatus, float64, error) {
	if err := b.waitQuiet(ctx); err != nil {
		return nil, 0, err
	}
	st, err := b.submit(ctx)
	if err != nil {
		return nil, 0, err
	}
	st, _, err = b.follow(ctx, st.GetId(), math.MaxUint64)
	if err != nil {
		return nil, 0, err
	}
	diff, err := b.check(ctx, st)
	if err == nil && (len(st.GetWorkers()) != b.w || st.GetEpoch() != 1) {
		err = fmt.Errorf("job %s finished in epoch %d on %v, not in epoch 1 on all %d workers: %w", st.GetId(), st.GetEpoch(), st.GetWorkers(), b.w, errRerun)
	}
	return st, diff, err
}

// faultedJob runs the job, injects row's fault mid-ring, measures the
// recovery, checks the output and restores the cluster.
func (b *recoveryBench) faultedJob(ctx context.Context, row *recoveryRow, i int) error {
	if err := b.waitQuiet(ctx); err != nil {
		return err
	}
	base := map[string]float64{}
	for _, w := range b.c.Workers() {
		if w.Running() {
			base[w.Name] = b.metric(ctx, w, "ringattn_worker_ring_step_seconds_count")
		}
	}
	st, err := b.submit(ctx)
	if err != nil {
		return err
	}
	id := st.GetId()
	st, victim, err := b.waitMidJob(ctx, id, base)
	if errors.Is(err, errRerun) {
		// No fault: the job still must finish exactly.
		fin, _, ferr := b.follow(ctx, id, math.MaxUint64)
		if ferr == nil {
			_, ferr = b.check(ctx, fin)
		}
		return cmp.Or(ferr, err)
	}
	if err != nil {
		return err
	}
	var leader *localcluster.Proc
	if row.f.leader {
		// The leader now (an election may have moved it).
		if leader, err = b.c.WaitLeader(ctx); err != nil {
			return err
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	run := &recoveryRun{b: b, victim: victim, leader: leader, at: time.Now()}
	type injected struct {
		secs float64
		err  error
	}
	injc := make(chan injected, 1)
	go func() {
		secs, err := row.f.inject(rctx, run)
		injc <- injected{secs, err}
	}()
	fin, polled, err := b.follow(rctx, id, st.GetEpoch())
	if err != nil {
		return err
	}
	inj := <-injc
	if inj.err != nil {
		return fmt.Errorf("injecting the fault: %w", inj.err)
	}
	diff, err := b.check(ctx, fin)
	if err != nil {
		return err
	}
	done := finishedAt(fin).Sub(run.at).Seconds()
	rp := b.replannedAt(id, st.GetEpoch())
	if rp.IsZero() {
		rp = polled // the event was missed (e.g. NATS was down): when the status showed it
	}
	replan := "no re-plan"
	if !rp.IsZero() {
		row.replan = append(row.replan, rp.Sub(run.at).Seconds())
		replan = fmt.Sprintf("re-plan %.3f s", rp.Sub(run.at).Seconds())
	}
	row.done = append(row.done, done)
	row.job = append(row.job, jobSeconds(fin))
	row.details = append(row.details, inj.secs)
	row.epochs = append(row.epochs, fin.GetEpoch())
	row.diff = max(row.diff, diff)
	fmt.Fprintf(b.env.Stderr, "%s run %d/%d: %s with %d/%d blocks done in epoch %d on %v (victim %s); %s, done %.3f s, job %.3f s in epoch %d on %v, max abs diff %.1e\n",
		row.f.name, i+1, b.repeat, row.f.label, st.GetBlocksDone(), st.GetBlocksTotal(), st.GetEpoch(), st.GetWorkers(), victim.Name,
		replan, done, jobSeconds(fin), fin.GetEpoch(), fin.GetWorkers(), diff)
	if err := row.f.restore(ctx, run); err != nil {
		return fmt.Errorf("restoring the cluster: %w", err)
	}
	return nil
}

func finishedAt(st *pb.JobStatus) time.Time { return time.UnixMilli(st.GetFinishedUnixMs()) }

// poll calls f every localcluster.PollInterval until it returns nil, for at
// most limit.
func poll(ctx context.Context, limit time.Duration, what string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return localcluster.Poll(ctx, localcluster.PollInterval, func() error { return f(ctx) }, what)
}

// errRerun marks a run that does not measure what it should (the fault
// came too late, the job was not planned on every worker, or an
// undisturbed job was re-planned): it is run again.
var errRerun = errors.New("not a clean run")
