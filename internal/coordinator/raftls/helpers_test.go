package raftls

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/ringattn/ringattn/internal/certs"
)

// peerName is the name every test coordinator certificate carries and the
// configured ServerName of the cluster tests.
const peerName = "coordinator.raft.test"

// checkFor polls f every `every` until it returns nil or total elapses.
func checkFor(t *testing.T, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

// testLogger is an hclog.Logger writing to t.Log until the test ends
// (raft's goroutines may log a moment after Shutdown returns).
func testLogger(t *testing.T, name string) hclog.Logger {
	w := &tbWriter{t: t}
	t.Cleanup(w.stop)
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Warn, Output: w})
}

type tbWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tbWriter) stop() { w.mu.Lock(); w.done = true; w.mu.Unlock() }

// pki is a CA in a temporary directory issuing coordinator certificates.
type pki struct {
	ca  *certs.CA
	dir string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := certs.NewCA(certs.Request{CommonName: "raft test CA"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WriteFiles(filepath.Join(dir, "ca.crt"), ""); err != nil {
		t.Fatal(err)
	}
	return &pki{ca: ca, dir: dir}
}

func (p *pki) caFile() string { return filepath.Join(p.dir, "ca.crt") }

// issue writes a server+client certificate for name (with peerName and
// 127.0.0.1 as SANs unless req says otherwise) and returns its files.
func (p *pki) issue(t *testing.T, name string, req certs.Request) (certFile, keyFile string) {
	t.Helper()
	if req.CommonName == "" {
		req.CommonName = name
	}
	if req.DNSNames == nil && req.IPs == nil {
		req.DNSNames = []string{peerName}
		req.IPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if !req.Server && !req.Client {
		req.Server, req.Client = true, true
	}
	l, err := p.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	if err := l.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// config issues a certificate for name and loads it with LoadConfig,
// trusting the CA of trust (p itself when nil), with ServerName peerName.
func (p *pki) config(t *testing.T, name string, req certs.Request, trust *pki) *tls.Config {
	t.Helper()
	if trust == nil {
		trust = p
	}
	c, k := p.issue(t, name, req)
	cfg, err := LoadConfigWithLogger(trust.caFile(), c, k, testLogger(t, name))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = peerName
	return cfg
}

// listen returns a stream layer on a free loopback port.
func listen(t *testing.T, cfg *tls.Config, opt Options) *StreamLayer {
	t.Helper()
	if opt.Logger == nil {
		opt.Logger = testLogger(t, "stream")
	}
	s, err := NewStreamLayer("127.0.0.1:0", "", cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// listenUnchecked is listen without NewStreamLayer's validation, for peers
// a correct configuration would not allow (no certificate at all).
func listenUnchecked(t *testing.T, cfg *tls.Config) *StreamLayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newStreamLayer(ln, ln.Addr(), cfg, Options{Logger: testLogger(t, "rogue")})
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// countFSM records the applied entries.
type countFSM struct {
	mu      sync.Mutex
	entries []string
}

func (f *countFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, string(l.Data))
	return len(f.entries)
}

func (f *countFSM) len() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.entries) }

func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return snap(strings.Join(f.entries, "\n")), nil
}

func (f *countFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = nil
	if len(b) > 0 {
		f.entries = strings.Split(string(b), "\n")
	}
	return nil
}

type snap string

func (s snap) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write([]byte(s)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snap) Release() {}

// node is a real raft server: raft-wal log and stable store (as the
// coordinator uses), a file snapshot store and a NetworkTransport over
// the stream layer.
type node struct {
	id     raft.ServerID
	stream *StreamLayer
	trans  *raft.NetworkTransport
	raft   *raft.Raft
	fsm    *countFSM
}

func (n *node) addr() raft.ServerAddress { return n.trans.LocalAddr() }

// newNode wraps stream in a transport; start starts raft on it.
func newNode(t *testing.T, id string, stream *StreamLayer) *node {
	t.Helper()
	trans := raft.NewNetworkTransportWithLogger(stream, 3, 2*time.Second, testLogger(t, id+"-transport"))
	return &node{id: raft.ServerID(id), stream: stream, trans: trans, fsm: &countFSM{}}
}

func (n *node) start(t *testing.T, servers []raft.Server, preVote bool) {
	t.Helper()
	dir := t.TempDir()
	walDir := filepath.Join(dir, "wal")
	if err := os.MkdirAll(walDir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(walDir, wal.WithMetaStore(meta))
	if err != nil {
		t.Fatal(err)
	}
	hl := testLogger(t, string(n.id))
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 1, hl)
	if err != nil {
		t.Fatal(err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = n.id
	rc.HeartbeatTimeout = 300 * time.Millisecond
	rc.ElectionTimeout = 300 * time.Millisecond
	rc.LeaderLeaseTimeout = 150 * time.Millisecond
	rc.CommitTimeout = 5 * time.Millisecond
	rc.PreVoteDisabled = !preVote
	rc.Logger = hl
	if err := raft.BootstrapCluster(rc, w, w, snaps, n.trans, raft.Configuration{Servers: servers}); err != nil {
		t.Fatal(err)
	}
	r, err := raft.NewRaft(rc, n.fsm, w, w, snaps, n.trans)
	if err != nil {
		t.Fatal(err)
	}
	n.raft = r
	t.Cleanup(func() {
		if err := r.Shutdown().Error(); err != nil {
			t.Errorf("%s: shutdown: %v", n.id, err)
		}
		_ = n.trans.Close()
		_ = w.Close()
		_ = meta.Close()
	})
}

// cluster starts len(cfgs) voters bootstrapped together and waits for a
// leader.
func cluster(t *testing.T, cfgs []*tls.Config) []*node {
	t.Helper()
	var nodes []*node
	var servers []raft.Server
	for i, cfg := range cfgs {
		n := newNode(t, fmt.Sprintf("c%d", i), listen(t, cfg, Options{}))
		nodes = append(nodes, n)
		servers = append(servers, raft.Server{ID: n.id, Address: n.addr(), Suffrage: raft.Voter})
	}
	for _, n := range nodes {
		n.start(t, servers, true)
	}
	leader(t, nodes)
	return nodes
}

// leader waits until exactly one node leads and the others know it.
func leader(t *testing.T, nodes []*node) *node {
	t.Helper()
	var l *node
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		l = nil
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				if l != nil {
					return fmt.Errorf("two leaders: %s and %s", l.id, n.id)
				}
				l = n
			}
		}
		if l == nil {
			return fmt.Errorf("no leader")
		}
		for _, n := range nodes {
			if _, id := n.raft.LeaderWithID(); id != l.id {
				return fmt.Errorf("%s: leader %q, want %s", n.id, id, l.id)
			}
		}
		return nil
	})
	return l
}

// waitApplied waits until every node's FSM holds want entries.
func waitApplied(t *testing.T, nodes []*node, want int) {
	t.Helper()
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for _, n := range nodes {
			if got := n.fsm.len(); got != want {
				return fmt.Errorf("%s applied %d entries, want %d", n.id, got, want)
			}
		}
		return nil
	})
}

func apply(t *testing.T, l *node, from, count int) {
	t.Helper()
	for i := from; i < from+count; i++ {
		if err := l.raft.Apply([]byte(fmt.Sprintf("entry-%d", i)), 5*time.Second).Error(); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
}
