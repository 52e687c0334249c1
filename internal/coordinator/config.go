package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Peer is one coordinator of the static cluster membership.
type Peer struct {
	ID   string
	Addr string // host:port of its Raft transport
}

// ParsePeers parses "id=host:port,id=host:port" (what a Kubernetes
// StatefulSet gives: ringattn-0=ringattn-0.ringattn:7000,...).
func ParsePeers(s string) ([]Peer, error) {
	var out []Peer
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("%w: peers: %q is not id=host:port", ErrInvalid, part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: peers: %q: address %q is not host:port", ErrInvalid, id, addr)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: peers: id %q listed twice", ErrInvalid, id)
		}
		seen[id] = true
		out = append(out, Peer{ID: id, Addr: addr})
	}
	return out, nil
}

// Limits bound what a job may ask for (DESIGN §5): the job limits of
// shard.Limits, which CLI, SDK, coordinator and worker check alike
// (shard.Limits.Check), and the coordinator's own.
type Limits struct {
	shard.Limits
	// MaxQueued bounds the number of QUEUED jobs.
	MaxQueued int
	// MaxRequestBytes bounds an API request message.
	MaxRequestBytes int
	// MaxConcurrentRequests bounds the API requests the leader handles at
	// once; more are answered BUSY with a retry-after at once.
	MaxConcurrentRequests int
	// MaxConcurrentReports bounds the worker reports handled at once; more
	// are answered RETRY at once.
	MaxConcurrentReports int
}

// Config is everything a coordinator needs. Start from DefaultConfig.
type Config struct {
	// NodeID names this coordinator in the Raft configuration.
	NodeID string
	// RaftAddr is the host:port the Raft TCP transport binds.
	RaftAddr string
	// RaftAdvertise is the address peers reach this node at (default RaftAddr).
	RaftAdvertise string
	// RaftTLSCA, RaftTLSCert and RaftTLSKey turn on mutual TLS between
	// coordinators (package raftls): the CA bundle peers chain to, this
	// node's certificate and key (re-read when the files change). All three
	// or none. RaftTLSServerName is the name every coordinator's
	// certificate carries, checked both ways ("" verifies the peer's host).
	RaftTLSCA, RaftTLSCert, RaftTLSKey string
	RaftTLSServerName                  string
	// Peers is the static cluster membership (this node may be listed).
	// Every node bootstraps with the same list; a node that has state in
	// DataDir ignores it and rejoins.
	Peers []Peer
	// Bootstrap starts a single-node cluster when there are no Peers.
	Bootstrap bool
	// DataDir holds the Raft log (raft-wal) and snapshots.
	DataDir string
	// HTTPAddr serves /metrics, /healthz, /readyz and /v1/*; "" disables.
	HTTPAddr string
	// HTTPAdvertise is the host:port others reach HTTPAddr at (default:
	// HTTPAddr, an unspecified host replaced by the host name). The leader
	// advertises it so that followers' status pages link the leader's.
	HTTPAdvertise string
	// NATS is the connection to NATS (URLs, credentials, TLS, subject
	// prefix, store bucket).
	NATS transport.Config

	// HeartbeatTimeout: a worker not heard from for this long is dead.
	HeartbeatTimeout time.Duration
	// AssignTimeout bounds the wait for a worker to accept an assignment.
	AssignTimeout time.Duration
	// SchedulerInterval is the leader's scheduling tick.
	SchedulerInterval time.Duration
	// MinRankTime sizes gangs: a job gets no more ranks than keep each
	// busy at least this long at the workers' measured speed (unless its
	// spec sets parallelism); 0 gives every job as many ranks as it has
	// blocks. See DESIGN.md, "Scheduling".
	MinRankTime time.Duration
	// JobTTL: finished jobs expire (records and tensors deleted) this long
	// after they finish.
	JobTTL time.Duration
	// TombstoneTTL: expired jobs' tombstones (id, state, idempotency key)
	// are purged this long after expiring.
	TombstoneTTL time.Duration
	// MaxEpochs: a job re-planned this many times fails.
	MaxEpochs int
	// ApplyTimeout bounds one Raft apply.
	ApplyTimeout time.Duration
	// PlanTimeout bounds the planning of one epoch; a job whose plan takes
	// longer fails saying so.
	PlanTimeout time.Duration
	// ProgressTimeout is the least time a rank may go without its steps_done
	// growing (in its worker's heartbeats) before it is treated as lost and
	// re-planned; the leader waits longer for ranks whose plan predicts slow
	// steps (progressStepFactor times the expected step time).
	ProgressTimeout time.Duration
	// SweepGrace: an upload namespace that no job references and that has
	// not been written for this long is deleted by the leader's sweeper.
	SweepGrace time.Duration
	// SweepInterval is how often the leader's sweeper lists the store.
	SweepInterval time.Duration
	// MaxVerifyTries bounds how many times the output blocks of a job are
	// re-planned because the store does not hold what workers reported;
	// then the job fails naming the block.
	MaxVerifyTries int

	// Raft timing (hashicorp/raft defaults: 1 s, 1 s, 500 ms, 50 ms).
	RaftHeartbeatTimeout   time.Duration
	RaftElectionTimeout    time.Duration
	RaftLeaderLeaseTimeout time.Duration
	RaftCommitTimeout      time.Duration
	// SnapshotInterval and SnapshotThreshold: how often Raft checks, and
	// how many new entries make it snapshot.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	// SnapshotRetain is how many snapshots stay on disk.
	SnapshotRetain int

	// EnforceTenants holds each API caller to the tenant its subject names
	// (transport.APIConfig.EnforceTenants): it sees and cancels only its
	// own jobs, and only the admin token sees all. It is on whenever NATS
	// has credentials (transport.Config.HasCredentials); set it for a
	// server that authenticates clients otherwise (TLS certificates).
	EnforceTenants bool
	// OpsToken, when set, is the bearer token the ops HTTP endpoints that
	// show jobs (the status page, /v1/jobs, /v1/jobs/{id}) require
	// (`Authorization: Bearer <token>`). With EnforceTenants on and no
	// token those endpoints answer 403: they show every tenant's jobs.
	// /healthz, /readyz, /metrics and /v1/cluster stay open.
	OpsToken string
	// MaxActivePerTenant bounds the jobs one tenant has QUEUED or RUNNING
	// at once (decided in State.Apply) when tenants are enforced; 0 means
	// no limit. Without enforced tenants (no auth) it does not apply.
	MaxActivePerTenant int

	Limits Limits
	// Version is reported by the cluster endpoint and the micro service.
	Version string
}

// DefaultMinRankTime is Config.MinRankTime by default: a rank's fixed
// costs (assignment, first input fetch, ring set-up) take some 10-20 ms
// on one host, so a rank computing less than that saves little; a job of
// 6 s on one worker still gets up to 300 ranks.
const DefaultMinRankTime = 20 * time.Millisecond

// DefaultMaxActivePerTenant is Config.MaxActivePerTenant by default.
const DefaultMaxActivePerTenant = 64

// DefaultConfig returns the defaults of every field.
func DefaultConfig() Config {
	return Config{
		RaftAddr:               "127.0.0.1:7000",
		DataDir:                "ringattn-coordinator",
		HTTPAddr:               "127.0.0.1:8080",
		NATS:                   transport.DefaultConfig(),
		HeartbeatTimeout:       3 * time.Second,
		AssignTimeout:          2 * time.Second,
		SchedulerInterval:      100 * time.Millisecond,
		MinRankTime:            DefaultMinRankTime,
		JobTTL:                 24 * time.Hour,
		TombstoneTTL:           7 * 24 * time.Hour,
		MaxEpochs:              16,
		ApplyTimeout:           5 * time.Second,
		PlanTimeout:            10 * time.Second,
		ProgressTimeout:        30 * time.Second,
		SweepGrace:             time.Hour,
		SweepInterval:          5 * time.Minute,
		MaxVerifyTries:         3,
		RaftHeartbeatTimeout:   time.Second,
		RaftElectionTimeout:    time.Second,
		RaftLeaderLeaseTimeout: 500 * time.Millisecond,
		RaftCommitTimeout:      50 * time.Millisecond,
		SnapshotInterval:       30 * time.Second,
		SnapshotThreshold:      8192,
		SnapshotRetain:         2,
		MaxActivePerTenant:     DefaultMaxActivePerTenant,
		Limits: Limits{
			Limits:          shard.DefaultLimits(),
			MaxQueued:       10000,
			MaxRequestBytes: 1 << 20,
			// Each request holds at most one Raft apply; 256 in flight
			// keep a leader's pipeline full without unbounded goroutines.
			MaxConcurrentRequests: 256,
			MaxConcurrentReports:  256,
		},
		Version: "dev",
	}
}

func bad(field string, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// Validate checks every field, naming the first one that is wrong.
func (c Config) Validate() error {
	if c.NodeID == "" {
		return bad("NodeID", "empty: want a unique node name (--node-id)")
	}
	if n := btoi(c.RaftTLSCA != "") + btoi(c.RaftTLSCert != "") + btoi(c.RaftTLSKey != ""); n != 0 && n != 3 {
		return bad("RaftTLSCA", "RaftTLSCA, RaftTLSCert and RaftTLSKey: want all three files or none (--raft-tls-ca, --raft-tls-cert, --raft-tls-key)")
	}
	if c.DataDir == "" {
		return bad("DataDir", "empty: want a directory for the Raft log and snapshots")
	}
	if c.RaftAddr == "" {
		return bad("RaftAddr", "empty: want host:port")
	}
	if _, _, err := net.SplitHostPort(c.RaftAddr); err != nil {
		return bad("RaftAddr", "%q is not host:port", c.RaftAddr)
	}
	if c.RaftAdvertise != "" {
		if _, _, err := net.SplitHostPort(c.RaftAdvertise); err != nil {
			return bad("RaftAdvertise", "%q is not host:port", c.RaftAdvertise)
		}
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return bad("HTTPAddr", "%q is not host:port", c.HTTPAddr)
		}
	}
	if c.HTTPAdvertise != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAdvertise); err != nil {
			return bad("HTTPAdvertise", "%q is not host:port", c.HTTPAdvertise)
		}
	}
	seen := map[string]bool{}
	for _, p := range c.Peers {
		if p.ID == "" || p.Addr == "" || seen[p.ID] {
			return bad("Peers", "entry %+v: want unique id=host:port", p)
		}
		seen[p.ID] = true
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"HeartbeatTimeout", c.HeartbeatTimeout}, {"AssignTimeout", c.AssignTimeout},
		{"SchedulerInterval", c.SchedulerInterval}, {"JobTTL", c.JobTTL}, {"TombstoneTTL", c.TombstoneTTL},
		{"ApplyTimeout", c.ApplyTimeout}, {"RaftHeartbeatTimeout", c.RaftHeartbeatTimeout},
		{"PlanTimeout", c.PlanTimeout}, {"ProgressTimeout", c.ProgressTimeout},
		{"SweepGrace", c.SweepGrace}, {"SweepInterval", c.SweepInterval},
		{"RaftElectionTimeout", c.RaftElectionTimeout}, {"RaftLeaderLeaseTimeout", c.RaftLeaderLeaseTimeout},
		{"RaftCommitTimeout", c.RaftCommitTimeout}, {"SnapshotInterval", c.SnapshotInterval},
	} {
		if d.v <= 0 {
			return bad(d.name, "%v: want > 0", d.v)
		}
	}
	if c.MinRankTime < 0 || c.MinRankTime > time.Hour {
		return bad("MinRankTime", "%v: want 0..1h", c.MinRankTime)
	}
	if c.RaftLeaderLeaseTimeout > c.RaftHeartbeatTimeout {
		return bad("RaftLeaderLeaseTimeout", "%v: want <= RaftHeartbeatTimeout (%v)", c.RaftLeaderLeaseTimeout, c.RaftHeartbeatTimeout)
	}
	if c.MaxEpochs < 1 {
		return bad("MaxEpochs", "%d: want >= 1", c.MaxEpochs)
	}
	if c.MaxActivePerTenant < 0 {
		return bad("MaxActivePerTenant", "%d: want >= 0 (0 = no limit)", c.MaxActivePerTenant)
	}
	if c.MaxVerifyTries < 1 {
		return bad("MaxVerifyTries", "%d: want >= 1", c.MaxVerifyTries)
	}
	if c.SnapshotThreshold < 1 || c.SnapshotRetain < 1 {
		return bad("SnapshotThreshold", "threshold %d, retain %d: want >= 1", c.SnapshotThreshold, c.SnapshotRetain)
	}
	l := c.Limits
	switch {
	case l.MaxD < 1:
		return bad("Limits.MaxD", "%d: want >= 1", l.MaxD)
	case l.MaxTokens < 1:
		return bad("Limits.MaxTokens", "%d: want >= 1", l.MaxTokens)
	case l.MaxHeads < 1:
		return bad("Limits.MaxHeads", "%d: want >= 1", l.MaxHeads)
	case l.MaxBatch < 1:
		return bad("Limits.MaxBatch", "%d: want >= 1", l.MaxBatch)
	case l.MaxJobBytes < 1:
		return bad("Limits.MaxJobBytes", "%d: want >= 1", l.MaxJobBytes)
	case l.MaxDocs < 1:
		return bad("Limits.MaxDocs", "%d: want >= 1", l.MaxDocs)
	case l.MaxBlocks < 1:
		return bad("Limits.MaxBlocks", "%d: want >= 1", l.MaxBlocks)
	case l.MaxQueued < 1:
		return bad("Limits.MaxQueued", "%d: want >= 1", l.MaxQueued)
	case l.MaxRequestBytes < 1024:
		return bad("Limits.MaxRequestBytes", "%d: want >= 1024", l.MaxRequestBytes)
	case l.MaxConcurrentRequests < 1:
		return bad("Limits.MaxConcurrentRequests", "%d: want >= 1", l.MaxConcurrentRequests)
	case l.MaxConcurrentReports < 1:
		return bad("Limits.MaxConcurrentReports", "%d: want >= 1", l.MaxConcurrentReports)
	}
	if err := c.NATS.Validate(); err != nil {
		return fmt.Errorf("%w: NATS: %w", ErrInvalid, err)
	}
	return nil
}

// TensorDeleter deletes every stored tensor of a job namespace (the job id,
// or the input namespace a client uploaded under). The transport Store
// satisfies it; nil means tensors are not deleted on expiry.
type TensorDeleter interface {
	DeleteJob(ctx context.Context, job string) error
}

// Deps are the injected collaborators of a coordinator.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Gatherer serves /metrics (default: Registerer when it is a Gatherer).
	Gatherer prometheus.Gatherer
	Tensors  TensorDeleter
	// Conn is an established control-plane connection to use (and not
	// close); nil means connect with Config.NATS. Its subjects are the
	// coordinator's.
	Conn *transport.Conn
	// RaftTransport replaces the TCP transport (tests use raft's
	// InmemTransport); the coordinator closes it on Close if it is an
	// io.Closer.
	RaftTransport raft.Transport
	// Fatal is called when a committed entry cannot be applied; it must
	// not return (default: panic, stopping the process).
	Fatal func(error)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
