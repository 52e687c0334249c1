package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/pkg/client"
)

// runGateway serves the HTTP job API (internal/gateway) for a running
// cluster until Ctrl-C: a stateless process, so any number of them can
// front the same coordinators (its own Deployment on Kubernetes).
func runGateway(env *cliEnv, args []string) error {
	fs := newFlags(env, "gateway", "--nats URL [--http ADDR] [--token T]")
	var cf connFlags
	cf.register(fs)
	var natsURL string
	registerNATS(fs, &natsURL, "`URL` of the cluster's NATS (comma-separated for several)")
	httpAddr := fs.String("http", envOr("RINGATTN_GATEWAY_ADDR", gateway.DefaultAddr), "`address` to serve the job API on (env RINGATTN_GATEWAY_ADDR)")
	token := fs.String("token", os.Getenv("RINGATTN_GATEWAY_TOKEN"), "bearer `token` every request must carry (env RINGATTN_GATEWAY_TOKEN)")
	insecure := fs.Bool("insecure", false, "allow a non-loopback --http without a token")
	maxReq := fs.Int64("max-request-bytes", 1<<30, "largest submit body in `bytes`")
	inFlight := fs.Int("max-in-flight", 4, "tensor transfers served at once (past it: 429)")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	switch {
	case *maxReq < 1:
		return usagef("--max-request-bytes = %d, expected >= 1", *maxReq)
	case *inFlight < 1:
		return usagef("--max-in-flight = %d, expected >= 1", *inFlight)
	}
	if err := gateway.CheckBind(*httpAddr, *token, *insecure); err != nil {
		return usagef("--http: %v", err)
	}
	gcfg := gateway.Config{Token: *token, MaxRequestBytes: *maxReq, MaxInFlight: *inFlight, Version: version()}.WithDefaults()
	if err := gcfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	cf.cfg.Name = "ringattn-gateway"
	cl, err := dial(ctx, &cf, natsValue(fs, &cf, natsURL))
	if err != nil {
		return err
	}
	defer cl.Close()
	return serveGateway(ctx, env, cl, *httpAddr, gcfg)
}

// serveGateway serves a gateway over cl on addr until ctx ends.
func serveGateway(ctx context.Context, env *cliEnv, cl *client.Client, addr string, cfg gateway.Config) error {
	g, err := gateway.New(cl, cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--http %s: %w", addr, err)
	}
	// Probes for Kubernetes, outside the token: /healthz is the process,
	// /readyz the cluster answering.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if _, err := cl.Cluster(rctx); err != nil {
			http.Error(w, "not ready: the cluster does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/", g)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(env.stdout, "ringattn gateway: serving the job API on http://%s\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	srv.Close()
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
