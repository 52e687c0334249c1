package raftls

import (
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ringattn/ringattn/internal/certs"
)

// TestRaftTLSClusterReplicates: three coordinators over mutual TLS elect a
// leader and replicate; every connection between them passed the
// handshake and none was refused.
func TestRaftTLSClusterReplicates(t *testing.T) {
	p := newPKI(t)
	nodes := cluster(t, []*tls.Config{
		p.config(t, "c0", certs.Request{}, nil),
		p.config(t, "c1", certs.Request{}, nil),
		p.config(t, "c2", certs.Request{}, nil),
	})
	l := leader(t, nodes)
	apply(t, l, 0, 20)
	waitApplied(t, nodes, 20)
	for _, n := range nodes {
		st := n.stream.Stats()
		if st.Refused != 0 || st.Overloaded != 0 {
			t.Errorf("%s: %+v, want no refused connections", n.id, st)
		}
		if n != l && st.Accepted == 0 {
			t.Errorf("follower %s accepted no connection", n.id)
		}
	}
	// A leader change still works over TLS.
	if err := l.raft.LeadershipTransfer().Error(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	l2 := leader(t, nodes)
	if l2 == l {
		t.Fatalf("leader still %s after a transfer", l.id)
	}
	apply(t, l2, 20, 5)
	waitApplied(t, nodes, 25)
}

// TestRaftTLSUntrustedNodeCannotJoin: a node whose certificate the cluster
// must not accept — signed by another CA, no certificate at all, expired,
// or from the right CA without the coordinators' name (a worker's) — is
// added as a voter by the leader, bootstraps itself with the cluster's
// membership and campaigns. It never receives an entry, its vote requests
// and forged AppendEntries are refused at the handshake, the cluster keeps
// its leader and term and goes on committing.
func TestRaftTLSUntrustedNodeCannotJoin(t *testing.T) {
	p := newPKI(t)
	cfgs := []*tls.Config{
		p.config(t, "c0", certs.Request{}, nil),
		p.config(t, "c1", certs.Request{}, nil),
		p.config(t, "c2", certs.Request{}, nil),
	}
	nodes := cluster(t, cfgs)
	l := leader(t, nodes)
	apply(t, l, 0, 3)
	waitApplied(t, nodes, 3)
	entries := 3

	other := newPKI(t)
	now := time.Now()
	rogues := []struct {
		name string
		make func(t *testing.T) *StreamLayer
	}{
		{"other CA", func(t *testing.T) *StreamLayer {
			// Signed by another CA, trusting the cluster's CA (so it
			// would happily talk to the real nodes).
			return listen(t, other.config(t, "rogue", certs.Request{}, p), Options{})
		}},
		{"no certificate", func(t *testing.T) *StreamLayer {
			cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: peerName, MinVersion: tls.VersionTLS13}
			return listenUnchecked(t, cfg)
		}},
		{"expired", func(t *testing.T) *StreamLayer {
			return listen(t, p.config(t, "expired", certs.Request{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, nil), Options{})
		}},
		{"not yet valid", func(t *testing.T) *StreamLayer {
			return listen(t, p.config(t, "future", certs.Request{NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)}, nil), Options{})
		}},
		{"worker certificate", func(t *testing.T) *StreamLayer {
			// The right CA, but not a coordinator's name.
			return listen(t, p.config(t, "worker", certs.Request{DNSNames: []string{"worker.test"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, nil), Options{})
		}},
	}
	for i, rc := range rogues {
		t.Run(rc.name, func(t *testing.T) {
			term := l.raft.CurrentTerm()
			before := refusedAt(nodes)
			rogue := newNode(t, fmt.Sprintf("rogue%d", i), rc.make(t))

			// Votes: straight RequestVote and AppendEntries RPCs with a
			// higher term fail, and the real node does not see them.
			hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(rogue.id), Addr: []byte(rogue.addr())}
			for _, n := range nodes {
				var vr raft.RequestVoteResponse
				err := rogue.trans.RequestVote(n.id, n.addr(), &raft.RequestVoteRequest{
					RPCHeader: hdr, Term: term + 100, LastLogIndex: 1 << 40, LastLogTerm: term + 99,
				}, &vr)
				if err == nil {
					t.Fatalf("%s granted a RequestVote RPC (granted=%v)", n.id, vr.Granted)
				}
				var ar raft.AppendEntriesResponse
				err = rogue.trans.AppendEntries(n.id, n.addr(), &raft.AppendEntriesRequest{
					RPCHeader: hdr, Term: term + 100, LeaderCommitIndex: 1 << 40,
				}, &ar)
				if err == nil {
					t.Fatalf("%s answered a forged AppendEntries (success=%v)", n.id, ar.Success)
				}
			}

			// Campaign: the rogue thinks it belongs to a four-voter
			// cluster that has no leader, and asks everyone for votes.
			servers := []raft.Server{{ID: rogue.id, Address: rogue.addr(), Suffrage: raft.Voter}}
			for _, n := range nodes {
				servers = append(servers, raft.Server{ID: n.id, Address: n.addr(), Suffrage: raft.Voter})
			}
			rogue.start(t, servers, false)

			// Join: the leader adds it; its replication attempts are
			// refused at the rogue's listener or by the leader's own
			// verification of the rogue's certificate.
			if err := l.raft.AddVoter(rogue.id, rogue.addr(), 0, 5*time.Second).Error(); err != nil {
				t.Fatalf("AddVoter: %v", err)
			}
			apply(t, l, entries, 5)
			entries += 5
			waitApplied(t, nodes, entries)
			checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
				if n := rogue.stream.Stats().Refused; n < 3 {
					return fmt.Errorf("rogue refused %d of the leader's connections, want >= 3", n)
				}
				if got := refusedAt(nodes) - before; got < 3 {
					return fmt.Errorf("the cluster refused %d of the rogue's connections, want >= 3", got)
				}
				if term := rogue.raft.CurrentTerm(); term < 2 {
					return fmt.Errorf("rogue at term %d: has not campaigned yet", term)
				}
				return nil
			})
			if got := rogue.fsm.len(); got != 0 {
				t.Errorf("rogue applied %d entries", got)
			}
			if idx := rogue.raft.LastIndex(); idx > 1 { // 1: its own bootstrap configuration
				t.Errorf("rogue's log reached index %d", idx)
			}
			if rogue.raft.State() == raft.Leader {
				t.Error("rogue became leader")
			}
			if got := leader(t, nodes); got != l || l.raft.CurrentTerm() != term {
				t.Errorf("leader %s term %d, want %s term %d: the rogue disrupted the cluster", got.id, l.raft.CurrentTerm(), l.id, term)
			}
			if st := rogue.stream.Stats(); st.Accepted != 0 {
				t.Errorf("rogue accepted %d connections", st.Accepted)
			}

			// Leave the cluster as it was: three voters.
			if err := l.raft.RemoveServer(rogue.id, 0, 5*time.Second).Error(); err != nil {
				t.Fatalf("RemoveServer: %v", err)
			}
			apply(t, l, entries, 1)
			entries++
			waitApplied(t, nodes, entries)
		})
	}
}

func refusedAt(nodes []*node) uint64 {
	var n uint64
	for _, x := range nodes {
		n += x.stream.Stats().Refused
	}
	return n
}
