package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultValidity is how long a certificate is valid when a request leaves
// NotAfter zero.
const DefaultValidity = 365 * 24 * time.Hour

// clockSkew backdates NotBefore so that a peer whose clock is slightly
// behind accepts a certificate made a moment ago.
const clockSkew = 5 * time.Minute

// ErrInvalid is returned for a request that cannot make a certificate.
var ErrInvalid = errors.New("invalid certificate request")

// CA is a certificate authority: its certificate and its signing key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// CertPEM is Cert, PEM-encoded.
	CertPEM []byte
}

// Leaf is a certificate issued by a CA, with its key.
type Leaf struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// CertPEM is Cert, PEM-encoded; KeyPEM is Key as PKCS #8, PEM-encoded.
	CertPEM, KeyPEM []byte
}

// Request describes a certificate to make.
type Request struct {
	// CommonName is the subject's common name (informational; peers
	// verify the SANs).
	CommonName string
	// DNSNames and IPs are the subject alternative names a peer verifies
	// the certificate against.
	DNSNames []string
	IPs      []net.IP
	// Server and Client select the extended key usages (TLS server and/or
	// client authentication). A leaf needs at least one; ignored for a CA.
	Server, Client bool
	// NotBefore defaults to now minus a few minutes of clock skew;
	// NotAfter to NotBefore's now plus DefaultValidity. Tests set them to
	// make expired or not-yet-valid certificates.
	NotBefore, NotAfter time.Time
}

func (r Request) validity(now time.Time) (time.Time, time.Time, error) {
	nb, na := r.NotBefore, r.NotAfter
	if nb.IsZero() {
		nb = now.Add(-clockSkew)
	}
	if na.IsZero() {
		na = now.Add(DefaultValidity)
	}
	if !na.After(nb) {
		return nb, na, fmt.Errorf("%w: NotAfter %s is not after NotBefore %s", ErrInvalid, na.Format(time.RFC3339), nb.Format(time.RFC3339))
	}
	return nb, na, nil
}

func serial() (*big.Int, error) {
	// RFC 5280: at most 20 octets, positive; 128 random bits.
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
}

// NewCA makes a self-signed certificate authority that may sign leaves
// only (path length 0). Request.Server/Client, DNSNames and IPs are ignored.
func NewCA(r Request) (*CA, error) {
	if r.CommonName == "" {
		return nil, fmt.Errorf("%w: CommonName is empty, want the CA's name", ErrInvalid)
	}
	nb, na, err := r.validity(time.Now())
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: r.CommonName, Organization: []string{"ringattn"}},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certs: sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der)}, nil
}

// Issue makes a leaf certificate signed by ca. Its validity must lie
// within the CA's only if the caller wants peers to accept it: Issue does
// not clamp, so that tests can make certificates peers must refuse.
func (ca *CA) Issue(r Request) (*Leaf, error) {
	if !r.Server && !r.Client {
		return nil, fmt.Errorf("%w: %q: neither Server nor Client usage, want at least one", ErrInvalid, r.CommonName)
	}
	if r.CommonName == "" && len(r.DNSNames) == 0 && len(r.IPs) == 0 {
		return nil, fmt.Errorf("%w: no CommonName, DNSNames or IPs, want at least one name", ErrInvalid)
	}
	if r.CommonName == "" {
		if len(r.DNSNames) > 0 {
			r.CommonName = r.DNSNames[0]
		} else {
			r.CommonName = r.IPs[0].String()
		}
	}
	nb, na, err := r.validity(time.Now())
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: leaf key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	var eku []x509.ExtKeyUsage
	if r.Server {
		eku = append(eku, x509.ExtKeyUsageServerAuth)
	}
	if r.Client {
		eku = append(eku, x509.ExtKeyUsageClientAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: r.CommonName, Organization: []string{"ringattn"}},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		DNSNames:              append([]string(nil), r.DNSNames...),
		IPAddresses:           append([]net.IP(nil), r.IPs...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: sign %q: %w", r.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: parse %q: %w", r.CommonName, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("certs: encode key: %w", err)
	}
	return &Leaf{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", kder)}, nil
}

// TLSCertificate returns the leaf as a tls.Certificate (with Leaf set).
func (l *Leaf) TLSCertificate() (tls.Certificate, error) {
	c, err := tls.X509KeyPair(l.CertPEM, l.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: key pair: %w", err)
	}
	return c, nil
}

// Pool returns a certificate pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// WriteFiles writes the certificate (0644) and the key (0600), each
// atomically (a reader never sees half a file: a process reloading
// certificates on change picks up either the old or the new one).
func (l *Leaf) WriteFiles(certFile, keyFile string) error {
	if err := WriteFile(keyFile, l.KeyPEM, 0o600); err != nil {
		return err
	}
	return WriteFile(certFile, l.CertPEM, 0o644)
}

// WriteFiles writes the CA certificate (0644) and, if keyFile is not "",
// its signing key (0600).
func (ca *CA) WriteFiles(certFile, keyFile string) error {
	if keyFile != "" {
		kder, err := x509.MarshalPKCS8PrivateKey(ca.Key)
		if err != nil {
			return fmt.Errorf("certs: encode CA key: %w", err)
		}
		if err := WriteFile(keyFile, pemBlock("PRIVATE KEY", kder), 0o600); err != nil {
			return err
		}
	}
	return WriteFile(certFile, ca.CertPEM, 0o644)
}

// LoadCA reads a CA written by CA.WriteFiles (or any PEM certificate
// authority with an ECDSA PKCS #8 key), to issue more leaves.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("CA certificate %s: no PEM CERTIFICATE block", certFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("CA certificate %s: not a CA (basic constraints CA:FALSE)", certFile)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("CA key %s: no PEM PRIVATE KEY (PKCS #8) block", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyFile, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("CA key %s: %T, want an ECDSA key", keyFile, k)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not match certificate %s", keyFile, certFile)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pemBlock("CERTIFICATE", cb.Bytes)}, nil
}

// WriteFile writes data to name atomically: a temporary file in the same
// directory, created with perm, synced, then renamed over name.
func WriteFile(name string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return fmt.Errorf("certs: write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("certs: write %s: %w", name, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("certs: write %s: %w", name, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("certs: write %s: %w", name, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("certs: write %s: %w", name, err)
	}
	if err = os.Rename(f.Name(), name); err != nil {
		return fmt.Errorf("certs: write %s: %w", name, err)
	}
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
