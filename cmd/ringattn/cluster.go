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
		BF16Wire: m.wire == "bf16", AllowNonFinite: m.allowNonFinite}, nil
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
	fs := newFlags(env, "dev", "[--workers W] [--data DIR] [--port P] [--http ADDR]")
	workers := fs.Int("workers", 3, "number of `W` workers")
	data := fs.String("data", "", "data `dir` for JetStream and Raft (default: a temporary one, removed on exit)")
	port := fs.Int("port", 4222, "NATS client `port` on 127.0.0.1 (0: a free port)")
	httpAddr := fs.String("http", "127.0.0.1:8080", "HTTP `address`: the job API (/v1/jobs, for curl and Python) and the ops endpoints (/metrics, /readyz, /v1/cluster)")
	token := fs.String("token", os.Getenv("RINGATTN_GATEWAY_TOKEN"), "bearer `token` the HTTP job API requires (env RINGATTN_GATEWAY_TOKEN; needed to bind a non-loopback --http)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn, error")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if *workers < 1 {
		return usagef("--workers = %d, expected >= 1", *workers)
	}
	logger, err := newLogger(env.stderr, *logFormat, *logLevel)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: *workers, DataDir: *data, NATSPort: *port,
		HTTPAddr: *httpAddr, Logger: logger, Gateway: gateway.Config{Token: *token, Version: version()}})
	if err != nil {
		return err
	}
	defer dev.Close()
	fmt.Fprintf(env.stdout, "ringattn dev: %d workers\n  NATS  %s\n  HTTP  http://%s\n", *workers, dev.URL(), dev.HTTPAddr())
	if *data != "" {
		fmt.Fprintf(env.stdout, "  data  %s\n", *data)
	}
	fmt.Fprintf(env.stdout, "Try:  ringattn attend --nats %s -q Q.npy -k K.npy -v V.npy -o O.npy\n", dev.URL())
	fmt.Fprintf(env.stdout, "      python3 -c 'import ringattn; print(ringattn.Client(\"http://%s\").info())'   (PYTHONPATH=python)\nCtrl-C stops.\n", dev.HTTPAddr())
	<-ctx.Done()
	fmt.Fprintln(env.stdout, "ringattn dev: stopping")
	return nil
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
