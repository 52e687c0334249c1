package raftls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ringattn/ringattn/internal/certs"
)

// roundTrip dials to from `from`, has `to` accept, and returns the serial
// numbers each side saw of the other's certificate.
func roundTrip(t *testing.T, from, to *StreamLayer) (serverSaw, clientSaw *big.Int, err error) {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	acc := make(chan res, 1)
	go func() { c, err := to.Accept(); acc <- res{c, err} }()
	c, err := from.Dial(raft.ServerAddress(to.ListenAddr().String()), 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close()
	// In TLS 1.3 the client finishes its handshake before the server
	// has checked the client's certificate: a byte each way proves
	// both sides accepted.
	if _, err := c.Write([]byte{1}); err != nil {
		return nil, nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	select {
	case r := <-acc:
		if r.err != nil {
			return nil, nil, r.err
		}
		defer r.c.Close()
		if _, err := io.ReadFull(r.c, make([]byte, 1)); err != nil {
			return nil, nil, err
		}
		if _, err := r.c.Write([]byte{2}); err != nil {
			return nil, nil, err
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return nil, nil, err
		}
		sc := r.c.(*tls.Conn).ConnectionState()
		cc := c.(*tls.Conn).ConnectionState()
		if sc.Version != tls.VersionTLS13 || cc.Version != tls.VersionTLS13 {
			t.Errorf("TLS versions %x/%x, want 1.3", sc.Version, cc.Version)
		}
		return sc.PeerCertificates[0].SerialNumber, cc.PeerCertificates[0].SerialNumber, nil
	case <-time.After(5 * time.Second):
		// The server refused: the client learns it on its first read.
		_, err := c.Read(make([]byte, 1))
		return nil, nil, fmt.Errorf("not accepted; client read: %v", err)
	}
}

func serialOf(t *testing.T, certFile string) *big.Int {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, strings.TrimSuffix(certFile, ".crt")+".key")
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber
}

// TestRaftTLSRotation: LoadConfig picks up renewed certificates on both
// sides from the next handshake on, without a restart; a half-finished
// rotation (key not matching yet) keeps the previous pair until it is
// complete; a renewed certificate from another CA is refused by peers.
func TestRaftTLSRotation(t *testing.T) {
	p := newPKI(t)
	server := listen(t, p.config(t, "server", certs.Request{}, nil), Options{})
	client := listen(t, p.config(t, "client", certs.Request{}, nil), Options{})
	sCert, cCert := filepath.Join(p.dir, "server.crt"), filepath.Join(p.dir, "client.crt")

	want := func(wantServer, wantClient *big.Int) {
		t.Helper()
		sawClient, sawServer, err := roundTrip(t, client, server)
		if err != nil {
			t.Fatal(err)
		}
		if sawServer.Cmp(wantServer) != 0 || sawClient.Cmp(wantClient) != 0 {
			t.Fatalf("client saw server serial %x (want %x), server saw client serial %x (want %x)", sawServer, wantServer, sawClient, wantClient)
		}
	}
	s1, c1 := serialOf(t, sCert), serialOf(t, cCert)
	want(s1, c1)

	// Renew both (same names, new keys), as cert-manager does.
	p.issue(t, "server", certs.Request{})
	p.issue(t, "client", certs.Request{})
	s2, c2 := serialOf(t, sCert), serialOf(t, cCert)
	if s2.Cmp(s1) == 0 || c2.Cmp(c1) == 0 {
		t.Fatal("renewal kept the serial numbers")
	}
	want(s2, c2)

	// Mid-rotation: a new certificate whose key has not arrived yet.
	l, err := p.ca.Issue(certs.Request{CommonName: "server", DNSNames: []string{peerName}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteFile(sCert, l.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	want(s2, c2)
	// The key arrives: the new pair is used.
	if err := certs.WriteFile(filepath.Join(p.dir, "server.key"), l.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	want(l.Cert.SerialNumber, c2)

	// A client renewed by another CA is refused by the server.
	other := newPKI(t)
	ol, err := other.ca.Issue(certs.Request{CommonName: "client", DNSNames: []string{peerName}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := ol.WriteFiles(cCert, filepath.Join(p.dir, "client.key")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := roundTrip(t, client, server); err == nil {
		t.Fatal("a certificate from another CA was accepted after rotation")
	}
	if st := server.Stats(); st.Refused == 0 {
		t.Errorf("server stats %+v, want a refused handshake", st)
	}
}

// TestRaftTLSHandshakeDeadline: a peer that connects and says nothing is
// disconnected after HandshakeTimeout, and meanwhile a real peer gets in.
func TestRaftTLSHandshakeDeadline(t *testing.T) {
	p := newPKI(t)
	const timeout = 300 * time.Millisecond
	server := listen(t, p.config(t, "server", certs.Request{}, nil), Options{HandshakeTimeout: timeout})
	client := listen(t, p.config(t, "client", certs.Request{}, nil), Options{})

	silent, err := net.Dial("tcp", server.ListenAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	if _, _, err := roundTrip(t, client, server); err != nil {
		t.Fatalf("a real peer waited behind a silent one: %v", err)
	}
	_ = silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := silent.Read(make([]byte, 1))
	took := time.Since(start)
	if n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent peer read %d bytes, %v: want the server to close it", n, err)
	}
	if took < timeout-50*time.Millisecond || took > timeout+3*time.Second {
		t.Errorf("silent peer closed after %v, want about %v", took, timeout)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := server.Stats(); st.Refused != 1 || st.Accepted != 1 {
			return fmt.Errorf("stats %+v, want 1 refused (the silent peer), 1 accepted", st)
		}
		return nil
	})
}

// TestRaftTLSPendingLimit: MaxPendingHandshakes silent connections are
// held (at the limit); one more is closed at once (past it); once the
// deadline frees the slots, a real peer gets in.
func TestRaftTLSPendingLimit(t *testing.T) {
	p := newPKI(t)
	const limit = 3
	const timeout = 2 * time.Second
	server := listen(t, p.config(t, "server", certs.Request{}, nil), Options{HandshakeTimeout: timeout, MaxPendingHandshakes: limit})
	client := listen(t, p.config(t, "client", certs.Request{}, nil), Options{})
	addr := server.ListenAddr().String()

	var held []net.Conn
	for range limit {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := len(server.slots); n != limit {
			return fmt.Errorf("%d handshakes pending, want %d", n, limit)
		}
		return nil
	})
	for i, c := range held {
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection %d at the limit: %v, want it held open", i, err)
		}
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(timeout / 2))
	if _, err := extra.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection past the limit: %v, want closed at once (EOF)", err)
	}
	if st := server.Stats(); st.Overloaded != 1 {
		t.Errorf("stats %+v, want 1 overloaded", st)
	}
	// The deadline frees the slots.
	checkFor(t, 3*timeout, 20*time.Millisecond, func() error {
		if n := len(server.slots); n != 0 {
			return fmt.Errorf("%d handshakes pending", n)
		}
		return nil
	})
	if _, _, err := roundTrip(t, client, server); err != nil {
		t.Fatalf("after the silent peers timed out: %v", err)
	}
}

// TestRaftTLSOldVersionRefused: a TLS 1.2 client with a valid certificate
// is refused.
func TestRaftTLSOldVersionRefused(t *testing.T) {
	p := newPKI(t)
	server := listen(t, p.config(t, "server", certs.Request{}, nil), Options{})
	cfg := p.config(t, "client", certs.Request{}, nil)
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	c, err := tls.Dial("tcp", server.ListenAddr().String(), cfg)
	if err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.2 handshake: %v, want a protocol version error", err)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := server.Stats(); st.Refused != 1 {
			return fmt.Errorf("stats %+v, want 1 refused", st)
		}
		return nil
	})
}

// TestRaftTLSHostVerification: without a configured ServerName the dialer
// verifies the peer's certificate against the host of its raft address
// and any certificate of the CA may connect as a client.
func TestRaftTLSHostVerification(t *testing.T) {
	p := newPKI(t)
	load := func(name string, req certs.Request) *tls.Config {
		c, k := p.issue(t, name, req)
		cfg, err := LoadConfig(p.caFile(), c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	ip := certs.Request{IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}
	good := listen(t, load("good", ip), Options{})
	wrong := listen(t, load("wrong", certs.Request{DNSNames: []string{"elsewhere.test"}}), Options{})
	client := listen(t, load("client", certs.Request{DNSNames: []string{"any.test"}}), Options{})
	if _, _, err := roundTrip(t, client, good); err != nil {
		t.Fatalf("certificate valid for 127.0.0.1: %v", err)
	}
	_, err := client.Dial(raft.ServerAddress(wrong.ListenAddr().String()), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1 because it doesn't contain any IP SANs") {
		t.Fatalf("certificate for another host: %v, want a name mismatch", err)
	}
	if _, err := client.Dial("no-port", time.Second); err == nil {
		t.Fatal("dialled an address without a port")
	}
}

// TestRaftTLSNewTransport: NewTransport carries a raft RPC over mutual TLS
// and advertises what it was told.
func TestRaftTLSNewTransport(t *testing.T) {
	p := newPKI(t)
	a, err := NewTransport("127.0.0.1:0", "", p.config(t, "a", certs.Request{}, nil), 2, 5*time.Second, testLogger(t, "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := NewTransport("127.0.0.1:0", "", p.config(t, "b", certs.Request{}, nil), 2, 5*time.Second, testLogger(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	go func() {
		rpc := <-b.Consumer()
		req := rpc.Command.(*raft.AppendEntriesRequest)
		rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
	}()
	var resp raft.AppendEntriesResponse
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("a"), Addr: []byte(a.LocalAddr())}
	if err := a.AppendEntries("b", b.LocalAddr(), &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 7}, &resp); err != nil {
		t.Fatal(err)
	}
	if !resp.Success || resp.Term != 7 {
		t.Fatalf("response %+v", resp)
	}

	c, err := NewTransport("127.0.0.1:0", "coordinator-0.raft.test:7000", p.config(t, "c", certs.Request{}, nil), 2, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr(); got != "coordinator-0.raft.test:7000" {
		t.Errorf("advertised %q", got)
	}
}

// TestRaftTLSConfigErrors: each unusable configuration is refused with a
// line naming what is missing.
func TestRaftTLSConfigErrors(t *testing.T) {
	p := newPKI(t)
	good := p.config(t, "good", certs.Request{}, nil)
	cert, key := filepath.Join(p.dir, "good.crt"), filepath.Join(p.dir, "good.key")
	leaf, err := p.ca.Issue(certs.Request{CommonName: "x", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := leaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(*tls.Config)) *tls.Config { c := good.Clone(); f(c); return c }
	for _, c := range []struct {
		name      string
		cfg       *tls.Config
		bind, adv string
		opt       Options
		want      string
	}{
		{"nil config", nil, "127.0.0.1:0", "", Options{}, "no TLS config"},
		{"no certificate", edit(func(c *tls.Config) { c.GetCertificate = nil }), "127.0.0.1:0", "", Options{}, "no certificate"},
		{"no client certificate", edit(func(c *tls.Config) { c.GetClientCertificate = nil }), "127.0.0.1:0", "", Options{}, "no client certificate"},
		{"no CA", edit(func(c *tls.Config) { c.RootCAs = nil }), "127.0.0.1:0", "", Options{}, "no CA pool"},
		{"insecure", edit(func(c *tls.Config) { c.InsecureSkipVerify = true }), "127.0.0.1:0", "", Options{}, "InsecureSkipVerify"},
		{"negative timeout", good, "127.0.0.1:0", "", Options{HandshakeTimeout: -1}, "HandshakeTimeout"},
		{"negative pending", good, "127.0.0.1:0", "", Options{MaxPendingHandshakes: -1}, "MaxPendingHandshakes"},
		{"unspecified advertise", good, "0.0.0.0:0", "0.0.0.0:7000", Options{}, "unspecified"},
		{"advertise without port", good, "127.0.0.1:0", "host", Options{}, "not host:port"},
		{"bad bind", good, "127.0.0.1:notaport", "127.0.0.1:7000", Options{}, "listen on"},
	} {
		s, err := NewStreamLayer(c.bind, c.adv, c.cfg, c.opt)
		if err == nil {
			s.Close()
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || strings.Count(err.Error(), "\n") != 0 {
			t.Errorf("%s: %q, want one line mentioning %q", c.name, err, c.want)
		}
	}
	// Certificates alone (no callbacks) are enough.
	s, err := NewStreamLayer("127.0.0.1:0", "", &tls.Config{Certificates: []tls.Certificate{tc}, RootCAs: p.ca.Pool()}, Options{})
	if err != nil {
		t.Fatalf("static certificate: %v", err)
	}
	s.Close()

	junk := filepath.Join(p.dir, "junk")
	if err := os.WriteFile(junk, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	otherKey := filepath.Join(p.dir, "other.key")
	if err := os.WriteFile(otherKey, leaf.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ ca, cert, key, want string }{
		{"", cert, key, "want all three files"},
		{p.caFile(), "", key, "want all three files"},
		{filepath.Join(p.dir, "missing"), cert, key, "raft TLS CA"},
		{junk, cert, key, "no PEM certificate"},
		{p.caFile(), filepath.Join(p.dir, "missing"), key, "raft TLS certificate"},
		{p.caFile(), cert, filepath.Join(p.dir, "missing"), "raft TLS key"},
		{p.caFile(), cert, otherKey, "does not match"},
	} {
		_, err := LoadConfig(c.ca, c.cert, c.key)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadConfig(%q, %q, %q): %v, want %q", c.ca, c.cert, c.key, err, c.want)
		}
	}
}

// TestRaftTLSCloseAbortsHandshakes: Close returns promptly with
// handshakes in progress, and Accept then fails.
func TestRaftTLSCloseAbortsHandshakes(t *testing.T) {
	p := newPKI(t)
	s := listen(t, p.config(t, "server", certs.Request{}, nil), Options{HandshakeTimeout: time.Minute})
	c, err := net.Dial("tcp", s.ListenAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if len(s.slots) != 1 {
			return errors.New("handshake not started")
		}
		return nil
	})
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	if _, err := s.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
