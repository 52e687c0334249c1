package localcluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

func (c *Cluster) startNATS(ctx context.Context, lay *layout) error {
	port, mon := lay.NATSPort, lay.NATSMonitorPort
	c.natsMon = "http://127.0.0.1:" + strconv.Itoa(mon)
	dir := filepath.Join(c.Dir, "nats")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c.natsPort, c.natsMonPort = port, mon
	confPath := filepath.Join(dir, "nats-server.conf")
	c.natsConfPath = confPath
	if err := os.WriteFile(confPath, []byte(c.natsConf(port, mon, dir)), 0o600); err != nil {
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
	if c.creds != nil {
		args = append(args, seedArgs(c.creds.Coordinator)...)
	}
	args = append(args, c.raftTLSArgs(p.Name)...)
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
	if c.creds != nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Ready)
		err := c.ensureWorkerIdentity(ctx, name)
		cancel()
		if err != nil {
			return nil, err
		}
	}
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
	if c.creds != nil {
		c.authMu.Lock()
		p.args = append(p.args, seedArgs(c.creds.Workers[name])...)
		c.authMu.Unlock()
	}
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
