package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA(Request{CommonName: "test CA"})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func verify(ca *CA, l *Leaf, name string, usage x509.ExtKeyUsage, at time.Time) error {
	_, err := l.Cert.Verify(x509.VerifyOptions{
		Roots: ca.Pool(), DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: at,
	})
	return err
}

func TestCertsIssueVerifies(t *testing.T) {
	ca := newCA(t)
	if !ca.Cert.IsCA || ca.Cert.MaxPathLen != 0 || !ca.Cert.MaxPathLenZero {
		t.Fatalf("CA constraints: IsCA=%v MaxPathLen=%d zero=%v", ca.Cert.IsCA, ca.Cert.MaxPathLen, ca.Cert.MaxPathLenZero)
	}
	l, err := ca.Issue(Request{
		CommonName: "node-0", DNSNames: []string{"node-0.example", "*.raft.example"},
		IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, Server: true, Client: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, name := range []string{"node-0.example", "a.raft.example", "127.0.0.1", "::1"} {
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if err := verify(ca, l, name, u, now); err != nil {
				t.Errorf("verify %s usage %v: %v", name, u, err)
			}
		}
	}
	for _, name := range []string{"node-1.example", "a.b.raft.example", "127.0.0.2"} {
		if err := verify(ca, l, name, x509.ExtKeyUsageServerAuth, now); err == nil {
			t.Errorf("verify %s: accepted a name not in the SANs", name)
		}
	}
	if err := verify(ca, l, "node-0.example", x509.ExtKeyUsageServerAuth, now.Add(DefaultValidity+time.Hour)); err == nil {
		t.Error("verified after NotAfter")
	}
	if l.Cert.Subject.CommonName != "node-0" {
		t.Errorf("CommonName %q", l.Cert.Subject.CommonName)
	}
}

func TestCertsUsageAndOtherCA(t *testing.T) {
	ca, other := newCA(t), newCA(t)
	client, err := ca.Issue(Request{DNSNames: []string{"c"}, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	if client.Cert.Subject.CommonName != "c" {
		t.Errorf("CommonName defaults to the first DNS name, got %q", client.Cert.Subject.CommonName)
	}
	now := time.Now()
	if err := verify(ca, client, "c", x509.ExtKeyUsageServerAuth, now); err == nil {
		t.Error("client-only certificate verified for server auth")
	}
	if err := verify(ca, client, "c", x509.ExtKeyUsageClientAuth, now); err != nil {
		t.Errorf("client auth: %v", err)
	}
	if err := verify(other, client, "c", x509.ExtKeyUsageClientAuth, now); err == nil {
		t.Error("verified against another CA")
	}
}

func TestCertsExpired(t *testing.T) {
	ca := newCA(t)
	now := time.Now()
	l, err := ca.Issue(Request{DNSNames: []string{"old"}, Server: true, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	var inv x509.CertificateInvalidError
	if err := verify(ca, l, "old", x509.ExtKeyUsageServerAuth, now); !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Fatalf("expired certificate: %v, want x509 Expired", err)
	}
}

func TestCertsInvalidRequests(t *testing.T) {
	ca := newCA(t)
	now := time.Now()
	for name, f := range map[string]func() error{
		"CA without name": func() error { _, err := NewCA(Request{}); return err },
		"no usage":        func() error { _, err := ca.Issue(Request{CommonName: "x"}); return err },
		"no name":         func() error { _, err := ca.Issue(Request{Server: true}); return err },
		"NotAfter before": func() error {
			_, err := ca.Issue(Request{CommonName: "x", Server: true, NotBefore: now, NotAfter: now.Add(-time.Second)})
			return err
		},
		"NotAfter equal": func() error {
			_, err := ca.Issue(Request{CommonName: "x", Server: true, NotBefore: now, NotAfter: now})
			return err
		},
	} {
		err := f()
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// Just inside the validity limit: one second is enough.
	if _, err := ca.Issue(Request{CommonName: "x", Server: true, NotBefore: now, NotAfter: now.Add(time.Second)}); err != nil {
		t.Errorf("one-second validity: %v", err)
	}
}

func TestCertsFilesAndHandshake(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t)
	caCert, caKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := ca.WriteFiles(caCert, caKey); err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Cert.Equal(ca.Cert) || !ca2.Key.Equal(ca.Key) {
		t.Fatal("LoadCA did not return the written CA")
	}
	// A leaf issued by the reloaded CA verifies against the original.
	srv, err := ca2.Issue(Request{DNSNames: []string{"srv"}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue(Request{CommonName: "cli", Client: true})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]os.FileMode{}
	for name, l := range map[string]*Leaf{"srv": srv, "cli": cli} {
		c, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		if err := l.WriteFiles(c, k); err != nil {
			t.Fatal(err)
		}
		files[c], files[k] = 0o644, 0o600
	}
	files[caCert], files[caKey] = 0o644, 0o600
	for f, want := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", filepath.Base(f), st.Mode().Perm(), want)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}

	sc, err := tls.LoadX509KeyPair(filepath.Join(dir, "srv.crt"), filepath.Join(dir, "srv.key"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cli.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	server := tls.Server(a, &tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})
	client := tls.Client(b, &tls.Config{Certificates: []tls.Certificate{cc}, RootCAs: ca.Pool(), ServerName: "srv", MinVersion: tls.VersionTLS13})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if got := server.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "cli" {
		t.Errorf("server saw client %q", got)
	}
}

func TestCertsLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	ca, other := newCA(t), newCA(t)
	leaf, err := ca.Issue(Request{CommonName: "leaf", Server: true})
	if err != nil {
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ca.WriteFiles(p("ca.crt"), p("ca.key")))
	must(other.WriteFiles(p("other.crt"), p("other.key")))
	must(leaf.WriteFiles(p("leaf.crt"), p("leaf.key")))
	must(os.WriteFile(p("junk"), []byte("not pem"), 0o600))
	for _, c := range []struct{ cert, key, want string }{
		{"missing", "ca.key", "CA certificate"},
		{"ca.crt", "missing", "CA key"},
		{"junk", "ca.key", "no PEM CERTIFICATE"},
		{"ca.crt", "junk", "no PEM PRIVATE KEY"},
		{"leaf.crt", "leaf.key", "not a CA"},
		{"ca.crt", "other.key", "does not match"},
	} {
		_, err := LoadCA(p(c.cert), p(c.key))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadCA(%s, %s): %v, want %q", c.cert, c.key, err, c.want)
		}
	}
}

func TestCertsWriteFileReplaces(t *testing.T) {
	name := filepath.Join(t.TempDir(), "k")
	if err := WriteFile(name, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(name, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(name)
	if err != nil || string(b) != "two" {
		t.Fatalf("read back %q, %v", b, err)
	}
	if err := WriteFile(filepath.Join(name, "sub"), []byte("x"), 0o600); err == nil {
		t.Fatal("writing under a regular file succeeded")
	}
}
