// Command coordinator runs one member of the ringattn control plane: a
// Raft-replicated job queue and scheduler (internal/coordinator). It only
// turns flags and RINGATTN_* environment variables into a
// coordinator.Config and runs it until SIGINT/SIGTERM.
//
//	coordinator --node-id c0 --raft-addr 10.0.0.1:7000 \
//	    --peers c0=10.0.0.1:7000,c1=10.0.0.2:7000,c2=10.0.0.3:7000 \
//	    --data-dir /var/lib/ringattn --nats nats://nats:4222
//	coordinator --node-id dev --bootstrap     # a single-node cluster
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

	"github.com/ringattn/ringattn/internal/coordinator"
	"github.com/ringattn/ringattn/internal/metrics"
	"github.com/ringattn/ringattn/internal/natsflags"
	"github.com/ringattn/ringattn/internal/xlog"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3").
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	os.Exit(code)
}

// envName is the environment variable of a flag: --job-ttl -> RINGATTN_JOB_TTL.
func envName(flagName string) string {
	return natsflags.EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// run runs the coordinator until ctx ends and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	cfg := coordinator.DefaultConfig()
	cfg.Version = buildVersion()
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		peers, logFormat, logLevel string
		showVersion                bool
	)
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "unique name of this coordinator in the Raft cluster (required)")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "host:port the Raft transport binds")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", cfg.RaftAdvertise, "host:port peers reach this node at (default --raft-addr)")
	fs.StringVar(&cfg.RaftTLSCA, "raft-tls-ca", "", "CA bundle verifying the other coordinators' Raft certificates (turns Raft mutual TLS on)")
	fs.StringVar(&cfg.RaftTLSCert, "raft-tls-cert", "", "this coordinator's Raft certificate (re-read when it changes)")
	fs.StringVar(&cfg.RaftTLSKey, "raft-tls-key", "", "this coordinator's Raft private key (re-read when it changes)")
	fs.StringVar(&cfg.RaftTLSServerName, "raft-tls-server-name", "", "name every coordinator's Raft certificate carries (default: verify the peer's host)")
	fs.StringVar(&peers, "peers", "", "static cluster members id=host:port,... (every node gets the same list)")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", cfg.Bootstrap, "start a single-node cluster when there are no --peers")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the Raft log and snapshots; restarting with it rejoins")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "ops HTTP address (/metrics, /healthz, /readyz, /v1/...); empty disables")
	fs.StringVar(&cfg.HTTPAdvertise, "http-advertise", cfg.HTTPAdvertise,
		"host:port others reach --http-addr at (default --http-addr); followers' status pages link the leader's")
	fs.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", cfg.HeartbeatTimeout, "a worker silent this long is dead and its shards re-planned")
	fs.DurationVar(&cfg.AssignTimeout, "assign-timeout", cfg.AssignTimeout, "how long a worker has to accept an assignment")
	fs.DurationVar(&cfg.JobTTL, "job-ttl", cfg.JobTTL, "finished jobs expire (records and tensors deleted) after this")
	fs.DurationVar(&cfg.TombstoneTTL, "tombstone-ttl", cfg.TombstoneTTL, "expired jobs' tombstones are purged after this")
	fs.IntVar(&cfg.MaxEpochs, "max-epochs", cfg.MaxEpochs, "a job re-planned this many times fails")
	fs.DurationVar(&cfg.PlanTimeout, "plan-timeout", cfg.PlanTimeout, "a job whose plan takes longer than this fails")
	fs.DurationVar(&cfg.ProgressTimeout, "progress-timeout", cfg.ProgressTimeout,
		"a rank whose progress stalls this long (or 10 of its expected steps, if longer) is re-planned")
	fs.DurationVar(&cfg.SweepGrace, "sweep-grace", cfg.SweepGrace, "upload namespaces no job references are deleted once this old")
	fs.DurationVar(&cfg.SweepInterval, "sweep-interval", cfg.SweepInterval, "how often the leader sweeps unreferenced upload namespaces")
	fs.IntVar(&cfg.MaxVerifyTries, "max-verify-tries", cfg.MaxVerifyTries,
		"a job whose outputs are missing from the store (or differ from their report) after this many re-plans fails")
	fs.IntVar(&cfg.Limits.MaxQueued, "max-queued", cfg.Limits.MaxQueued, "most jobs QUEUED at once")
	fs.IntVar(&cfg.MaxActivePerTenant, "max-active-per-tenant", cfg.MaxActivePerTenant,
		"most jobs one tenant has QUEUED or RUNNING at once (0 = no limit)")
	fs.StringVar(&cfg.OpsToken, "ops-token", cfg.OpsToken,
		"bearer token the HTTP endpoints showing jobs (/, /v1/jobs) require; prefer RINGATTN_OPS_TOKEN (without it they are closed when tenants are enforced)")
	fs.DurationVar(&cfg.MinRankTime, "min-rank-time", cfg.MinRankTime,
		"gang sizing: a job gets no more ranks than keep each busy at least this long at the workers' measured speed (0 = as many as it has blocks)")
	fs.BoolVar(&cfg.EnforceTenants, "enforce-tenants", cfg.EnforceTenants,
		"hold API callers to their subject's tenant even without NATS credentials (on whenever credentials are set)")
	fs.IntVar(&cfg.Limits.MaxConcurrentRequests, "max-concurrent-requests", cfg.Limits.MaxConcurrentRequests,
		"most client API requests handled at once; more are answered BUSY with a retry-after")
	fs.IntVar(&cfg.Limits.MaxConcurrentReports, "max-concurrent-reports", cfg.Limits.MaxConcurrentReports,
		"most worker reports handled at once; more are answered RETRY")
	fs.Int64Var(&cfg.Limits.MaxJobBytes, "max-job-bytes", cfg.Limits.MaxJobBytes, "largest job, in float32 bytes of inputs and outputs")
	fs.Int64Var(&cfg.Limits.MaxTokens, "max-tokens", cfg.Limits.MaxTokens, "longest query or key sequence")
	fs.Int64Var(&cfg.Limits.MaxBlocks, "max-blocks", cfg.Limits.MaxBlocks, "most blocks per sequence, ceil(N/block)")
	fs.DurationVar(&cfg.RaftHeartbeatTimeout, "raft-heartbeat-timeout", cfg.RaftHeartbeatTimeout, "Raft heartbeat timeout")
	fs.DurationVar(&cfg.RaftElectionTimeout, "raft-election-timeout", cfg.RaftElectionTimeout, "Raft election timeout")
	fs.DurationVar(&cfg.RaftLeaderLeaseTimeout, "raft-leader-lease-timeout", cfg.RaftLeaderLeaseTimeout, "Raft leader lease (<= heartbeat timeout)")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	if err := natsflags.RegisterFlags(fs, &cfg.NATS); err != nil {
		fmt.Fprintln(stderr, "coordinator:", err)
		return 2
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: coordinator --node-id ID [flags]\n\nEvery flag has an environment variable RINGATTN_<FLAG> (e.g. RINGATTN_NODE_ID).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	// Environment first, so the command line overrides it.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := lookup(envName(f.Name)); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s = %q: %v", envName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		fmt.Fprintln(stderr, "coordinator:", envErr)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "coordinator: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if showVersion {
		fmt.Fprintln(stdout, "coordinator", cfg.Version)
		return 0
	}
	log, err := xlog.New(stderr, logFormat, logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "coordinator:", err)
		return 2
	}
	if peers != "" {
		if cfg.Peers, err = coordinator.ParsePeers(peers); err != nil {
			fmt.Fprintln(stderr, "coordinator:", err)
			return 2
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "coordinator:", err)
		return 2
	}
	reg := metrics.NewRegistry()
	c, err := coordinator.New(cfg, coordinator.Deps{Logger: log, Registerer: reg, Gatherer: reg})
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	log.Info("coordinator running", "node", cfg.NodeID, "raft", cfg.RaftAddr, "http", c.HTTPAddr(), "version", cfg.Version)
	<-ctx.Done()
	log.Info("shutting down")
	if err := c.Close(); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	return 0
}
