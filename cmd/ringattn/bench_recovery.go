package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// recoveryTimings are the fault-detection settings of the recovery bench's
// cluster: short, like testenv's system tests, so that recovery is
// measured in seconds.
type recoveryTimings struct {
	heartbeatTimeout  time.Duration // coordinator: a worker silent this long is dead
	heartbeatInterval time.Duration // worker: heartbeat period
	raftTimeout       time.Duration // coordinator: Raft heartbeat and election timeouts (lease: half)
	recvTimeout       time.Duration // worker: wait for a ring frame before reading the block from the store
	requestTimeout    time.Duration // worker: heartbeat and report requests
	drainTimeout      time.Duration // worker: SIGTERM drain
}

// recoveryJobTimeout bounds one job of the recovery bench, fault included.
const recoveryJobTimeout = 5 * time.Minute

// maxTries bounds the attempts at one run (see errRerun).
const maxTries = 3

// recoveryRun is one faulted job: what the fault acts on.
type recoveryRun struct {
	b      *recoveryBench
	victim *localcluster.Proc // a worker of the job (rank 1, or rank 0 of a 1-rank plan)
	leader *localcluster.Proc // the coordinator leader (set for faults with leader)
	at     time.Time          // when the fault was injected
}

// recoveryFault is a fault `bench recovery` injects into a running job.
type recoveryFault struct {
	name  string // --faults item
	label string // table row
	// detail names what inject's returned time measures ("" when it
	// returns none).
	detail string
	// leader: the fault acts on the leader (recoveryRun.leader is set).
	leader bool
	// inject injects the fault (at r.at) and returns the fault's detail
	// time in seconds (NaN when it has none). It runs while the job is
	// followed, so it may wait for the cluster's reaction.
	inject func(ctx context.Context, r *recoveryRun) (float64, error)
	// restore brings the cluster back to W live, idle workers and every
	// coordinator running, after the job finished.
	restore func(ctx context.Context, r *recoveryRun) error
}

func recoveryFaults(t recoveryTimings) []recoveryFault {
	none := func(context.Context, *recoveryRun) error { return nil }
	addWorker := func(ctx context.Context, r *recoveryRun) error {
		_, err := r.b.c.AddWorker(ctx)
		return err
	}
	return []recoveryFault{
		{
			name: "worker-kill", label: "worker SIGKILL",
			inject: func(_ context.Context, r *recoveryRun) (float64, error) {
				return math.NaN(), r.victim.Kill()
			},
			restore: addWorker,
		},
		{
			name: "worker-stop", label: "worker SIGSTOP (hung)",
			inject: func(_ context.Context, r *recoveryRun) (float64, error) {
				return math.NaN(), r.victim.Stop()
			},
			// The continued worker ends its stale shard and is live again.
			restore: func(ctx context.Context, r *recoveryRun) error {
				if err := r.victim.Cont(); err != nil {
					return err
				}
				return r.b.waitWorkersIdle(ctx, r.victim)
			},
		},
		{
			name: "leader-kill", label: "leader SIGKILL", detail: "a new leader elected (its /v1/cluster names itself)", leader: true,
			inject: func(ctx context.Context, r *recoveryRun) (float64, error) {
				if err := r.leader.Kill(); err != nil {
					return math.NaN(), err
				}
				// Each survivor's own view over HTTP: no API request
				// waits for a leader here.
				err := poll(ctx, time.Minute, "a new leader", func(ctx context.Context) error {
					for _, p := range r.b.c.Coordinators {
						if p == r.leader || !p.Running() {
							continue
						}
						if ci, err := r.b.c.ClusterInfo(ctx, p); err == nil && ci.GetLeaderId() == p.Name {
							return nil
						}
					}
					return errors.New("no coordinator is leader")
				})
				if err != nil {
					return math.NaN(), err
				}
				return time.Since(r.at).Seconds(), nil
			},
			// The old leader comes back with its data and ports.
			restore: func(ctx context.Context, r *recoveryRun) error {
				return r.b.c.RestartAndWait(ctx, r.leader)
			},
		},
		{
			name: "nats-kill", label: "NATS SIGKILL + restart", detail: "NATS serving JetStream again",
			inject: func(ctx context.Context, r *recoveryRun) (float64, error) {
				nc := r.b.c.NATS
				if err := nc.Kill(); err != nil {
					return math.NaN(), err
				}
				if err := r.b.c.RestartAndWait(ctx, nc); err != nil {
					return math.NaN(), err
				}
				return time.Since(r.at).Seconds(), nil
			},
			restore: none,
		},
		{
			name: "worker-term", label: "worker SIGTERM (drain)", detail: "the worker drained and exited 0",
			inject: func(_ context.Context, r *recoveryRun) (float64, error) {
				ps, err := r.victim.Terminate(t.drainTimeout + 5*time.Second)
				if err != nil {
					return math.NaN(), err
				}
				if ps.ExitCode() != 0 {
					return math.NaN(), fmt.Errorf("%s exited with %v after SIGTERM, expected 0 after its drain (see %s)", r.victim.Name, ps, r.victim.LogPath)
				}
				return time.Since(r.at).Seconds(), nil
			},
			restore: addWorker,
		},
	}
}

// parseFaults reads --faults: "all" or a comma list of fault names.
func parseFaults(s string, all []recoveryFault) ([]recoveryFault, error) {
	if strings.TrimSpace(s) == "all" {
		return all, nil
	}
	var names []string
	for _, f := range all {
		names = append(names, f.name)
	}
	var out []recoveryFault
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		i := slices.IndexFunc(all, func(f recoveryFault) bool { return f.name == item })
		if i < 0 {
			return nil, usagef("--faults item %q, expected all or a comma list of %s", item, strings.Join(names, ", "))
		}
		if !slices.ContainsFunc(out, func(f recoveryFault) bool { return f.name == item }) {
			out = append(out, all[i])
		}
	}
	return out, nil
}

// benchRecovery starts a multi-process local cluster (like `ringattn
// cluster`), injects real process faults into running jobs and prints
// how long the cluster takes to recover, as a Markdown table.
func benchRecovery(env *cliEnv, args []string) error {
	fs := newFlags(env, "bench recovery", "[--workers 3] [--seq 8192] [--dim 64] [--heads 8] [--mask causal] [--block 512] [--repeat 3] [--faults all] [--png FILE] [--dir D] [--bin DIR]")
	def := recoveryTimings{heartbeatTimeout: 1500 * time.Millisecond, heartbeatInterval: 200 * time.Millisecond,
		raftTimeout: 300 * time.Millisecond, recvTimeout: 2 * time.Second, requestTimeout: time.Second, drainTimeout: 10 * time.Second}
	workers := fs.Int("workers", 3, "number of `W` worker processes (>= 2: a worker fault leaves W-1 to finish the job)")
	seq := fs.Int("seq", 8192, "sequence `length` N = Nk of the job (big enough to be mid-ring when the fault hits)")
	dim := fs.Int("dim", 64, "head `dim` D")
	heads := fs.Int("heads", 8, "heads `H` (B = 1, Hq = Hkv = H)")
	mask := fs.String("mask", "causal", "the job's mask: none or causal")
	block := fs.Int("block", 512, "tokens per block")
	repeat := fs.Int("repeat", 3, "faulted jobs per fault kind (and undisturbed jobs); medians and maxima are reported")
	faultsF := fs.String("faults", "all", "comma-separated `faults` to inject (see above), or all")
	png := fs.String("png", "", "also plot the median times to this `file` (.png, .svg or .pdf)")
	dir := fs.String("dir", "", "`directory` of the cluster's data and logs, kept (default: a temporary one, removed unless the bench fails)")
	binDir := binFlag(fs)
	threads := fs.Int("threads", 0, "kernel goroutines per worker (0: the cores divided among the workers)")
	t := def
	fs.DurationVar(&t.heartbeatTimeout, "heartbeat-timeout", def.heartbeatTimeout, "the coordinators declare a worker dead after this `duration` of silence")
	fs.DurationVar(&t.heartbeatInterval, "heartbeat-interval", def.heartbeatInterval, "the workers' heartbeat `period`")
	fs.DurationVar(&t.raftTimeout, "raft-timeout", def.raftTimeout, "the coordinators' Raft heartbeat and election `timeout` (leader lease: half)")
	fs.DurationVar(&t.recvTimeout, "recv-timeout", def.recvTimeout, "a rank waits this `duration` for a ring frame before reading the block from the store")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, `Usage: ringattn bench recovery [flags]

Starts a local multi-process cluster like 'ringattn cluster' (a NATS server,
3 Raft coordinators and W workers, each its own OS process) with short
fault-detection timings, then for each fault kind and --repeat times: submits
an attention job, waits until it is mid-ring (a worker of the job has computed
a ring step and still runs its shard), injects the fault and measures
  re-plan  fault -> the leader starts a new epoch of the job (when it does),
  done     fault -> the job SUCCEEDED (the leader's finished time),
  job      the faulted job's started -> finished time,
next to the same job undisturbed. Every output is checked against
kernels.Attention in this process (max |diff| <= %g; more is an error). The
cluster is restored between runs: a killed leader is restarted, a killed or
drained worker replaced by a new one, a stopped worker continued. A run that
does not measure a mid-ring fault on all W workers (the job was too quick, or
planned on fewer workers) is run again, up to 3 times.

Faults (--faults):
  worker-kill  SIGKILL a worker of the job (rank 1)
  worker-stop  SIGSTOP it (a hang: connections open, no heartbeats); SIGCONT after the job
  leader-kill  SIGKILL the coordinator leader; restarted after the job
  nats-kill    SIGKILL the NATS server and restart it at once (same port, same JetStream store)
  worker-term  SIGTERM a worker of the job: it tells the leader it is leaving and drains

Prints a Markdown table (medians and maxima over the runs); --png plots the
medians. Ctrl-C stops the bench and kills the cluster.

Flags:
`, benchTolerance)
		fs.PrintDefaults()
	}
	if err := parse(env, fs, args); err != nil {
		return err
	}
	switch {
	case *workers < 2 || *workers > 64:
		return usagef("--workers = %d, expected 2..64 (a worker fault leaves W-1 workers to finish the job)", *workers)
	case *seq < 1:
		return usagef("--seq = %d, expected >= 1", *seq)
	case *dim < 1:
		return usagef("--dim = %d, expected >= 1", *dim)
	case *heads < 1:
		return usagef("--heads = %d, expected >= 1", *heads)
	case *block < 1:
		return usagef("--block = %d, expected >= 1", *block)
	case *repeat < 1:
		return usagef("--repeat = %d, expected >= 1", *repeat)
	case *threads < 0:
		return usagef("--threads = %d, expected >= 0", *threads)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"heartbeat-timeout", t.heartbeatTimeout}, {"heartbeat-interval", t.heartbeatInterval},
		{"raft-timeout", t.raftTimeout}, {"recv-timeout", t.recvTimeout}} {
		if d.v <= 0 {
			return usagef("--%s = %v, expected > 0", d.flag, d.v)
		}
	}
	if t.heartbeatInterval >= t.heartbeatTimeout {
		return usagef("--heartbeat-interval = %v, expected < --heartbeat-timeout (%v)", t.heartbeatInterval, t.heartbeatTimeout)
	}
	causals, err := parseMasks(*mask)
	if err != nil {
		return err
	}
	if len(causals) != 1 {
		return usagef("--mask = %q, expected one mask: none or causal", *mask)
	}
	faults, err := parseFaults(*faultsF, recoveryFaults(t))
	if err != nil {
		return err
	}
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: *heads, Hkv: *heads, D: *dim}, N: *seq, Nk: *seq, Mask: kernels.Mask{Causal: causals[0]}}
	if err := p.Validate(); err != nil {
		return usageError{err}
	}
	if *threads == 0 {
		*threads = max(1, runtime.NumCPU() / *workers)
	}

	ctx, cancel := signalContext()
	defer cancel()
	b := &recoveryBench{env: env, w: *workers, threads: *threads, t: t, p: p, block: *block, repeat: *repeat}
	err = b.run(ctx, faults, *dir, *binDir, *png)
	if err != nil && ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return err
}

// recoveryBench is one run of `bench recovery`.
type recoveryBench struct {
	env     *cliEnv
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
	out := b.env.stdout
	progress := b.env.stderr

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
	nc, err := transport.Connect(cfg, nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	b.epochs = map[string][]time.Time{}
	if _, err := nc.Subscribe(cfg.Subjects().AllJobEvents(), b.onEvent); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
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
func (b *recoveryBench) onEvent(m *nats.Msg) {
	var ev pb.JobEvent
	if proto.Unmarshal(m.Data, &ev) != nil || ev.GetType() != pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED {
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
	fmt.Fprintf(b.env.stderr, "%s run %d/%d: %s with %d/%d blocks done in epoch %d on %v (victim %s); %s, done %.3f s, job %.3f s in epoch %d on %v, max abs diff %.1e\n",
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
// local kernel's; it returns max |diff| and an error above benchTolerance.
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
	if !(diff <= benchTolerance) {
		return diff, fmt.Errorf("job %s (epoch %d on %v): output differs from kernels.Attention by %g (> %g)",
			st.GetId(), st.GetEpoch(), st.GetWorkers(), diff, benchTolerance)
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
