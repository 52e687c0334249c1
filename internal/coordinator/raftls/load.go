package raftls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// LoadConfig returns the TLS configuration of a coordinator: the CA bundle
// in caFile verifies peers (as servers and as clients), and the
// certificate and key in certFile and keyFile are presented to them. The
// certificate and key are read again whenever either file changes (its
// modification time, size or inode: Kubernetes Secret volumes and
// cert-manager replace files atomically), so a renewed certificate is
// used from the next handshake on without a restart. If the new files do
// not load (a key that does not match yet, mid-rotation), the previous
// pair stays in use until they do. The CA bundle is read once; to rotate
// the CA, put old and new CA in the bundle and restart (docs/SECURITY.md).
func LoadConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	return LoadConfigWithLogger(caFile, certFile, keyFile, nil)
}

// LoadConfigWithLogger is LoadConfig, logging (Warn) when changed files do
// not load and (Info) when a new certificate is taken into use.
func LoadConfigWithLogger(caFile, certFile, keyFile string, logger hclog.Logger) (*tls.Config, error) {
	if caFile == "" || certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("%w: CA %q, certificate %q and key %q: want all three files", ErrInvalid, caFile, certFile, keyFile)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("raft TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("raft TLS CA %s: no PEM certificate", caFile)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	r := &reloader{certFile: certFile, keyFile: keyFile, log: logger}
	if err := r.load(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              pool,
		ClientCAs:            pool,
		ClientAuth:           tls.RequireAndVerifyClientCert,
		GetCertificate:       func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() },
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.get() },
	}, nil
}

// fileStamp identifies one version of a file.
type fileStamp struct {
	info os.FileInfo
}

func (a fileStamp) same(b os.FileInfo) bool {
	return a.info != nil && os.SameFile(a.info, b) && a.info.ModTime().Equal(b.ModTime()) && a.info.Size() == b.Size()
}

// reloader keeps the current key pair and re-reads it when its files
// change.
type reloader struct {
	certFile, keyFile string
	log               hclog.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	cst, kst fileStamp
	lastErr  string // the last reload error logged, to log each once
}

// load reads the pair if the files changed since the last successful read.
func (r *reloader) load() error {
	ci, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("raft TLS certificate: %w", err)
	}
	ki, err := os.Stat(r.keyFile)
	if err != nil {
		return fmt.Errorf("raft TLS key: %w", err)
	}
	if r.cert != nil && r.cst.same(ci) && r.kst.same(ki) {
		return nil
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("raft TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	if r.cert != nil {
		if c.Leaf != nil {
			r.log.Info("raft TLS: certificate reloaded", "file", r.certFile, "subject", c.Leaf.Subject.String(), "not-after", c.Leaf.NotAfter)
		}
	}
	r.cert, r.cst, r.kst, r.lastErr = &c, fileStamp{ci}, fileStamp{ki}, ""
	return nil
}

func (r *reloader) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.load(); err != nil {
		if r.cert == nil {
			return nil, err
		}
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			r.log.Warn("raft TLS: changed certificate files do not load; keeping the previous certificate", "error", err)
		}
	}
	return r.cert, nil
}
