package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/authkeys"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/internal/natsflags"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
)

// connFlags are the NATS connection flags of the commands that talk to a
// running cluster (--nats URL plus credentials and TLS, with RINGATTN_* env).
type connFlags struct {
	cfg     transport.Config
	timeout time.Duration
}

func (c *connFlags) register(fs *flag.FlagSet) {
	c.cfg = transport.DefaultConfig()
	c.cfg.Name = "ringattn-cli"
	// Errors here are programming errors (duplicate flags).
	if err := natsflags.RegisterFlags(fs, &c.cfg); err != nil {
		panic(err)
	}
	fs.DurationVar(&c.timeout, "timeout", 0, "give up after this `duration` (0: wait as long as the job runs)")
}

// connect returns a client for --nats URL (or --nats-url / RINGATTN_NATS_URL).
func (c *connFlags) connect(ctx context.Context, url string) (*client.Client, error) {
	cfg := c.cfg
	if url != "" {
		cfg.URLs = strings.Split(url, ",")
	}
	cfg.ConnectTimeout = min(cfg.ConnectTimeout, 5*time.Second)
	cl, err := client.Connect(ctx, cfg, client.Options{})
	if err != nil {
		return nil, err
	}
	return cl, nil
}

func (m *maskFlags) jobOptions() (client.JobOptions, error) {
	km, err := m.mask()
	if err != nil {
		return client.JobOptions{}, err
	}
	return client.JobOptions{Causal: km.Causal, Windowed: km.Windowed, Left: km.Left, Right: km.Right,
		SeqLens: km.SeqLens, SeqLensK: km.SeqLensK, Scale: m.scale, Block: m.block, Strategy: m.strategy,
		BF16Wire: m.wire == "bf16", AllowNonFinite: m.allowNonFinite, Precision: m.prec}, nil
}

// withTimeout bounds ctx by --timeout when set.
func (c *connFlags) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return context.WithCancel(ctx)
}

// clusterErr turns API errors about the request into usage errors (exit 2).
func clusterErr(err error) error {
	if errors.Is(err, client.ErrInvalid) || errors.Is(err, client.ErrNotFound) {
		return usageError{err}
	}
	return err
}

// runDev runs the all-in-one cluster until Ctrl-C.
func runDev(env *cliEnv, args []string) error {
	fs := newFlags(env, "dev", "[--workers W] [--data DIR] [--port P] [--http ADDR] [--auth [--tenants T1,T2] [--tenant-quota BYTES]]")
	workers := fs.Int("workers", 3, "number of `W` workers")
	data := fs.String("data", "", "data `dir` for JetStream and Raft (default: a temporary one, removed on exit)")
	port := fs.Int("port", 4222, "NATS client `port` on 127.0.0.1 (0: a free port)")
	httpAddr := fs.String("http", "127.0.0.1:8080", "HTTP `address`: the job API (/v1/jobs, for curl and Python) and the ops endpoints (/metrics, /readyz, /v1/cluster)")
	token := fs.String("token", os.Getenv("RINGATTN_GATEWAY_TOKEN"), "bearer `token` the HTTP job API requires (env RINGATTN_GATEWAY_TOKEN; needed to bind a non-loopback --http)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	auth := fs.Bool("auth", false, "roles on: an nkey per role (coordinator, workers, a client per tenant, admin) in DATA/auth, each allowed only its role's subjects")
	tenants := fs.String("tenants", "", "with --auth: client `tenants` besides \"default\", comma-separated")
	quota := fs.String("tenant-quota", "0", "with --auth: each tenant's stored tensor `bytes` (KiB/MiB/GiB suffixes; 0 = unlimited)")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if *workers < 1 {
		return usagef("--workers = %d, expected >= 1", *workers)
	}
	tenantList, quotaBytes, err := parseTenantFlags(*auth, *tenants, *quota)
	if err != nil {
		return err
	}
	logger, err := newLogger(env.stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: *workers, DataDir: *data, NATSPort: *port,
		HTTPAddr: *httpAddr, Logger: logger, Gateway: gateway.Config{Token: *token, Version: version()},
		Auth: *auth, Tenants: tenantList, TenantQuota: quotaBytes})
	if err != nil {
		return err
	}
	defer dev.Close()
	fmt.Fprintf(env.stdout, "ringattn dev: %d workers\n  NATS  %s\n  HTTP  http://%s\n", *workers, dev.URL(), dev.HTTPAddr())
	if *data != "" {
		fmt.Fprintf(env.stdout, "  data  %s\n", *data)
	}
	nkey := ""
	if creds := dev.Credentials(); creds != nil {
		printDevAuth(env.stdout, dev.URL(), creds, *data == "")
		nkey = " --nats-nkey " + creds.Clients[transport.DefaultTenant]
	}
	fmt.Fprintf(env.stdout, "Try:  ringattn attend --nats %s%s -q Q.npy -k K.npy -v V.npy -o O.npy\n", dev.URL(), nkey)
	fmt.Fprintf(env.stdout, "      python3 -c 'import ringattn; print(ringattn.Client(\"http://%s\").info())'   (PYTHONPATH=python)\nCtrl-C stops.\n", dev.HTTPAddr())
	<-ctx.Done()
	fmt.Fprintln(env.stdout, "ringattn dev: stopping")
	return nil
}

// parseTenantFlags checks --tenants and --tenant-quota (which need
// --auth) of dev and cluster.
func parseTenantFlags(auth bool, tenants, quota string) ([]string, int64, error) {
	quotaBytes, err := natsflags.ParseBytes(quota)
	if err != nil || quotaBytes < 0 {
		return nil, 0, usagef("--tenant-quota = %q, expected bytes >= 0 like 512MiB", quota)
	}
	var tenantList []string
	for _, t := range strings.Split(tenants, ",") {
		if t = strings.TrimSpace(t); t == "" {
			continue
		}
		if transport.ValidateJobTenant(t) != nil {
			return nil, 0, usagef("--tenants: %q, expected names of [A-Za-z0-9_-] not starting with \"_\"", t)
		}
		tenantList = append(tenantList, t)
	}
	if !auth && (len(tenantList) > 0 || quotaBytes > 0) {
		return nil, 0, usagef("--tenants and --tenant-quota need --auth")
	}
	return tenantList, quotaBytes, nil
}

// printDevAuth tells how each identity of `ringattn dev --auth` or
// `ringattn cluster --auth` connects.
func printDevAuth(w io.Writer, url string, creds *authkeys.Credentials, temp bool) {
	fmt.Fprintf(w, "  auth  nkey seeds (mode 0600) in %s; each identity may use only its role's subjects\n", creds.Dir)
	if temp {
		fmt.Fprintf(w, "        (a temporary directory: removed on exit; --data DIR keeps them)\n")
	}
	for _, t := range creds.Tenants() {
		tenant := ""
		if t != transport.DefaultTenant {
			tenant = " --nats-tenant " + t
		}
		fmt.Fprintf(w, "  client %-12s --nats %s --nats-nkey %s%s\n", t, url, creds.Clients[t], tenant)
	}
	fmt.Fprintf(w, "  admin               --nats %s --nats-nkey %s --nats-tenant %s\n", url, creds.Admin, transport.AdminTenant)
	fmt.Fprintf(w, "  env:  RINGATTN_NATS_URL=%s RINGATTN_NATS_NKEY=%s\n", url, creds.Clients[transport.DefaultTenant])
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level = %q, expected debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format = %q, expected text or json", format)
}
