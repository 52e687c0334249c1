package localcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
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
	if err := c.startNATS(ctx, lay); err != nil {
		return c, err
	}
	if err := c.startCoordinators(ctx, lay); err != nil {
		return c, err
	}
	cl, err := client.Connect(ctx, c.NATSConfig("localcluster"), client.Options{RequestTimeout: time.Second})
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

// layout are the ports of a cluster, kept in Dir/layout.json: a cluster
// started again on the same Dir reuses them, since the coordinators' Raft
// state names its peers by address.
type layout struct {
	NATSPort        int                 `json:"nats_port"`
	NATSMonitorPort int                 `json:"nats_monitor_port"`
	Coordinators    []layoutCoordinator `json:"coordinators"`
}

type layoutCoordinator struct {
	Name     string `json:"name"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// LayoutFile is the name of the layout in Dir.
const LayoutFile = "layout.json"

// layout loads Dir's layout or makes (and saves) a new one with free
// ports. Config.NATSPort, when set, wins over a saved NATS port.
func (c *Cluster) layout() (*layout, error) {
	path := filepath.Join(c.Dir, LayoutFile)
	lay := &layout{}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, lay); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
		}
		if len(lay.Coordinators) != c.cfg.Coordinators {
			return nil, fmt.Errorf("%w: Coordinators = %d, but %s holds a cluster of %d coordinators: use that many or a new directory",
				ErrInvalid, c.cfg.Coordinators, c.Dir, len(lay.Coordinators))
		}
	case errors.Is(err, os.ErrNotExist):
		if lay.NATSMonitorPort, err = freePort(); err != nil {
			return nil, err
		}
		for i := range c.cfg.Coordinators {
			raftAddr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			httpAddr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			lay.Coordinators = append(lay.Coordinators, layoutCoordinator{"coordinator-" + strconv.Itoa(i), raftAddr, httpAddr})
		}
	default:
		return nil, err
	}
	if c.cfg.NATSPort != 0 {
		lay.NATSPort = c.cfg.NATSPort
	}
	if lay.NATSPort == 0 {
		if lay.NATSPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	data, err = json.MarshalIndent(lay, "", "  ")
	if err != nil {
		return nil, err
	}
	return lay, os.WriteFile(path, append(data, '\n'), 0o644)
}

func (c *Cluster) logPath(name string) string { return filepath.Join(c.Dir, "logs", name+".log") }

func (c *Cluster) startNATS(ctx context.Context, lay *layout) error {
	port, mon := lay.NATSPort, lay.NATSMonitorPort
	c.natsMon = "http://127.0.0.1:" + strconv.Itoa(mon)
	dir := filepath.Join(c.Dir, "nats")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The same limits as transport.StartEmbedded: 8 MiB payloads, JetStream
	// on files.
	conf := fmt.Sprintf(`server_name: localcluster-nats
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: %d
jetstream {
  store_dir: %q
}
%s
`, port, mon, transport.DefaultMaxPayload, dir, c.cfg.NATSExtraConf)
	confPath := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	c.natsURL = "nats://" + addr
	c.NATS = &Proc{Name: "nats", Kind: KindNATS, Addr: addr, NATSURL: c.natsURL, DataDir: dir,
		LogPath: c.logPath("nats"), bin: c.cfg.Bin.NATSServer, args: []string{"-c", confPath}}
	if err := c.NATS.start(); err != nil {
		return err
	}
	c.log.Info("nats started", "pid", c.NATS.Pid(), "url", c.natsURL)
	return c.WaitNATS(ctx)
}

// WaitNATS waits until the NATS server serves JetStream: its monitoring
// endpoint's /healthz?js-enabled-only=true answers 200, which it does once
// the server accepts client connections and JetStream is enabled. (Asked
// over HTTP, so that this package does not speak NATS.)
func (c *Cluster) WaitNATS(ctx context.Context) error {
	return c.poll(ctx, "NATS serving JetStream at "+c.natsURL, func(ctx context.Context) error {
		select {
		case <-c.NATS.Exited():
			return Permanent(c.NATS.ExitError())
		default:
		}
		return c.httpGetOK(ctx, "nats", c.natsMon+"/healthz?js-enabled-only=true")
	})
}

func (c *Cluster) startCoordinators(ctx context.Context, lay *layout) error {
	var peers []string
	for _, lc := range lay.Coordinators {
		name, raftAddr, httpAddr := lc.Name, lc.RaftAddr, lc.HTTPAddr
		dir := filepath.Join(c.Dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		c.Coordinators = append(c.Coordinators, &Proc{Name: name, Kind: KindCoordinator, Addr: httpAddr,
			RaftAddr: raftAddr, NATSURL: c.natsURL, DataDir: dir, LogPath: c.logPath(name), bin: c.cfg.Bin.Coordinator})
		peers = append(peers, name+"="+raftAddr)
	}
	for _, p := range c.Coordinators {
		p.args = c.coordinatorArgs(p, strings.Join(peers, ","))
		if err := p.start(); err != nil {
			return err
		}
		c.log.Info("coordinator started", "name", p.Name, "pid", p.Pid(), "http", p.Addr, "raft", p.RaftAddr)
	}
	for _, p := range c.Coordinators {
		if err := c.WaitCoordinator(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func durArg(args []string, flag string, d time.Duration) []string {
	if d > 0 {
		args = append(args, "--"+flag, d.String())
	}
	return args
}

func (c *Cluster) coordinatorArgs(p *Proc, peers string) []string {
	args := []string{"--node-id", p.Name, "--raft-addr", p.RaftAddr, "--data-dir", p.DataDir,
		"--http-addr", p.Addr, "--nats-url", c.natsURL, "--nats-name", p.Name, "--log-level", c.cfg.LogLevel}
	if len(c.Coordinators) > 1 {
		args = append(args, "--peers", peers)
	} else {
		args = append(args, "--bootstrap")
	}
	args = durArg(args, "heartbeat-timeout", c.cfg.HeartbeatTimeout)
	if t := c.cfg.RaftTimeout; t > 0 {
		args = durArg(args, "raft-heartbeat-timeout", t)
		args = durArg(args, "raft-election-timeout", t)
		args = durArg(args, "raft-leader-lease-timeout", t/2)
	}
	return append(args, c.cfg.CoordinatorArgs...)
}

// WaitCoordinator waits until the coordinator's /readyz answers 200 (it
// knows a leader).
func (c *Cluster) WaitCoordinator(ctx context.Context, p *Proc) error {
	return c.poll(ctx, p.Name+" ready", func(ctx context.Context) error {
		if !p.Running() {
			return Permanent(p.ExitError())
		}
		return c.httpOK(ctx, p, "/readyz")
	})
}

// StartWorker starts one more worker (named worker-<n>) without waiting
// for it to be live; see WaitWorkers and AddWorker.
func (c *Cluster) StartWorker() (*Proc, error) { return c.StartWorkerEnv() }

// StartWorkerEnv is StartWorker with extra environment variables
// ("NAME=value") for this worker only, such as the worker's test-only
// fault injections RINGATTN_FAULT_STALL and RINGATTN_FAULT_PANIC.
func (c *Cluster) StartWorkerEnv(env ...string) (*Proc, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("localcluster: cluster closed")
	}
	name := "worker-" + strconv.Itoa(c.nextWorker)
	c.nextWorker++
	c.mu.Unlock()
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	url := c.natsURL
	var px *Proxy
	if c.cfg.ProxyWorkers {
		if px, err = NewProxy(c.NATS.Addr); err != nil {
			return nil, err
		}
		url = px.URL()
	}
	p := &Proc{Name: name, Kind: KindWorker, Addr: addr, NATSURL: url, LogPath: c.logPath(name), bin: c.cfg.Bin.Worker,
		env: slices.Clone(env)}
	p.args = []string{"--id", name, "--nats-url", url, "--nats-name", name, "--metrics-addr", addr,
		"--log-level", c.cfg.LogLevel}
	p.args = durArg(p.args, "heartbeat-interval", c.cfg.HeartbeatInterval)
	p.args = durArg(p.args, "recv-timeout", c.cfg.RecvTimeout)
	p.args = durArg(p.args, "request-timeout", c.cfg.RequestTimeout)
	p.args = durArg(p.args, "drain-timeout", c.cfg.DrainTimeout)
	if c.cfg.WorkerThreads > 0 {
		p.args = append(p.args, "--threads", strconv.Itoa(c.cfg.WorkerThreads))
	}
	if c.cfg.WorkerGFLOPS > 0 {
		p.args = append(p.args, "--gflops", strconv.FormatFloat(c.cfg.WorkerGFLOPS, 'g', -1, 64))
	}
	p.args = append(p.args, c.cfg.WorkerArgs...)
	if err := p.start(); err != nil {
		if px != nil {
			px.Close()
		}
		return nil, err
	}
	c.mu.Lock()
	c.workers = append(c.workers, p)
	if px != nil {
		c.proxies[name] = px
	}
	c.mu.Unlock()
	c.log.Info("worker started", "name", name, "pid", p.Pid(), "metrics", addr, "nats", url)
	return p, nil
}

// AddWorker starts one more worker and waits until it is live at the
// leader.
//
// A worker that fails to bind its metrics port (ErrPortInUse) is dropped
// and another one started, up to three times.
func (c *Cluster) AddWorker(ctx context.Context) (*Proc, error) { return c.AddWorkerEnv(ctx) }

// AddWorkerEnv is AddWorker with extra environment variables for the new
// worker (see StartWorkerEnv).
func (c *Cluster) AddWorkerEnv(ctx context.Context, env ...string) (*Proc, error) {
	for attempt := 1; ; attempt++ {
		p, err := c.StartWorkerEnv(env...)
		if err != nil {
			return nil, err
		}
		err = c.WaitWorkers(ctx, p.Name)
		if err == nil || attempt == 3 || !errors.Is(err, ErrPortInUse) {
			return p, err
		}
		c.log.Warn("worker could not bind its port; starting another", "name", p.Name, "err", err)
		c.mu.Lock()
		c.workers = slices.DeleteFunc(c.workers, func(w *Proc) bool { return w == p })
		if px := c.proxies[p.Name]; px != nil {
			px.Close()
			delete(c.proxies, p.Name)
		}
		c.mu.Unlock()
	}
}

// Workers returns the worker processes started so far, in order.
func (c *Cluster) Workers() []*Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.workers)
}

// Worker returns the worker named name, or nil.
func (c *Cluster) Worker(name string) *Proc {
	for _, p := range c.Workers() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Proxy returns the proxy in front of a worker (nil unless ProxyWorkers).
func (c *Cluster) Proxy(worker string) *Proxy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proxies[worker]
}

// Procs returns every process: NATS, coordinators, workers.
func (c *Cluster) Procs() []*Proc {
	out := []*Proc{}
	if c.NATS != nil {
		out = append(out, c.NATS)
	}
	out = append(out, c.Coordinators...)
	return append(out, c.Workers()...)
}

// URL is the NATS server's client URL (direct, not through a proxy).
func (c *Cluster) URL() string { return c.natsURL }

// NATSMonitor is the NATS server's monitoring URL (/varz, /jsz, ...).
func (c *Cluster) NATSMonitor() string { return c.natsMon }

// NATSConfig is a transport.Config reaching the cluster, with connection
// name `name`.
func (c *Cluster) NATSConfig(name string) transport.Config {
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{c.natsURL}
	cfg.Name = name
	return cfg
}

// Client is the harness's own API client (closed by Close).
func (c *Cluster) Client() *client.Client { return c.client }

// ClusterInfo asks a coordinator's ops HTTP server for /v1/cluster.
func (c *Cluster) ClusterInfo(ctx context.Context, p *Proc) (*pb.ClusterReply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+"/v1/cluster", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s /v1/cluster: %s", p.Name, resp.Status)
	}
	var r pb.ClusterReply
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s /v1/cluster: %w", p.Name, err)
	}
	return &r, nil
}

// Coordinator returns the coordinator named name, or nil.
func (c *Cluster) Coordinator(name string) *Proc {
	for _, p := range c.Coordinators {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Leader returns the coordinator that serves the API now: the NATS API
// names it and it is running (not stopped).
func (c *Cluster) Leader(ctx context.Context) (*Proc, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := c.client.Cluster(rctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoLeader, err)
	}
	p := c.Coordinator(r.GetLeaderId())
	if p == nil || !p.Running() || p.Stopped() {
		return nil, fmt.Errorf("%w: the API names %q, which is not a running coordinator", ErrNoLeader, r.GetLeaderId())
	}
	return p, nil
}

// WaitLeader waits until a coordinator not in exclude is leader and
// serves the API, and returns it.
func (c *Cluster) WaitLeader(ctx context.Context, exclude ...*Proc) (*Proc, error) {
	var leader *Proc
	err := c.poll(ctx, "a leader serving the API", func(ctx context.Context) error {
		p, err := c.Leader(ctx)
		if err != nil {
			return err
		}
		if slices.Contains(exclude, p) {
			return fmt.Errorf("%w: %s is still the leader", ErrNoLeader, p.Name)
		}
		leader = p
		return nil
	})
	return leader, err
}

// LiveWorkers returns the ids of the workers the leader counts as live and
// not leaving.
func (c *Cluster) LiveWorkers(ctx context.Context) ([]string, error) {
	ws, err := c.WorkerInfos(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, w := range ws {
		if !w.GetLeaving() {
			ids = append(ids, w.GetId())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// WorkerInfos returns the workers the leader lists (live or leaving).
func (c *Cluster) WorkerInfos(ctx context.Context) ([]*pb.WorkerInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	r, err := c.client.Cluster(rctx)
	if err != nil {
		return nil, err
	}
	return r.GetWorkers(), nil
}

// WaitWorkers waits until every named worker process answers its /readyz
// and the leader lists it as live (not leaving), heard from since the
// process started.
func (c *Cluster) WaitWorkers(ctx context.Context, names ...string) error {
	return c.poll(ctx, fmt.Sprintf("workers %v live at the leader", names), func(ctx context.Context) error {
		ws, err := c.WorkerInfos(ctx)
		if err != nil {
			return err
		}
		for _, n := range names {
			p := c.Worker(n)
			if p == nil {
				return Permanent(fmt.Errorf("no worker %q in this cluster", n))
			}
			if !p.Running() {
				return Permanent(p.ExitError())
			}
			if err := c.httpOK(ctx, p, "/readyz"); err != nil {
				return err
			}
			i := slices.IndexFunc(ws, func(w *pb.WorkerInfo) bool { return w.GetId() == n })
			switch {
			case i < 0:
				return fmt.Errorf("%s not listed by the leader", n)
			case ws[i].GetLeaving():
				return fmt.Errorf("%s is leaving", n)
			case ws[i].GetLastSeenUnixMs() < p.Started().UnixMilli():
				return fmt.Errorf("%s not heard from since it started", n)
			}
		}
		return nil
	})
}

// httpOK checks that GET path on the process's HTTP address answers 200.
func (c *Cluster) httpOK(ctx context.Context, p *Proc, path string) error {
	return c.httpGetOK(ctx, p.Name+" "+path, "http://"+p.Addr+path)
}

// httpGetOK checks that GET url answers 200; errors start with what.
func (c *Cluster) httpGetOK(ctx context.Context, what, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", what, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// WaitWorkerGone waits until the leader no longer lists the worker.
func (c *Cluster) WaitWorkerGone(ctx context.Context, name string) error {
	return c.poll(ctx, name+" removed by the leader", func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		r, err := c.client.Cluster(rctx)
		if err != nil {
			return err
		}
		for _, w := range r.GetWorkers() {
			if w.GetId() == name {
				return fmt.Errorf("%s still listed", name)
			}
		}
		return nil
	})
}

// RestartAndWait restarts an exited process and waits until it is ready
// again: NATS serving JetStream, a coordinator's /readyz, a worker live at
// the leader.
func (c *Cluster) RestartAndWait(ctx context.Context, p *Proc) error {
	if err := p.Restart(); err != nil {
		return err
	}
	c.log.Info("restarted", "name", p.Name, "pid", p.Pid())
	switch p.Kind {
	case KindNATS:
		return c.WaitNATS(ctx)
	case KindCoordinator:
		return c.WaitCoordinator(ctx, p)
	default:
		return c.WaitWorkers(ctx, p.Name)
	}
}

// Metric scrapes a process's /metrics (a worker's metrics address or a
// coordinator's ops address) and returns the sum of every series of the
// named metric (e.g. "ringattn_worker_shards_running"); a metric with no
// series is 0.
func (c *Cluster) Metric(ctx context.Context, p *Proc, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s /metrics: %s", p.Name, resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // a longer metric name
		}
		fields := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s /metrics: %q: %v", p.Name, line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// Close stops every process: workers first (SIGTERM: they drain), then
// the coordinators, then NATS, each given a few seconds before SIGKILL;
// closes the proxies; and removes a temporary Dir. It returns the first
// process that had to be killed.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
	}
	var errs []error
	stop := func(ps []*Proc, grace time.Duration) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, p := range ps {
			if !p.Running() {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := p.Terminate(grace); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	stop(c.Workers(), 10*time.Second)
	stop(c.Coordinators, 10*time.Second)
	if c.NATS != nil {
		stop([]*Proc{c.NATS}, 10*time.Second)
	}
	c.mu.Lock()
	for _, px := range c.proxies {
		px.Close()
	}
	c.mu.Unlock()
	if c.tempDir {
		os.RemoveAll(c.Dir)
	}
	return errors.Join(errs...)
}

// Kill SIGKILLs every process at once (fast teardown) and removes a
// temporary Dir.
func (c *Cluster) Kill() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
	}
	for _, p := range c.Procs() {
		if p.Running() {
			_ = p.Kill()
		}
	}
	c.mu.Lock()
	for _, px := range c.proxies {
		px.Close()
	}
	c.mu.Unlock()
	if c.tempDir {
		os.RemoveAll(c.Dir)
	}
}

// DumpLogs writes the last maxLines lines of every process's log to w.
func (c *Cluster) DumpLogs(w io.Writer, maxLines int) {
	for _, p := range c.Procs() {
		fmt.Fprintf(w, "----- %s (pid %d) %s -----\n", p.Name, p.Pid(), p.LogPath)
		data, err := os.ReadFile(p.LogPath)
		if err != nil {
			fmt.Fprintf(w, "(%v)\n", err)
			continue
		}
		lines := strings.SplitAfter(string(data), "\n")
		if len(lines) > maxLines {
			fmt.Fprintf(w, "(%d earlier lines)\n", len(lines)-maxLines)
			lines = lines[len(lines)-maxLines:]
		}
		for _, l := range lines {
			io.WriteString(w, l)
		}
	}
}
