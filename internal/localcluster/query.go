package localcluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

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
// name `name` (with Config.Auth, as the admin: AdminConfig).
func (c *Cluster) NATSConfig(name string) transport.Config { return c.AdminConfig(name) }

// plainConfig reaches the cluster without credentials.
func (c *Cluster) plainConfig(name string) transport.Config {
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
			return fmt.Errorf("asking the leader for its workers: %w", err)
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
