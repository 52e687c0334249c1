package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/kernels"
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
func benchRecovery(env *Env, args []string) error {
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
	binDir := fs.String("bin", "", localcluster.BinFlagUsage)
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
`, Tolerance)
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
		return UsageError{err}
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
