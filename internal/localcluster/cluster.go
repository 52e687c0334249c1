package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/ringattn/ringattn/internal/authkeys"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Config of a local cluster. Zero durations and counts mean the defaults
// noted; zero timing fields leave the binaries' own defaults.
type Config struct {
	// Bin are the executables (required; see Build and FindBinaries).
	Bin Binaries
	// Dir holds every process's data directory and the logs/ directory.
	// Empty means a temporary directory removed by Close.
	Dir string
	// Coordinators is the number of coordinators (default 3).
	Coordinators int
	// Workers is the number of workers started with the cluster (default
	// 3; 0 is allowed with NoWorkers).
	Workers   int
	NoWorkers bool
	// NATSPort is the NATS client port on 127.0.0.1 (0: a free port).
	NATSPort int
	// ProxyWorkers connects each worker to NATS through its own Proxy.
	ProxyWorkers bool

	// HeartbeatTimeout: the coordinators declare a worker dead after it
	// (coordinator --heartbeat-timeout).
	HeartbeatTimeout time.Duration
	// RaftTimeout sets the coordinators' Raft heartbeat and election
	// timeouts (the lease is half of it).
	RaftTimeout time.Duration
	// HeartbeatInterval is the workers' heartbeat period.
	HeartbeatInterval time.Duration
	// RecvTimeout: a rank waits this long for a ring frame before it reads
	// the block from the store.
	RecvTimeout time.Duration
	// RequestTimeout bounds a worker's heartbeat and report requests.
	RequestTimeout time.Duration
	// DrainTimeout bounds a worker's drain on SIGTERM.
	DrainTimeout time.Duration
	// WorkerThreads is each worker's kernel goroutines (0: the worker's
	// default, all cores).
	WorkerThreads int
	// WorkerGFLOPS, when > 0, is the speed workers report instead of
	// measuring it at start.
	WorkerGFLOPS float64
	// LogLevel of every process (default "info").
	LogLevel string
	// CoordinatorArgs and WorkerArgs are added to the command lines;
	// NATSExtraConf is added to the nats-server configuration file.
	CoordinatorArgs, WorkerArgs []string
	NATSExtraConf               string
	// Auth turns roles on: an nkey seed per identity in Dir/auth (the
	// coordinators, the admin, each worker, a client per tenant), the NATS
	// server admitting only them, each with its role's permissions
	// (transport.Subjects.BucketPermissions), and Raft mutual TLS between
	// the coordinators with a CA and a certificate each in Dir/tls.
	Auth bool
	// Tenants are the client tenants besides "default" (with Auth); each
	// gets a seed and a tensor bucket capped at TenantQuota bytes (0:
	// unlimited).
	Tenants     []string
	TenantQuota int64
	// Ready bounds every wait for readiness (default 60 s).
	Ready time.Duration
	// Logger receives the harness's own messages (nil: discard).
	Logger *slog.Logger
}

func (c *Config) fill() error {
	if c.Coordinators == 0 {
		c.Coordinators = 3
	}
	if c.Workers == 0 && !c.NoWorkers {
		c.Workers = 3
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Ready <= 0 {
		c.Ready = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Coordinators < 1 || c.Coordinators > 9:
		return fmt.Errorf("%w: Coordinators = %d: want 1..9", ErrInvalid, c.Coordinators)
	case c.Workers < 0 || c.Workers > 64:
		return fmt.Errorf("%w: Workers = %d: want 0..64", ErrInvalid, c.Workers)
	case c.NATSPort < 0 || c.NATSPort > 65535:
		return fmt.Errorf("%w: NATSPort = %d: want 0..65535", ErrInvalid, c.NATSPort)
	case c.WorkerThreads < 0:
		return fmt.Errorf("%w: WorkerThreads = %d: want >= 0", ErrInvalid, c.WorkerThreads)
	case c.TenantQuota < 0:
		return fmt.Errorf("%w: TenantQuota = %d: want >= 0 (0: unlimited)", ErrInvalid, c.TenantQuota)
	case !c.Auth && (len(c.Tenants) > 0 || c.TenantQuota > 0):
		return fmt.Errorf("%w: Tenants and TenantQuota need Auth", ErrInvalid)
	}
	for _, t := range c.Tenants {
		if transport.ValidateJobTenant(t) != nil || t == "" {
			return fmt.Errorf("%w: Tenants: %q: want 1..128 characters of [A-Za-z0-9_-], not starting with \"_\"", ErrInvalid, t)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"HeartbeatTimeout", c.HeartbeatTimeout}, {"RaftTimeout", c.RaftTimeout},
		{"HeartbeatInterval", c.HeartbeatInterval},
		{"RecvTimeout", c.RecvTimeout}, {"RequestTimeout", c.RequestTimeout}, {"DrainTimeout", c.DrainTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%w: %s = %v: want >= 0 (0: the binary's default)", ErrInvalid, d.name, d.v)
		}
	}
	return c.Bin.Validate()
}

// Cluster is a running local cluster. Its methods are safe for concurrent
// use.
type Cluster struct {
	// Dir holds the data directories and logs/.
	Dir string
	// NATS is the NATS server process.
	NATS *Proc
	// Coordinators are the coordinator processes, coordinator-0...
	Coordinators []*Proc

	cfg     Config
	log     *slog.Logger
	tempDir bool
	natsURL string
	natsMon string
	http    *http.Client
	client  *client.Client

	// With Config.Auth: the credentials, the NATS server's users and
	// configuration file, and the Raft TLS files.
	authMu       sync.Mutex
	creds        *authkeys.Credentials
	natsUsers    []transport.EmbeddedUser
	natsConfPath string
	natsPort     int
	natsMonPort  int
	raftTLS      *RaftTLS

	mu         sync.Mutex
	workers    []*Proc
	proxies    map[string]*Proxy
	nextWorker int
	closed     bool
}

// freePort returns a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freeAddr() (string, error) {
	p, err := freePort()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(p), nil
}

// Start starts NATS, the coordinators and the workers, and returns when
// the NATS server serves JetStream, every coordinator is ready, a leader
// serves the API and every worker is live at the leader. On error every
// process started is stopped again.
//
// Ports are picked free and released before the processes bind them, so
// another program may take one in between: when a process of a new
// cluster fails to bind (ErrPortInUse), Start removes what the attempt
// left in Dir and tries again with new ports, up to three times.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	fresh := cfg.Dir == ""
	if !fresh {
		_, err := os.Stat(filepath.Join(cfg.Dir, LayoutFile))
		fresh = errors.Is(err, os.ErrNotExist)
	}
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, cfg)
		if err == nil || !fresh || attempt == 3 || !errors.Is(err, ErrPortInUse) || ctx.Err() != nil {
			return c, err
		}
		cfg.Logger.Warn("a port was taken while the cluster started; starting again with new ports", "attempt", attempt, "err", err)
		if cfg.Dir != "" {
			entries, _ := os.ReadDir(cfg.Dir)
			for _, e := range entries {
				if e.Name() != "logs" {
					os.RemoveAll(filepath.Join(cfg.Dir, e.Name()))
				}
			}
		}
	}
}

func start(ctx context.Context, cfg Config) (c *Cluster, err error) {
	c = &Cluster{cfg: cfg, log: cfg.Logger, proxies: map[string]*Proxy{},
		http: &http.Client{Timeout: 2 * time.Second}}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	c.Dir = cfg.Dir
	if c.Dir == "" {
		if c.Dir, err = os.MkdirTemp("", "ringattn-cluster-"); err != nil {
			return c, err
		}
		c.tempDir = true
	}
	if c.Dir, err = filepath.Abs(c.Dir); err != nil {
		return c, err
	}
	if err := os.MkdirAll(filepath.Join(c.Dir, "logs"), 0o755); err != nil {
		return c, err
	}
	lay, err := c.layout()
	if err != nil {
		return c, err
	}
	if cfg.Auth {
		var workers []string
		for i := range cfg.Workers {
			workers = append(workers, "worker-"+strconv.Itoa(i))
		}
		if err := c.setupAuth(workers); err != nil {
			return c, err
		}
		if err := c.setupRaftTLS(lay); err != nil {
			return c, err
		}
	}
	if err := c.startNATS(ctx, lay); err != nil {
		return c, err
	}
	if cfg.Auth {
		if err := c.provision(ctx); err != nil {
			return c, err
		}
	}
	if err := c.startCoordinators(ctx, lay); err != nil {
		return c, err
	}
	cl, err := client.Connect(ctx, c.AdminConfig("localcluster"), client.Options{RequestTimeout: time.Second})
	if err != nil {
		return c, err
	}
	c.client = cl
	if _, err := c.WaitLeader(ctx); err != nil {
		return c, err
	}
	var names []string
	for range cfg.Workers {
		p, err := c.StartWorker()
		if err != nil {
			return c, err
		}
		names = append(names, p.Name)
	}
	if err := c.WaitWorkers(ctx, names...); err != nil {
		return c, err
	}
	return c, nil
}
