package validate

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// The TLS Secrets that prod expects the operator to create are made here,
// in-process, with the names gen-certs.sh and the cert-manager component
// give them (plus 127.0.0.1, which the local stand-ins listen on).

var (
	testPKIOnce sync.Once
	testPKI     map[string]map[string]string // Secret -> key -> PEM
	testPKIErr  error
)

func makeTestPKI() (map[string]map[string]string, error) {
	now := time.Now()
	newKey := func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	caKey, err := newKey()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "validate test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	caPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	leaf := func(serial int64, dns ...string) (string, string, error) {
		k, err := newKey()
		if err != nil {
			return "", "", err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: dns[0]},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			DNSNames:    dns, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return "", "", err
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
			string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})), nil
	}
	natsCrt, natsKey, err := leaf(2, "ringattn-nats", "*.ringattn-nats-headless", "localhost")
	if err != nil {
		return nil, err
	}
	raftCrt, raftKey, err := leaf(3, RaftTLSServerName, "*.ringattn-coordinator-headless")
	if err != nil {
		return nil, err
	}
	return map[string]map[string]string{
		"ringattn-nats-tls": {"tls.crt": natsCrt, "tls.key": natsKey, "ca.crt": caPEM},
		"ringattn-nats-ca":  {"ca.crt": caPEM},
		"ringattn-raft-tls": {"tls.crt": raftCrt, "tls.key": raftKey, "ca.crt": caPEM},
	}, nil
}

// testTLSSecret stands in for the TLS Secrets prod expects to exist.
func testTLSSecret(name, key string) (string, bool) {
	testPKIOnce.Do(func() { testPKI, testPKIErr = makeTestPKI() })
	if testPKIErr != nil {
		panic("validate: test PKI: " + testPKIErr.Error())
	}
	v, ok := testPKI[name][key]
	return v, ok
}

// tlsVolumeSecrets maps the manifests' TLS volume names to their Secrets
// and the keys they project (CheckTLS pins the Secrets behind the paths;
// TestTLSVolumeNames pins these names to those Secrets).
var tlsVolumeSecrets = map[string]struct {
	secret string
	keys   []string
}{
	"nats-tls": {"ringattn-nats-tls", []string{"tls.crt", "tls.key", "ca.crt"}},
	"nats-ca":  {"ringattn-nats-ca", []string{"ca.crt"}},
	"raft-tls": {"ringattn-raft-tls", []string{"tls.crt", "tls.key", "ca.crt"}},
}

// mountDir returns a temporary directory standing in for a volume mount:
// for a TLS Secret volume, holding its files as the kubelet projects them.
func mountDir(t *testing.T, m corev1.VolumeMount, secrets SecretLookup) string {
	t.Helper()
	dir := t.TempDir()
	v, ok := tlsVolumeSecrets[m.Name]
	if !ok {
		return dir
	}
	for _, k := range v.keys {
		data, ok := secrets(v.secret, k)
		if !ok {
			t.Fatalf("volume %s: Secret %s has no key %s", m.Name, v.secret, k)
		}
		if err := os.WriteFile(filepath.Join(dir, k), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// mountSecrets materialises the TLS Secret volumes of the container c
// in temporary directories and rewrites their mount paths in the
// configuration files in confDir (the NATS ConfigMap), so that nats-server
// finds its certificates.
func mountSecrets(t *testing.T, c *corev1.Container, confDir string, secrets SecretLookup) {
	t.Helper()
	var pairs []string
	for _, m := range c.VolumeMounts {
		if _, ok := tlsVolumeSecrets[m.Name]; ok {
			pairs = append(pairs, strings.TrimSuffix(m.MountPath, "/")+"/", mountDir(t, m, secrets)+"/")
		}
	}
	if len(pairs) == 0 {
		return
	}
	repl := strings.NewReplacer(pairs...)
	ents, err := os.ReadDir(confDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		p := filepath.Join(confDir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(repl.Replace(string(b))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// natsCAFile writes the CA that NATS clients are given (Secret
// ringattn-nats-ca) to a file and returns its path.
func natsCAFile(t *testing.T, inv *Inventory) string {
	t.Helper()
	ca, ok := secretsOf(inv)("ringattn-nats-ca", "ca.crt")
	if !ok {
		t.Fatal("no Secret ringattn-nats-ca key ca.crt")
	}
	p := filepath.Join(t.TempDir(), "nats-ca.crt")
	if err := os.WriteFile(p, []byte(ca), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
