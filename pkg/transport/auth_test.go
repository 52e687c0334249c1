package transport_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// writePEM writes a certificate signed by parent (self-signed when parent
// is nil) and its key, returning the paths.
func writePEM(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (certFile, keyFile string, cert *x509.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	must(t, err)
	cert, err = x509.ParseCertificate(der)
	must(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile, cert, key
}

func TestTransportConnectMutualTLS(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	caFile, _, ca, caKey := writePEM(t, dir, "ca", &x509.Certificate{SerialNumber: big.NewInt(1),
		Subject: pkix.Name{CommonName: "ringattn test CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	srvCert, srvKey, _, _ := writePEM(t, dir, "server", &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject: pkix.Name{CommonName: "nats"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, caKey)
	cliCert, cliKey, _, _ := writePEM(t, dir, "client", &x509.Certificate{SerialNumber: big.NewInt(3),
		Subject: pkix.Name{CommonName: "worker"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca, caKey)

	e := transporttest.RunServerWith(t, transport.EmbeddedConfig{TLSCert: srvCert, TLSKey: srvKey, TLSCA: caFile})
	cfg := transporttest.Config(e)
	cfg.ConnectTimeout = 2 * time.Second
	cfg.TLSCA, cfg.TLSCert, cfg.TLSKey = caFile, cliCert, cliKey
	nc, err := transport.Connect(cfg, transporttest.Logger(t))
	must(t, err)
	if !nc.TLSRequired() {
		t.Fatal("connection is not TLS")
	}
	nc.Close()

	noCert := cfg
	noCert.TLSCert, noCert.TLSKey = "", ""
	if _, err := transport.Connect(noCert, nil); !errors.Is(err, transport.ErrConnect) {
		t.Fatalf("TLS without a client certificate: %v, want ErrConnect", err)
	} else {
		t.Log(err)
	}
	noCA := cfg
	noCA.TLSCA = ""
	if _, err := transport.Connect(noCA, nil); !errors.Is(err, transport.ErrConnect) {
		t.Fatalf("TLS without the CA: %v, want ErrConnect", err)
	} else {
		t.Log(err)
	}
}

func TestTransportConnectTokenAndNKey(t *testing.T) {
	e := transporttest.RunServerWith(t, transport.EmbeddedConfig{Token: "t0ken"})
	cfg := transporttest.Config(e)
	nc, err := transport.Connect(cfg, nil)
	must(t, err)
	nc.Close()
	cfg.Token = "nope"
	if _, err := transport.Connect(cfg, nil); !errors.Is(err, transport.ErrAuth) {
		t.Fatalf("wrong token: %v, want ErrAuth", err)
	} else {
		t.Log(err)
	}

	user, err := nkeys.CreateUser()
	must(t, err)
	pub, err := user.PublicKey()
	must(t, err)
	seed, err := user.Seed()
	must(t, err)
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	must(t, os.WriteFile(seedFile, seed, 0o600))
	e2 := transporttest.RunServerWith(t, transport.EmbeddedConfig{NKeyUsers: []string{pub}})
	cfg2 := transporttest.Config(e2)
	cfg2.NKeySeedFile = seedFile
	nc, err = transport.Connect(cfg2, nil)
	must(t, err)
	nc.Close()
	other, err := nkeys.CreateUser()
	must(t, err)
	otherSeed, err := other.Seed()
	must(t, err)
	must(t, os.WriteFile(seedFile, otherSeed, 0o600))
	if _, err := transport.Connect(cfg2, nil); !errors.Is(err, transport.ErrAuth) {
		t.Fatalf("unknown nkey: %v, want ErrAuth", err)
	} else {
		t.Log(err)
	}
}
