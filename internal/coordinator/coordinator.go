package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/internal/coordinator/raftls"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Coordinator is one member of the Raft-replicated control plane. Every
// member applies the log to its State; the leader alone also runs the
// scheduler, the client API and the worker control plane (see leader.go).
type Coordinator struct {
	cfg  Config
	log  *slog.Logger
	deps Deps
	subj transport.Subjects
	now  func() time.Time

	fsm   *fsm
	raft  *raft.Raft
	wal   *wal.WAL
	meta  *metadb.BoltMetaDB
	trans raft.Transport
	conn  *transport.Conn
	// stores reaches each tenant's bucket (nil when Deps.Tensors was
	// injected: then that one store serves every tenant).
	stores *bucketStores
	// closeNC closes the NATS connection New opened (nil: Deps.Conn's,
	// which the caller keeps).
	closeNC func()
	met     *metrics
	httpL   net.Listener
	httpS   *http.Server

	hooks hookPtr // test seams (contain.go)
	// leaderURL: a follower's last lookup of the leader's ops URL.
	leaderURL leaderURLCache

	mu     sync.Mutex
	leader *leader // the running leader session, if any
	closed bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// New validates cfg, opens the Raft stores in cfg.DataDir, bootstraps the
// cluster when this is a fresh node with Peers (or Bootstrap), connects to
// NATS and starts following the log. It returns once Raft runs; the node
// serves the API when it becomes the leader.
func New(cfg Config, deps Deps) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Registerer == nil {
		deps.Registerer = prometheus.NewRegistry()
	}
	if deps.Gatherer == nil {
		if g, ok := deps.Registerer.(prometheus.Gatherer); ok {
			deps.Gatherer = g
		}
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	c := &Coordinator{
		cfg:  cfg,
		log:  deps.Logger.With("node", cfg.NodeID),
		deps: deps,
		subj: cfg.NATS.Subjects(),
		now:  deps.Now,
		stop: make(chan struct{}),
	}
	c.fsm = newFSM(deps.Fatal)
	c.fsm.onApply = c.observeApply
	ok := false
	defer func() {
		if !ok {
			c.closeResources()
		}
	}()
	if err := c.openRaft(); err != nil {
		return nil, err
	}
	var err error
	if c.met, err = newMetrics(deps.Registerer, c); err != nil {
		return nil, err
	}
	if deps.Conn != nil {
		c.conn = deps.Conn
		c.subj = c.conn.Subjects()
	} else {
		nc, err := transport.ConnectWait(c.natsConfig(), c.log, natsStartWait)
		if err != nil {
			return nil, err
		}
		c.closeNC = func() {
			// Closing is not a disconnect worth a warning.
			nc.SetDisconnectErrHandler(nil)
			nc.Close()
		}
		c.conn = transport.NewConn(nc, c.subj, c.log)
	}
	var sd *storeDeleter
	if c.deps.Tensors == nil {
		sc := cfg.NATS.StoreConfig()
		sc.Bucket = c.bucket()
		c.stores = newBucketStores(c.conn, sc, c.log)
		sd = c.stores.bucket(sc.Bucket)
		c.deps.Tensors = sd
	}
	if cfg.HTTPAddr != "" {
		if err := c.startHTTP(); err != nil {
			return nil, err
		}
	}
	if sd != nil {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			sd.openAtStart(c.stop)
		}()
	}
	c.wg.Add(1)
	go c.watchLeadership()
	ok = true
	return c, nil
}

// hclogAdapter sends raft's hclog output to slog.
func hclogAdapter(l *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   name,
		Level:  hclog.Info,
		Output: slogWriter{l},
	})
}

type slogWriter struct{ l *slog.Logger }

// raftExpected are hashicorp/raft warnings that a normal start or stop
// logs: the first election of a node that never had a leader (every
// cluster's start, a single node's bootstrap). They are logged at INFO so
// that a WARN means something went wrong; the same election after a
// leader was known (last-leader-id set) stays a WARN.
var raftExpected = []string{
	"heartbeat timeout reached, starting election: last-leader-addr= last-leader-id=",
}

// hclogLevels maps hclog's level tags to slog levels.
var hclogLevels = []struct {
	tag string
	lv  slog.Level
}{
	{"[ERROR]", slog.LevelError}, {"[WARN]", slog.LevelWarn}, {"[INFO]", slog.LevelInfo},
	{"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug},
}

// Write logs one hclog line ("<time> [LEVEL]  raft: message: k=v") as the
// message after the level tag (slog adds its own time and level).
func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	lv := slog.LevelInfo
	for _, h := range hclogLevels {
		if i := strings.Index(line, h.tag); i >= 0 {
			lv, line = h.lv, strings.TrimSpace(line[i+len(h.tag):])
			break
		}
	}
	if lv == slog.LevelWarn {
		for _, s := range raftExpected {
			if strings.HasSuffix(line, s) {
				lv = slog.LevelInfo
			}
		}
	}
	w.l.Log(context.Background(), lv, line, "component", "raft")
	return len(p), nil
}

func (c *Coordinator) openRaft() error {
	cfg := c.cfg
	walDir := filepath.Join(cfg.DataDir, "raft-wal")
	if err := os.MkdirAll(walDir, 0o755); err != nil {
		return fmt.Errorf("coordinator: data dir: %w", err)
	}
	var err error
	// raft-wal's Close leaves its metadata DB open (and file-locked), so
	// the coordinator owns that store and closes it itself.
	c.meta = &metadb.BoltMetaDB{}
	if c.wal, err = wal.Open(walDir, wal.WithMetaStore(c.meta)); err != nil {
		return fmt.Errorf("coordinator: open raft log in %s: %w", walDir, err)
	}
	hl := hclogAdapter(c.log, "raft")
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, cfg.SnapshotRetain, hl)
	if err != nil {
		return fmt.Errorf("coordinator: snapshot store in %s: %w", cfg.DataDir, err)
	}
	advertise := cfg.RaftAdvertise
	if advertise == "" {
		advertise = cfg.RaftAddr
	}
	if c.deps.RaftTransport != nil {
		c.trans = c.deps.RaftTransport
		advertise = string(c.trans.LocalAddr())
	} else if cfg.RaftTLSCA != "" {
		tlsCfg, err := raftls.LoadConfigWithLogger(cfg.RaftTLSCA, cfg.RaftTLSCert, cfg.RaftTLSKey, hl)
		if err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		tlsCfg.ServerName = cfg.RaftTLSServerName
		// Assigned only on success: a typed nil in c.trans would make
		// closeResources call Close on a nil transport.
		t, err := raftls.NewTransport(cfg.RaftAddr, advertise, tlsCfg, 3, 10*time.Second, hl)
		if err != nil {
			return fmt.Errorf("coordinator: raft TLS transport on %s: %w", cfg.RaftAddr, err)
		}
		c.trans = t
	} else {
		adv, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return fmt.Errorf("coordinator: RaftAdvertise %q: %w", advertise, err)
		}
		t, err := raft.NewTCPTransportWithLogger(cfg.RaftAddr, adv, 3, 10*time.Second, hl)
		if err != nil {
			return fmt.Errorf("coordinator: raft transport on %s: %w", cfg.RaftAddr, err)
		}
		c.trans = t
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.RaftHeartbeatTimeout
	rc.ElectionTimeout = cfg.RaftElectionTimeout
	rc.LeaderLeaseTimeout = cfg.RaftLeaderLeaseTimeout
	rc.CommitTimeout = cfg.RaftCommitTimeout
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.Logger = hl
	if err := raft.ValidateConfig(rc); err != nil {
		return fmt.Errorf("%w: raft: %w", ErrInvalid, err)
	}
	if cfg.Bootstrap || len(cfg.Peers) > 0 {
		has, err := raft.HasExistingState(c.wal, c.wal, snaps)
		if err != nil {
			return fmt.Errorf("coordinator: reading raft state: %w", err)
		}
		if !has {
			servers := []raft.Server{}
			self := false
			for _, p := range cfg.Peers {
				servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Addr), Suffrage: raft.Voter})
				self = self || p.ID == cfg.NodeID
			}
			if !self {
				servers = append(servers, raft.Server{ID: rc.LocalID, Address: raft.ServerAddress(advertise), Suffrage: raft.Voter})
			}
			err := raft.BootstrapCluster(rc, c.wal, c.wal, snaps, c.trans, raft.Configuration{Servers: servers})
			if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				return fmt.Errorf("coordinator: bootstrap: %w", err)
			}
			c.log.Info("bootstrapped raft cluster", "servers", len(servers))
		}
	}
	if c.raft, err = raft.NewRaft(rc, c.fsm, c.wal, c.wal, snaps, c.trans); err != nil {
		return fmt.Errorf("coordinator: start raft: %w", err)
	}
	return nil
}

// watchLeadership starts a leader session when this node becomes the
// leader and stops it when it is not any more.
func (c *Coordinator) watchLeadership() {
	defer c.wg.Done()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			c.stopLeader()
			return
		case <-c.raft.LeaderCh():
		case <-t.C:
		}
		isLeader := c.raft.State() == raft.Leader
		c.mu.Lock()
		running := c.leader != nil
		c.mu.Unlock()
		switch {
		case isLeader && !running:
			c.startLeader()
		case !isLeader && running:
			c.stopLeader()
		}
	}
}

func (c *Coordinator) startLeader() {
	l := newLeader(c)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.leader = l
	c.mu.Unlock()
	c.log.Info("became leader; starting scheduler and API", "term", c.raft.CurrentTerm())
	l.start()
}

func (c *Coordinator) stopLeader() {
	c.mu.Lock()
	l := c.leader
	c.leader = nil
	c.mu.Unlock()
	if l != nil {
		c.log.Info("leadership lost or node stopping; stopping scheduler and API")
		l.stop()
	}
}

func (c *Coordinator) currentLeader() *leader {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// apply proposes a command and waits for it to be committed and applied
// here. Raft errors (not the leader, leadership lost, timeout) wrap
// ErrNotLeader; business errors come back in Result.Err.
func (c *Coordinator) apply(typ cpb.CommandType, m proto.Message) (*Result, error) {
	data, err := encodeCommand(typ, m)
	if err != nil {
		return nil, err
	}
	f := c.raft.Apply(data, c.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("%w: %v: %v", ErrNotLeader, typ, err)
	}
	r, ok := f.Response().(*Result)
	if !ok {
		return nil, fmt.Errorf("coordinator: apply %v: no result", typ)
	}
	return r, nil
}

// observeApply runs after every applied command on every node.
func (c *Coordinator) observeApply(_ uint64, _ *cpb.Command, _ *Result) {
	if l := c.currentLeader(); l != nil {
		l.wake()
	}
}

// natsConfig is Config.NATS as the coordinator's identity: its inbox
// (the one its permissions allow) unless one is set already.
func (c *Coordinator) natsConfig() transport.Config {
	nc := c.cfg.NATS
	if nc.InboxPrefix == "" {
		nc = nc.ForRole(transport.RoleCoordinator, c.cfg.NodeID)
	}
	return nc
}

// enforceTenants reports whether API callers are held to their tenant:
// Config.EnforceTenants, or whenever the NATS connection has credentials
// (the server's permissions then pin each tenant to its subjects).
func (c *Coordinator) enforceTenants() bool {
	return c.cfg.EnforceTenants || c.cfg.NATS.HasCredentials()
}

// bucket is the base object store bucket of the tensors (the default
// tenant's; transport.TenantBucket names the others').
func (c *Coordinator) bucket() string {
	if b := c.cfg.NATS.Bucket; b != "" {
		return b
	}
	return transport.DefaultBucket
}

// NodeID returns this node's id.
func (c *Coordinator) NodeID() string { return c.cfg.NodeID }

// IsLeader reports whether this node is the Raft leader.
func (c *Coordinator) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the id of the leader this node knows of ("" if none).
func (c *Coordinator) Leader() string {
	_, id := c.raft.LeaderWithID()
	return string(id)
}

// Serving reports whether this node runs the leader's API and scheduler.
func (c *Coordinator) Serving() bool {
	l := c.currentLeader()
	return l != nil && l.isReady()
}

// State returns a deep copy of this node's replicated state.
func (c *Coordinator) State() *State {
	var s *State
	c.fsm.view(func(st *State) { s = st.Clone() })
	return s
}

// AppliedIndex is the index of the last log entry applied here.
func (c *Coordinator) AppliedIndex() uint64 { return c.raft.AppliedIndex() }

// Snapshot forces a Raft snapshot (operations, tests).
func (c *Coordinator) Snapshot() error { return c.raft.Snapshot().Error() }

// Close stops the leader session, the HTTP server and Raft, and closes the
// stores (and the NATS connection if New opened it).
//
// A leader first hands leadership to another voter (raft leadership
// transfer), so a planned stop (SIGTERM, rolling upgrade) interrupts the
// API only for the handoff instead of an election timeout.
func (c *Coordinator) Close() error { return c.close(true) }

// crash stops without handing leadership over: to others it looks like
// the node died (tests).
func (c *Coordinator) crash() error { return c.close(false) }

func (c *Coordinator) close(handoff bool) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	if handoff && c.raft.State() == raft.Leader && c.otherVoters() > 0 {
		start := c.now()
		if err := c.raft.LeadershipTransfer().Error(); err != nil {
			c.log.Warn("leadership transfer failed; stopping anyway", "err", err)
		} else {
			c.log.Info("leadership handed over", "to", c.Leader(), "took", c.now().Sub(start))
		}
	}
	close(c.stop)
	var errs []error
	if c.httpS != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, c.httpS.Shutdown(ctx))
		cancel()
		c.httpS = nil
	}
	c.wg.Wait()
	return errors.Join(append(errs, c.closeResources())...)
}

func (c *Coordinator) otherVoters() int {
	f := c.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	n := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != c.cfg.NodeID {
			n++
		}
	}
	return n
}

func (c *Coordinator) closeResources() error {
	var errs []error
	if c.httpS != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, c.httpS.Shutdown(ctx))
		cancel()
	}
	if c.raft != nil {
		errs = append(errs, c.raft.Shutdown().Error())
	}
	if cl, ok := c.trans.(io.Closer); ok && c.trans != nil {
		errs = append(errs, cl.Close())
	}
	if c.wal != nil {
		errs = append(errs, c.wal.Close())
	}
	if c.meta != nil {
		errs = append(errs, c.meta.Close())
	}
	if c.closeNC != nil {
		c.closeNC()
	}
	if c.met != nil {
		c.met.unregister()
	}
	return errors.Join(errs...)
}

// natsStartWait is how long a starting coordinator waits for NATS to
// answer: processes of a cluster start in any order.
const natsStartWait = 60 * time.Second
