// Package devcluster runs a whole ringattn cluster in one process: an
// embedded NATS server with JetStream, a single-node coordinator (real Raft,
// log and snapshots on disk) and W workers, each on its own NATS
// connection. It backs `ringattn dev`, `ringattn demo` and `--cluster W`.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringattn/ringattn/internal/coordinator"
	"github.com/ringattn/ringattn/internal/gateway"
	"github.com/ringattn/ringattn/internal/metrics"
	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Config of a dev cluster; zero values mean the defaults.
type Config struct {
	// Workers is the number of workers (default 3).
	Workers int
	// DataDir holds NATS's JetStream store and the coordinator's Raft data;
	// empty means a temporary directory removed by Close.
	DataDir string
	// NATSPort is the NATS client port on 127.0.0.1 (0: a free port).
	NATSPort int
	// HTTPAddr is the HTTP address (default 127.0.0.1:0; "off" disables
	// it): the HTTP job API (internal/gateway) on /v1/info and /v1/jobs...,
	// the coordinator's ops endpoints on everything else.
	HTTPAddr string
	// Gateway configures the HTTP job API (zero: the defaults, no token).
	Gateway gateway.Config
	// WorkerThreads bounds each worker's kernel goroutines (0: all the
	// process's cores, shared by the workers).
	WorkerThreads int
	// WorkerGFLOPS is the speed every worker reports (0: measured once
	// at start and reported by all: they share one process's cores).
	WorkerGFLOPS float64
	// Logger receives every component's logs (nil discards them).
	Logger *slog.Logger
	// Ready bounds the wait for the cluster to serve (default 30 s).
	Ready time.Duration
	// Auth turns roles on: an nkey per identity (coordinator, each
	// worker, a client per tenant, admin) is created in DataDir/auth
	// (0600, kept across restarts; see Credentials), the NATS server
	// admits only them, each with its role's permissions
	// (transport.Subjects.Permissions), and every part in this process
	// connects as its role. Off (the default): zero-config loopback.
	Auth bool
	// Tenants are the client tenants besides "default" that Auth creates
	// credentials and a tensor bucket for.
	Tenants []string
	// TenantQuota caps each tenant's tensor bucket in bytes (0:
	// unlimited); a write past it fails with transport.ErrStoreFull.
	TenantQuota int64
}

// Cluster is a running dev cluster.
type Cluster struct {
	NATS    *transport.Embedded
	Coord   *coordinator.Coordinator
	Workers []*worker.Worker
	cfg     transport.Config
	tempDir string
	cancel  context.CancelFunc
	done    []chan error
	storeNC *nats.Conn
	httpL   net.Listener
	httpS   *http.Server
	httpC   *client.Client
	creds   *Credentials
	reg     *prometheus.Registry
}

// freeAddr returns a free 127.0.0.1 TCP address.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Start starts the cluster and waits until the coordinator serves and every
// worker is ready.
func Start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if cfg.Workers == 0 {
		cfg.Workers = 3
	}
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("devcluster: workers = %d, expected >= 1", cfg.Workers)
	}
	if cfg.Ready <= 0 {
		cfg.Ready = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c = &Cluster{}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	dir := cfg.DataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "ringattn-dev-"); err != nil {
			return c, err
		}
		c.tempDir = dir
	}
	c.cfg = transport.DefaultConfig()
	workerIDs := make([]string, cfg.Workers)
	for i := range workerIDs {
		workerIDs[i] = fmt.Sprintf("worker-%d", i)
	}
	var users []transport.EmbeddedUser
	if cfg.Auth {
		if c.creds, users, err = authSetup(filepath.Join(dir, "auth"), c.cfg.Subjects(), c.cfg.Bucket, workerIDs, tenantsOf(cfg)); err != nil {
			return c, err
		}
	}
	c.NATS, err = transport.StartEmbedded(transport.EmbeddedConfig{Port: cfg.NATSPort,
		DataDir: filepath.Join(dir, "nats"), Logger: log.With("side", "nats"), Users: users})
	if err != nil {
		return c, err
	}
	c.cfg.URLs = []string{c.NATS.ClientURL()}
	// Everything in this process reaches the server over in-memory pipes
	// (other processes use the URL).
	c.cfg.InProcess = c.NATS
	if err := c.provision(ctx, cfg); err != nil {
		return c, err
	}
	// One /metrics for the process: the coordinator's registry, every
	// worker's (labelled worker="<id>"), the Go runtime and the process.
	c.reg = metrics.NewRegistry()

	raftAddr, err := freeAddr()
	if err != nil {
		return c, err
	}
	cc := coordinator.DefaultConfig()
	cc.NodeID = "coordinator-0"
	cc.Bootstrap = true
	cc.RaftAddr = raftAddr
	cc.DataDir = filepath.Join(dir, "coordinator")
	// The coordinator serves no HTTP of its own: Start serves one mux of
	// the job API and the coordinator's handler on cfg.HTTPAddr.
	cc.HTTPAddr = ""
	cc.NATS = c.roleConfig(transport.RoleCoordinator, "")
	cc.NATS.Name = "coordinator-0"
	// A single node elects itself: short raft timeouts make start-up quick.
	cc.RaftHeartbeatTimeout = 200 * time.Millisecond
	cc.RaftElectionTimeout = 200 * time.Millisecond
	cc.RaftLeaderLeaseTimeout = 100 * time.Millisecond
	cc.SchedulerInterval = 20 * time.Millisecond
	// The bucket exists before anyone uploads; the coordinator opens each
	// tenant's bucket itself (deletes, output checks, the sweeper).
	if _, err := c.openStore(ctx); err != nil {
		return c, err
	}
	c.Coord, err = coordinator.New(cc, coordinator.Deps{Logger: log.With("side", "coordinator"),
		Registerer: c.reg})
	if err != nil {
		return c, err
	}
	threads := cfg.WorkerThreads
	if threads == 0 {
		// Every worker may use all of this process's cores and the Go
		// scheduler shares them: a rank waiting on the ring leaves its
		// cores to the others. Against cores divided among the workers,
		// a 4-worker N=32768 causal job took 9.5–9.8 s instead of
		// 10.3–10.6 s (docs/BENCHMARKS.md).
		threads = runtime.GOMAXPROCS(0)
	}
	gflops := cfg.WorkerGFLOPS
	if gflops == 0 {
		// Plans weight ranks by their workers' speeds. Workers measuring
		// at once on the same cores would report noise (a 4-worker plan
		// once gave rank 0 7 of 16 query blocks, and it finished last by
		// seconds): the workers are equal, so measure once for all.
		if gflops, err = worker.MeasureGFLOPS(ctx, 150*time.Millisecond, threads); err != nil {
			return c, fmt.Errorf("devcluster: measuring the kernel: %w", err)
		}
	}
	rctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	for _, id := range workerIDs {
		wc := worker.DefaultConfig()
		wc.ID = id
		wc.NATS = c.roleConfig(transport.RoleWorker, id)
		wc.NATS.Name = wc.ID
		wc.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"worker": id}, c.reg)
		wc.Gatherer = c.reg
		wc.Threads = threads
		wc.GFLOPS = gflops
		wc.MetricsAddr = worker.MetricsDisabled
		wc.HeartbeatInterval = 250 * time.Millisecond
		wc.Logger = log.With("side", wc.ID)
		w, err := worker.New(wc)
		if err != nil {
			return c, err
		}
		done := make(chan error, 1)
		go func() { done <- w.Run(rctx) }()
		c.Workers = append(c.Workers, w)
		c.done = append(c.done, done)
	}
	deadline := time.NewTimer(cfg.Ready)
	defer deadline.Stop()
	for i, w := range c.Workers {
		select {
		case <-w.Ready():
		case err := <-c.done[i]:
			return c, fmt.Errorf("devcluster: worker %s stopped: %v", w.ID(), err)
		case <-deadline.C:
			return c, fmt.Errorf("devcluster: worker %s not ready within %v", w.ID(), cfg.Ready)
		case <-ctx.Done():
			return c, ctx.Err()
		}
	}
	if cfg.HTTPAddr != "off" {
		if err := c.serveHTTP(ctx, cfg, log); err != nil {
			return c, err
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !c.Coord.Serving() {
		select {
		case <-tick.C:
		case <-deadline.C:
			return c, errors.New("devcluster: the coordinator did not become leader in time")
		case <-ctx.Done():
			return c, ctx.Err()
		}
	}
	return c, nil
}

func (c *Cluster) openStore(ctx context.Context) (*transport.Store, error) {
	nc, err := transport.Connect(c.roleConfig(transport.RoleCoordinator, ""), nil)
	if err != nil {
		return nil, err
	}
	s, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: c.cfg.Bucket}, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.storeNC = nc
	return s, nil
}

// NATSConfig is how clients in this process reach the cluster (over
// in-memory pipes), as the default tenant (with Auth, its credentials);
// other processes use NATS.ClientURL().
func (c *Cluster) NATSConfig() transport.Config { return c.ClientConfig(transport.DefaultTenant) }

// Registry is the registry the cluster's /metrics serves.
func (c *Cluster) Registry() *prometheus.Registry { return c.reg }

// URL is the NATS client URL.
func (c *Cluster) URL() string { return c.NATS.ClientURL() }

// serveHTTP serves the job API and the coordinator's ops endpoints on one
// address.
func (c *Cluster) serveHTTP(ctx context.Context, cfg Config, log *slog.Logger) error {
	addr := cfg.HTTPAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	if err := gateway.CheckBind(addr, cfg.Gateway.Token, false); err != nil {
		return fmt.Errorf("devcluster: HTTP: %w", err)
	}
	gcfg := cfg.Gateway
	if gcfg.Logger == nil {
		gcfg.Logger = log.With("side", "gateway")
	}
	gcfg = gcfg.WithDefaults()
	ncfg := c.ClientConfig(transport.DefaultTenant)
	ncfg.Name = "gateway"
	cl, err := client.Connect(ctx, ncfg, client.Options{Limits: gcfg.Limits, Logger: gcfg.Logger})
	if err != nil {
		return fmt.Errorf("devcluster: the gateway's connection: %w", err)
	}
	c.httpC = cl
	gw, err := gateway.New(cl, gcfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("devcluster: HTTP on %s: %w", addr, err)
	}
	c.httpL = ln
	c.httpS = &http.Server{Handler: Composite(gw, c.Coord.Handler()), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := c.httpS.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("HTTP server stopped", "err", err)
		}
	}()
	log.Info("HTTP listening", "addr", ln.Addr().String())
	return nil
}

// Composite routes the job API's paths to gw and every other path to ops
// (the coordinator's handler).
func Composite(gw *gateway.Gateway, ops http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gateway.Owns(r.URL.Path) {
			gw.ServeHTTP(w, r)
			return
		}
		ops.ServeHTTP(w, r)
	})
}

// HTTPAddr is the HTTP address, job API and ops ("" when disabled).
func (c *Cluster) HTTPAddr() string {
	if c.httpL == nil {
		return ""
	}
	return c.httpL.Addr().String()
}

// Close stops the workers, the coordinator and NATS, and removes a
// temporary data directory.
func (c *Cluster) Close() {
	if c.cancel != nil {
		c.cancel()
		for _, d := range c.done {
			<-d
		}
	}
	if c.httpS != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = c.httpS.Shutdown(sctx)
		cancel()
		c.httpS.Close()
	}
	if c.httpC != nil {
		c.httpC.Close()
	}
	if c.Coord != nil {
		c.Coord.Close()
	}
	if c.storeNC != nil {
		c.storeNC.Close()
	}
	if c.NATS != nil {
		c.NATS.Shutdown()
	}
	if c.tempDir != "" {
		os.RemoveAll(c.tempDir)
	}
}
