package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
)

// benchLoad starts a multi-process local cluster (like `ringattn cluster`),
// drives many concurrent clients' jobs into it while process faults hit
// it, checks every job and prints the outcome as Markdown tables.
func benchLoad(env *Env, args []string) error {
	fs := newFlags(env, "bench load", "[--clients 50] [--jobs 3000] [--large 20] [--faults all] [--workers 4] [--dir D] [--bin DIR]")
	clients := fs.Int("clients", 50, "concurrent `clients`, each with its own NATS connection")
	jobs := fs.Int("jobs", 3000, "small `jobs` (1..4 blocks of 64 tokens, D = 32)")
	large := fs.Int("large", 20, "larger `jobs` (N = 1536, 4 heads, D = 64: about 1.6 GFLOP each), interleaved with the small ones")
	faultsF := fs.String("faults", "all", "`faults` injected, spread over the run: all, none or a comma list of worker-kill, worker-term, leader-kill, nats-restart")
	workers := fs.Int("workers", 4, "number of `W` worker processes (>= 3: two worker faults leave one, until replacements join)")
	threads := fs.Int("threads", 1, "kernel goroutines per worker")
	timeout := fs.Duration("timeout", 30*time.Minute, "bound on the whole bench")
	jobTTL := fs.Duration("job-ttl", time.Minute, "the coordinators' --job-ttl: finished jobs expire after this `duration` (more than a client takes to fetch outputs under the load)")
	sweepGrace := fs.Duration("sweep-grace", time.Minute, "the coordinators' --sweep-grace: orphaned uploads are swept once this `old` (more than an upload-to-submit under the load)")
	raftTimeout := fs.Duration("raft-timeout", time.Second, "the coordinators' Raft heartbeat and election `timeout` (leader lease: half); short ones churn leaders on a saturated machine")
	dir := fs.String("dir", "", "`directory` of the cluster's data and logs, kept (default: a temporary one, removed unless the bench fails)")
	binDir := fs.String("bin", "", localcluster.BinFlagUsage)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, `Usage: ringattn bench load [flags]

Starts a local multi-process cluster (a NATS server, 3 Raft coordinators and W
workers, each its own OS process) with short fault-detection timings and
short job and upload lifetimes (--job-ttl, --sweep-grace), then --clients clients submit
--jobs small and --large larger attention jobs with idempotency keys, each
submit sent twice with the same key (a client retrying after a lost reply).
Meanwhile the --faults hit, in this order, spread over the run:
  worker-kill   SIGKILL a worker running a shard (a new worker replaces it)
  worker-term   SIGTERM a worker running a shard: it drains, must exit 0 (replaced)
  leader-kill   SIGKILL the coordinator leader while jobs run (restarted after)
  nats-restart  SIGKILL the NATS server while jobs run, start it again at once
Every client waits for its job and checks its outputs against a float64
reference. Afterwards: every key names exactly one job, no job is announced
finished twice, every job record and store namespace expires, and every
process that ran throughout is back at its idle goroutines and RSS.

Prints the outcome as Markdown: jobs, clients, faults, successes, refusals,
duplicates, lost, throughput, p50/p99 latency; per fault how long no job
finished (stall) and how long the jobs in flight took to finish (recovery);
per process goroutines and RSS. Exits non-zero when a guarantee failed.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(env, fs, args); err != nil {
		return err
	}
	switch {
	case *clients < 1 || *clients > 1000:
		return usagef("--clients = %d, expected 1..1000", *clients)
	case *jobs < 0 || *large < 0 || *jobs+*large < 1 || *jobs+*large > 1_000_000:
		return usagef("--jobs = %d and --large = %d, expected >= 0 each and 1..1000000 in all", *jobs, *large)
	case *workers < 3 || *workers > 64:
		return usagef("--workers = %d, expected 3..64", *workers)
	case *threads < 1:
		return usagef("--threads = %d, expected >= 1", *threads)
	case *timeout <= 0:
		return usagef("--timeout = %v, expected > 0", *timeout)
	case *jobTTL < time.Second:
		return usagef("--job-ttl = %v, expected >= 1s", *jobTTL)
	case *sweepGrace < time.Second:
		return usagef("--sweep-grace = %v, expected >= 1s", *sweepGrace)
	case *raftTimeout < 50*time.Millisecond:
		return usagef("--raft-timeout = %v, expected >= 50ms", *raftTimeout)
	}
	faults, err := localcluster.ParseLoadFaults(*faultsF)
	if err != nil {
		return usagef("--faults = %q, expected all, none or a comma list of worker-kill, worker-term, leader-kill, nats-restart", *faultsF)
	}

	ctx, cancel := signalContext()
	defer cancel()
	keep := *dir != ""
	if !keep {
		if *dir, err = os.MkdirTemp("", "ringattn-bench-load-"); err != nil {
			return err
		}
	}
	remove := !keep
	defer func() {
		if remove {
			os.RemoveAll(*dir)
		}
	}()
	buildDir := filepath.Join(*dir, "bin")
	if !keep {
		tmp, err := os.MkdirTemp("", "ringattn-bench-load-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		buildDir = tmp
	}
	progress := env.Stderr
	bins, how, err := localcluster.Locate(ctx, *binDir, buildDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "bench load: binaries %s; starting 3 coordinators and %d workers in %s\n", how, *workers, *dir)
	logger := slog.New(slog.NewTextHandler(progress, &slog.HandlerOptions{Level: slog.LevelInfo}))
	c, err := localcluster.Start(ctx, localcluster.Config{Bin: bins, Dir: *dir, Coordinators: 3, Workers: *workers,
		HeartbeatTimeout: 1500 * time.Millisecond, RaftTimeout: *raftTimeout, HeartbeatInterval: 200 * time.Millisecond,
		RecvTimeout: 2 * time.Second, RequestTimeout: time.Second, DrainTimeout: 10 * time.Second,
		WorkerThreads: *threads, WorkerGFLOPS: 1, LogLevel: "info", CoordinatorArgs: localcluster.LoadCoordinatorArgs(*jobTTL, *sweepGrace)})
	if err != nil {
		remove = false
		fmt.Fprintf(progress, "bench load: the processes' logs are in %s\n", filepath.Join(*dir, "logs"))
		return fmt.Errorf("starting the cluster: %w", err)
	}
	rctx, rcancel := context.WithTimeout(ctx, *timeout)
	defer rcancel()
	fmt.Fprintf(progress, "bench load: %d clients, %d small and %d large jobs, faults %v\n", *clients, *jobs, *large, faults)
	start := time.Now()
	rep, err := localcluster.RunLoad(rctx, c, localcluster.LoadConfig{Clients: *clients, Small: *jobs, Large: *large, Faults: faults,
		Logger: logger, JobTimeout: 10 * time.Minute, ExpiryTimeout: *jobTTL + *sweepGrace + 2*time.Minute})
	if err != nil {
		remove = false
		c.Kill()
		fmt.Fprintf(progress, "bench load: cluster killed; the processes' logs are in %s\n", filepath.Join(*dir, "logs"))
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		return err
	}
	if cerr := c.Close(); cerr != nil {
		fmt.Fprintf(progress, "bench load: stopping the cluster: %v\n", cerr)
	}
	fmt.Fprintf(env.Stdout, "## ringattn bench load (%v, %d workers)\n\n%s", time.Since(start).Round(time.Second), *workers, rep.Markdown())
	if len(rep.Problems) > 0 || rep.Duplicates > 0 || rep.Lost > 0 {
		remove = false
		fmt.Fprintf(progress, "bench load: the processes' logs are in %s\n", filepath.Join(*dir, "logs"))
		return fmt.Errorf("%d guarantees failed (duplicates %d, lost %d): see Problems above", len(rep.Problems), rep.Duplicates, rep.Lost)
	}
	return nil
}
