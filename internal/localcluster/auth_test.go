package localcluster

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/certs"
)

// TestLocalclusterAuthConfig: Tenants and TenantQuota need Auth; a tenant
// must be a valid name; a negative quota is refused; a valid auth
// configuration passes.
func TestLocalclusterAuthConfig(t *testing.T) {
	sh := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(sh, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := Binaries{Coordinator: sh, Worker: sh, NATSServer: sh}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Tenants: []string{"a"}}, "need Auth"},
		{Config{TenantQuota: 1}, "need Auth"},
		{Config{Auth: true, TenantQuota: -1}, "TenantQuota = -1"},
		{Config{Auth: true, Tenants: []string{"_admin"}}, `Tenants: "_admin"`},
		{Config{Auth: true, Tenants: []string{"a b"}}, `Tenants: "a b"`},
		{Config{Auth: true, Tenants: []string{""}}, `Tenants: ""`},
	} {
		tc.cfg.Bin = bin
		err := tc.cfg.fill()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want ErrInvalid naming %q", tc.cfg, err, tc.want)
		}
	}
	ok := Config{Bin: bin, Auth: true, Tenants: []string{"team-a", "team-b"}, TenantQuota: 1 << 20}
	if err := ok.fill(); err != nil {
		t.Errorf("valid auth config: %v", err)
	}
}

// TestLocalclusterRaftTLSFiles: setupRaftTLS makes a CA and a certificate
// per coordinator that verify against it for RaftServerName, and a second
// call on the same directory keeps them.
func TestLocalclusterRaftTLSFiles(t *testing.T) {
	c := &Cluster{Dir: t.TempDir()}
	lay := &layout{Coordinators: []layoutCoordinator{{Name: "coordinator-0"}, {Name: "coordinator-1"}}}
	if err := c.setupRaftTLS(lay); err != nil {
		t.Fatal(err)
	}
	rt := c.RaftTLS()
	ca, err := certs.LoadCA(rt.CA, rt.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(rt.Cert["coordinator-1"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.setupRaftTLS(lay); err != nil {
		t.Fatal(err)
	}
	again, err := os.ReadFile(c.RaftTLS().Cert["coordinator-1"])
	if err != nil || string(again) != string(first) {
		t.Errorf("a second setup replaced coordinator-1's certificate (%v)", err)
	}
	ca2, err := certs.LoadCA(rt.CA, rt.CAKey)
	if err != nil || !ca2.Cert.Equal(ca.Cert) {
		t.Errorf("a second setup replaced the CA (%v)", err)
	}
	for name, file := range rt.Cert {
		kp, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := parseCert(kp)
		if err != nil {
			t.Fatal(err)
		}
		if err := leaf.VerifyHostname(RaftServerName); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := leaf.Verify(verifyOpts(ca)); err != nil {
			t.Errorf("%s does not verify against the CA: %v", name, err)
		}
	}
}

func parseCert(pemData []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(pemData)
	if b == nil {
		return nil, errors.New("no PEM block")
	}
	return x509.ParseCertificate(b.Bytes)
}

func verifyOpts(ca *certs.CA) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
}
