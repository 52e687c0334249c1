// Command worker runs one ringattn worker: it connects to NATS, heartbeats
// to the coordinator leader, and computes the ranks it is assigned
// (DESIGN.md §3–§5). Configuration is by flags, each with a RINGATTN_*
// environment variable (the id is RINGATTN_WORKER_ID); SIGTERM (or SIGINT)
// drains the worker and exits 0, a second signal stops it at once.
//
//	worker --nats nats://127.0.0.1:4222 --id w1 --metrics-addr 127.0.0.1:9090
//	RINGATTN_NATS_URL=nats://nats:4222 RINGATTN_WORKER_ID=$POD_NAME worker --log-format json
//
// Exit codes: 0 after a drain (or --help, --version), 1 when the worker
// cannot start (store, metrics listener), 2 for bad flags or environment.
//
// Test-only fault injection (never set in production): RINGATTN_FAULT_STALL
// and RINGATTN_FAULT_PANIC hold a fault spec (worker.ParseFault), e.g.
// "epoch=1,step=1": a rank it picks stalls (the worker keeps heartbeating,
// the rank makes no progress until it is aborted) or panics inside its
// computation. System tests use them to exercise the leader's progress
// watchdog and the worker's panic containment in real processes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/ringattn/ringattn/internal/memtune"
	"github.com/ringattn/ringattn/internal/natsflags"
	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/transport"
)

// The test-only fault injections (see the package doc).
const (
	envFaultStall = natsflags.EnvPrefix + "FAULT_STALL"
	envFaultPanic = natsflags.EnvPrefix + "FAULT_PANIC"
)

// mem is what memtune put in effect, logged at start.
var mem memtune.Settings

func main() {
	mem = memtune.Apply()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// envName is the environment variable of a flag: RINGATTN_<FLAG>, with the
// worker's id as RINGATTN_WORKER_ID.
func envName(flagName string) string {
	if flagName == "id" {
		return natsflags.EnvPrefix + "WORKER_ID"
	}
	return natsflags.EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// config parses args (and the environment) into a worker.Config.
func config(args []string, stderr io.Writer) (cfg worker.Config, showVersion bool, logFormat, logLevel string, err error) {
	cfg = worker.DefaultConfig()
	cfg.Version = version()
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err = natsflags.RegisterFlags(fs, &cfg.NATS); err != nil {
		return cfg, false, "", "", err
	}
	own := flag.NewFlagSet("", flag.ContinueOnError)
	own.StringVar(&cfg.ID, "id", "", "worker id, a NATS subject token (default <hostname>-<pid>-<random>)")
	own.IntVar(&cfg.Slots, "slots", cfg.Slots, "ranks run at once")
	own.IntVar(&cfg.Threads, "threads", 0, "kernel goroutines per rank (0: GOMAXPROCS/slots)")
	own.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "heartbeat period")
	own.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "on SIGTERM, how long running shards may finish before they are abandoned")
	own.DurationVar(&cfg.RecvTimeout, "recv-timeout", cfg.RecvTimeout, "wait for a ring frame before fetching the block from the store")
	own.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "timeout of one heartbeat or report request")
	own.Float64Var(&cfg.GFLOPS, "gflops", 0, "kernel speed to report (0: measure at start)")
	own.Int64Var(&cfg.Limits.MaxJobBytes, "max-job-bytes", cfg.Limits.MaxJobBytes, "largest job accepted, in float32 bytes of inputs and outputs (as the coordinators')")
	own.Int64Var(&cfg.Limits.MaxTokens, "max-tokens", cfg.Limits.MaxTokens, "longest query or key sequence accepted (as the coordinators')")
	own.Int64Var(&cfg.Limits.MaxBlocks, "max-blocks", cfg.Limits.MaxBlocks, "most blocks per sequence accepted, ceil(N/block) (as the coordinators')")
	own.StringVar(&cfg.MetricsAddr, "metrics-addr", cfg.MetricsAddr, `HTTP address of /metrics, /healthz, /readyz ("off" disables)`)
	own.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	own.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	own.BoolVar(&showVersion, "version", false, "print the version and exit")
	var envErr error
	own.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		if v, ok := os.LookupEnv(env); ok && envErr == nil && f.Name != "version" {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s = %q: %v", env, v, err)
			}
		}
		if f.Name != "version" {
			f.Usage += " (env " + env + ")"
		}
		fs.Var(f.Value, f.Name, f.Usage)
	})
	if envErr != nil {
		return cfg, false, "", "", envErr
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: worker [flags]\n\nRuns one ringattn worker. SIGTERM drains it (exit 0).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err = fs.Parse(args); err != nil {
		return cfg, false, "", "", err
	}
	if fs.NArg() > 0 {
		return cfg, false, "", "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if cfg.Slots < 1 {
		return cfg, false, "", "", fmt.Errorf("--slots = %d: want >= 1", cfg.Slots)
	}
	if err := worker.CheckGFLOPS(cfg.GFLOPS); err != nil {
		return cfg, false, "", "", fmt.Errorf("--gflops = %v: %v", cfg.GFLOPS, err)
	}
	for _, f := range []struct {
		env string
		dst **worker.Fault
	}{{envFaultStall, &cfg.StallFault}, {envFaultPanic, &cfg.PanicFault}} {
		if *f.dst, err = worker.ParseFault(os.Getenv(f.env)); err != nil {
			return cfg, false, "", "", fmt.Errorf("%s: %v", f.env, err)
		}
	}
	return cfg, showVersion, logFormat, logLevel, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, showVersion, logFormat, logLevel, err := config(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "worker:", err)
		return 2
	}
	if showVersion {
		fmt.Fprintln(stdout, "ringattn worker", cfg.Version)
		return 0
	}
	logger, err := xlog.New(stderr, logFormat, logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "worker:", err)
		return 2
	}
	cfg.Logger = logger
	if mem.GCPercent != 0 {
		logger.Info("memory", "gogc", mem.GCPercent, "huge_pages", mem.HugePages)
	}
	if cfg.StallFault != nil || cfg.PanicFault != nil {
		logger.Warn("TEST FAULTS INJECTED: this worker stalls or panics on purpose",
			"stall", cfg.StallFault.String(), "panic", cfg.PanicFault.String())
	}
	if cfg.NATS.Name == transport.DefaultName {
		cfg.NATS.Name = "ringattn-worker"
	}
	w, err := worker.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "worker:", err)
		return 2
	}

	sig, stopSig := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stopSig()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	select {
	case err := <-errc:
		if err != nil {
			logger.Error("worker failed", "err", err)
			return 1
		}
		return 0
	case <-sig.Done():
	}
	stopSig() // a second signal now ends the process the default way
	logger.Info("signal received: draining", "timeout", cfg.DrainTimeout)
	dctx, dcancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	w.Drain(dctx)
	dcancel()
	if err := <-errc; err != nil {
		logger.Error("worker failed", "err", err)
		return 1
	}
	return 0
}
