package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
)

// runCluster runs a multi-process local cluster in the foreground (DESIGN
// §6): a NATS server, coordinators and workers, each its own OS process
// with its own log file, until Ctrl-C stops them (workers drain first).
//
// The binaries (coordinator, worker, nats-server) come from --bin DIR;
// otherwise, inside a source checkout with the go command installed, they
// are built from it (into DIR/bin with --dir); otherwise they are looked
// for next to this executable, then in $PATH.
func runCluster(env *cliEnv, args []string) error {
	fs := newFlags(env, "cluster", "[--coordinators 3] [--workers W] [--dir D] [--nats-port P] [--http ADDR] [--bin DIR] [--auth [--tenants T1,T2] [--tenant-quota BYTES]]")
	coords := fs.Int("coordinators", 3, "number of `N` coordinators (Raft members; 1, 3 or 5 make sense)")
	workers := fs.Int("workers", 3, "number of `W` workers")
	dir := fs.String("dir", "", "`directory` of the data (JetStream, Raft), logs and binaries; kept on exit and reused by the next run (default: a temporary one, removed on exit)")
	natsPort := fs.Int("nats-port", 4222, "NATS client `port` on 127.0.0.1 (0: a free port)")
	threads := fs.Int("threads", 0, "kernel goroutines per worker (0: the cores divided among the workers)")
	gflops := fs.Float64("gflops", 0, "kernel `speed` in GFLOP/s every worker reports; plans weight ranks by it (0: measured once here, as the workers share this machine's cores — measured by each at once it is noise)")
	binDir := fs.String("bin", "", localcluster.BinFlagUsage)
	hbTimeout := fs.Duration("heartbeat-timeout", 0, "a worker silent this `long` is dead (0: the coordinator's default, 3s)")
	logLevel := fs.String("log-level", "info", "log level of every process: debug, info, warn, error")
	httpAddr := fs.String("http", gateway.DefaultAddr, "`address` of the HTTP job API served for the cluster (\"off\": none)")
	token := fs.String("token", os.Getenv("RINGATTN_GATEWAY_TOKEN"), "bearer `token` the HTTP job API requires (env RINGATTN_GATEWAY_TOKEN)")
	auth := fs.Bool("auth", false, "roles on: an nkey per identity (coordinators, each worker, a client per tenant, admin) in DIR/auth, each allowed only its role's subjects, and Raft mutual TLS between the coordinators (certificates in DIR/tls)")
	tenants := fs.String("tenants", "", "with --auth: client `tenants` besides \"default\", comma-separated")
	quota := fs.String("tenant-quota", "0", "with --auth: each tenant's stored tensor `bytes` (KiB/MiB/GiB suffixes; 0 = unlimited)")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	tenantList, quotaBytes, err := parseTenantFlags(*auth, *tenants, *quota)
	if err != nil {
		return err
	}
	if *httpAddr != "off" {
		if err := gateway.CheckBind(*httpAddr, *token, false); err != nil {
			return usagef("--http: %v", err)
		}
	}
	switch {
	case *coords < 1 || *coords > 9:
		return usagef("--coordinators = %d, expected 1..9", *coords)
	case *workers < 1 || *workers > 64:
		return usagef("--workers = %d, expected 1..64", *workers)
	case *natsPort < 0 || *natsPort > 65535:
		return usagef("--nats-port = %d, expected 0..65535", *natsPort)
	case *threads < 0:
		return usagef("--threads = %d, expected >= 0", *threads)
	case *gflops < 0 || *gflops != *gflops:
		return usagef("--gflops = %v, expected >= 0", *gflops)
	case *hbTimeout < 0:
		return usagef("--heartbeat-timeout = %v, expected >= 0", *hbTimeout)
	}
	switch *logLevel {
	case "debug", "info", "warn", "error":
	default:
		return usagef("--log-level = %q, expected debug, info, warn or error", *logLevel)
	}
	if *threads == 0 {
		*threads = max(1, runtime.NumCPU() / *workers)
	}
	if *gflops == 0 {
		gf, err := worker.MeasureGFLOPS(context.Background(), 150*time.Millisecond, *threads)
		if err != nil {
			return fmt.Errorf("measuring the kernel: %w", err)
		}
		*gflops = gf
	}

	// The first Ctrl-C (or SIGTERM) stops the cluster in order; a second
	// one kills what is left.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-sig:
			cancel()
		case <-ctx.Done():
		}
	}()

	buildDir := ""
	if *dir != "" {
		buildDir = filepath.Join(*dir, "bin")
	} else {
		tmp, err := os.MkdirTemp("", "ringattn-cluster-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		buildDir = tmp
	}
	if *binDir == "" {
		fmt.Fprintln(env.stdout, "ringattn cluster: locating the coordinator, worker and nats-server binaries...")
	}
	bins, how, err := localcluster.Locate(ctx, *binDir, buildDir)
	if err != nil {
		return err
	}
	start := time.Now()
	c, err := localcluster.Start(ctx, localcluster.Config{Bin: bins, Dir: *dir, Coordinators: *coords, Workers: *workers,
		NATSPort: *natsPort, WorkerThreads: *threads, WorkerGFLOPS: *gflops, HeartbeatTimeout: *hbTimeout, LogLevel: *logLevel,
		Auth: *auth, Tenants: tenantList, TenantQuota: quotaBytes})
	if err != nil {
		return fmt.Errorf("starting the cluster: %w", err)
	}
	leader, _ := c.Leader(ctx)
	printCluster(env.stdout, c, how, leader, time.Since(start))
	if creds := c.Credentials(); creds != nil {
		printDevAuth(env.stdout, c.URL(), creds, *dir == "")
		fmt.Fprintf(env.stdout, "  raft  mutual TLS between the coordinators: CA and certificates in %s\n", filepath.Dir(c.RaftTLS().CA))
	}
	gwDone := make(chan error, 1)
	gwCtx, gwCancel := context.WithCancel(ctx)
	defer gwCancel()
	if *httpAddr != "off" {
		// The job API, in this process: stateless, over the cluster's NATS.
		// (With --auth, as the default tenant's client.)
		ncfg := c.ClientConfig(transport.DefaultTenant, "ringattn-gateway")
		cl, err := client.Connect(ctx, ncfg, client.Options{})
		if err != nil {
			c.Close()
			return fmt.Errorf("the HTTP job API's connection: %w", err)
		}
		defer cl.Close()
		go func() {
			gwDone <- serveGateway(gwCtx, env, cl, *httpAddr, gateway.Config{Token: *token, Version: version()})
		}()
	} else {
		gwDone <- nil
	}

	// Report processes that die on their own while the cluster runs.
	for _, p := range c.Procs() {
		go func() {
			select {
			case <-p.Exited():
				if ctx.Err() == nil {
					fmt.Fprintf(env.stderr, "ringattn cluster: %s (pid %d) exited: %v; see %s\n", p.Name, p.Pid(), p.ExitState(), p.LogPath)
				}
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-ctx.Done():
		gwCancel()
		<-gwDone
	case err := <-gwDone:
		if err != nil {
			fmt.Fprintf(env.stderr, "ringattn cluster: the HTTP job API stopped: %v\n", err)
		}
		<-ctx.Done()
	}
	fmt.Fprintln(env.stdout, "ringattn cluster: stopping (workers drain, then coordinators, then NATS; Ctrl-C again kills)")
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err = <-closed:
	case <-sig:
		c.Kill()
		err = <-closed
	}
	if err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	fmt.Fprintln(env.stdout, "ringattn cluster: stopped")
	return nil
}

func printCluster(w io.Writer, c *localcluster.Cluster, how string, leader *localcluster.Proc, took time.Duration) {
	fmt.Fprintf(w, "ringattn cluster: %d coordinators, %d workers, up in %v\n", len(c.Coordinators), len(c.Workers()), took.Round(time.Millisecond))
	fmt.Fprintf(w, "  binaries  %s\n  data      %s\n  NATS      %s  (monitoring %s)\n", how, c.Dir, c.URL(), c.NATSMonitor())
	if leader != nil {
		fmt.Fprintf(w, "  leader    %s\n", leader.Name)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  PROCESS\tPID\tADDRESS\tLOG")
	for _, p := range c.Procs() {
		addr := p.Addr
		switch p.Kind {
		case localcluster.KindNATS:
			addr = p.NATSURL
		case localcluster.KindCoordinator:
			addr = "http://" + p.Addr + " (raft " + p.RaftAddr + ")"
		case localcluster.KindWorker:
			addr = "http://" + p.Addr + "/metrics"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", p.Name, p.Pid(), addr, p.LogPath)
	}
	tw.Flush()
	nkey := ""
	if creds := c.Credentials(); creds != nil {
		nkey = " --nats-nkey " + creds.Clients[transport.DefaultTenant]
	}
	fmt.Fprintf(w, "Try:  ringattn attend --nats %s%s -q Q.npy -k K.npy -v V.npy -o O.npy\n      ringattn list --nats %s%s\n", c.URL(), nkey, c.URL(), nkey)
	fmt.Fprintln(w, "Ctrl-C stops everything.")
}
