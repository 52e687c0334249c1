package raftls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

const (
	// DefaultHandshakeTimeout bounds an inbound TLS handshake when
	// Options.HandshakeTimeout is zero.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxPendingHandshakes bounds the inbound handshakes in
	// progress when Options.MaxPendingHandshakes is zero. Raft opens a few
	// connections per peer (maxPool plus pipelining); 64 leaves room for
	// a dozen peers reconnecting at once.
	DefaultMaxPendingHandshakes = 64
)

// ErrInvalid is returned for a configuration the stream layer cannot use.
var ErrInvalid = errors.New("invalid raft TLS configuration")

// Options tune a StreamLayer. The zero value takes the defaults.
type Options struct {
	// HandshakeTimeout bounds each inbound handshake (default
	// DefaultHandshakeTimeout). Outbound handshakes are bounded by the
	// timeout raft passes to Dial.
	HandshakeTimeout time.Duration
	// MaxPendingHandshakes bounds the inbound handshakes in progress
	// (default DefaultMaxPendingHandshakes); a connection arriving past it
	// is closed without a handshake.
	MaxPendingHandshakes int
	// Logger receives refused connections (Warn) and accept errors.
	Logger hclog.Logger
}

// Stats counts what the listener did since it started.
type Stats struct {
	// Accepted is the number of handshakes that succeeded (connections
	// handed to raft).
	Accepted uint64
	// Refused is the number of handshakes that failed: no certificate,
	// a certificate the CA did not sign, expired, wrong name, old TLS
	// version, or no handshake before the deadline.
	Refused uint64
	// Overloaded is the number of connections closed because
	// MaxPendingHandshakes handshakes were already in progress.
	Overloaded uint64
}

// StreamLayer implements raft.StreamLayer over mutual TLS.
type StreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	opt       Options
	log       hclog.Logger

	conns  chan net.Conn
	ctx    context.Context
	cancel context.CancelFunc
	slots  chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	accepted, refused, overloaded atomic.Uint64
}

var _ raft.StreamLayer = (*StreamLayer)(nil)

// NewTransport is raft.NewTCPTransportWithLogger over mutual TLS: it
// binds bind, advertises advertise (a host:port with a specified IP, or a
// host name peers can resolve; "" means bind) and wraps the stream layer in
// a raft.NetworkTransport with maxPool pooled connections per peer and I/O
// timeout timeout, which also bounds each inbound handshake.
func NewTransport(bind, advertise string, tlsCfg *tls.Config, maxPool int, timeout time.Duration, logger hclog.Logger) (*raft.NetworkTransport, error) {
	s, err := NewStreamLayer(bind, advertise, tlsCfg, Options{HandshakeTimeout: timeout, Logger: logger})
	if err != nil {
		return nil, err
	}
	return raft.NewNetworkTransportWithLogger(s, maxPool, timeout, logger), nil
}

// NewStreamLayer listens on bind and returns the stream layer. tlsCfg must
// carry this node's certificate (Certificates, GetCertificate or
// GetClientCertificate) and the CA pool (RootCAs; ClientCAs defaults to
// it); LoadConfig makes such a config. The layer copies tlsCfg and forces
// TLS 1.3, client certificate verification and (for a non-empty
// ServerName) the peer name check.
func NewStreamLayer(bind, advertise string, tlsCfg *tls.Config, opt Options) (*StreamLayer, error) {
	if tlsCfg == nil {
		return nil, fmt.Errorf("%w: no TLS config, want the CA, certificate and key", ErrInvalid)
	}
	if len(tlsCfg.Certificates) == 0 && tlsCfg.GetCertificate == nil {
		return nil, fmt.Errorf("%w: no certificate, want this node's certificate and key", ErrInvalid)
	}
	if len(tlsCfg.Certificates) == 0 && tlsCfg.GetClientCertificate == nil {
		return nil, fmt.Errorf("%w: no client certificate, want this node's certificate and key (Certificates or GetClientCertificate)", ErrInvalid)
	}
	if tlsCfg.RootCAs == nil {
		return nil, fmt.Errorf("%w: no CA pool (RootCAs), want the CA that signs every coordinator's certificate", ErrInvalid)
	}
	if tlsCfg.InsecureSkipVerify {
		return nil, fmt.Errorf("%w: InsecureSkipVerify is set, want verified peers", ErrInvalid)
	}
	if opt.HandshakeTimeout < 0 || opt.MaxPendingHandshakes < 0 {
		return nil, fmt.Errorf("%w: HandshakeTimeout %v and MaxPendingHandshakes %d, want >= 0", ErrInvalid, opt.HandshakeTimeout, opt.MaxPendingHandshakes)
	}
	if advertise == "" {
		advertise = bind
	}
	adv, err := advertiseAddr(advertise)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft TLS: listen on %s: %w", bind, err)
	}
	if adv == nil {
		adv = ln.Addr()
	}
	return newStreamLayer(ln, adv, tlsCfg, opt), nil
}

// advertiseAddr returns advertise as a net.Addr: a *net.TCPAddr for an IP
// address (which must not be unspecified), a name otherwise; nil for port
// 0 (the listener's own address is advertised).
func advertiseAddr(advertise string) (net.Addr, error) {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil {
		return nil, fmt.Errorf("%w: advertise address %q is not host:port", ErrInvalid, advertise)
	}
	if port == "0" {
		return nil, nil
	}
	if ip := net.ParseIP(host); ip != nil || host == "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("%w: advertise address %q: %v", ErrInvalid, advertise, err)
		}
		if a.IP == nil || a.IP.IsUnspecified() {
			return nil, fmt.Errorf("%w: advertise address %q is unspecified, want an address peers can reach", ErrInvalid, advertise)
		}
		return a, nil
	}
	return nameAddr(advertise), nil
}

// nameAddr is an advertised host:port with a DNS name.
type nameAddr string

func (nameAddr) Network() string  { return "tcp" }
func (a nameAddr) String() string { return string(a) }

// newStreamLayer serves ln without validating tlsCfg (the tests use it to
// build peers that NewStreamLayer would refuse).
func newStreamLayer(ln net.Listener, adv net.Addr, tlsCfg *tls.Config, opt Options) *StreamLayer {
	if opt.HandshakeTimeout == 0 {
		opt.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opt.MaxPendingHandshakes == 0 {
		opt.MaxPendingHandshakes = DefaultMaxPendingHandshakes
	}
	log := opt.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &StreamLayer{
		ln: ln, advertise: adv, opt: opt, log: log,
		server: serverConfig(tlsCfg), client: clientConfig(tlsCfg),
		conns: make(chan net.Conn),
		slots: make(chan struct{}, opt.MaxPendingHandshakes),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func serverConfig(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.MinVersion = tls.VersionTLS13
	c.ClientAuth = tls.RequireAndVerifyClientCert
	if c.ClientCAs == nil {
		c.ClientCAs = c.RootCAs
	}
	if name := base.ServerName; name != "" {
		next := base.VerifyConnection
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("raft TLS: no client certificate")
			}
			if err := cs.PeerCertificates[0].VerifyHostname(name); err != nil {
				return fmt.Errorf("raft TLS: client certificate is not a coordinator's: %w", err)
			}
			if next != nil {
				return next(cs)
			}
			return nil
		}
	}
	return c
}

func clientConfig(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.MinVersion = tls.VersionTLS13
	if c.GetClientCertificate == nil && len(c.Certificates) > 0 {
		// Present the certificate whatever CAs the server names.
		cert := c.Certificates[0]
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	return c
}

func (s *StreamLayer) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as
			// net/http does, up to a second.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("raft TLS: accept", "error", err, "retry-in", delay)
			select {
			case <-time.After(delay):
				continue
			case <-s.ctx.Done():
				return
			}
		}
		delay = 0
		select {
		case s.slots <- struct{}{}:
		default:
			s.overloaded.Add(1)
			s.log.Warn("raft TLS: too many handshakes in progress; closing connection", "remote", c.RemoteAddr().String(), "max", s.opt.MaxPendingHandshakes)
			_ = c.Close()
			continue
		}
		s.wg.Add(1)
		go s.handshake(c)
	}
}

// handshake completes the server side of c's TLS handshake under the
// deadline and hands the connection to Accept.
func (s *StreamLayer) handshake(raw net.Conn) {
	defer s.wg.Done()
	release := func() { <-s.slots }
	tc := tls.Server(raw, s.server)
	ctx, cancel := context.WithTimeout(s.ctx, s.opt.HandshakeTimeout)
	_ = raw.SetDeadline(time.Now().Add(s.opt.HandshakeTimeout))
	err := tc.HandshakeContext(ctx)
	cancel()
	if err == nil {
		err = raw.SetDeadline(time.Time{})
	}
	if err != nil {
		release()
		s.refused.Add(1)
		if s.ctx.Err() == nil {
			s.log.Warn("raft TLS: refused connection", "remote", raw.RemoteAddr().String(), "error", err)
		}
		_ = tc.Close()
		return
	}
	release()
	s.accepted.Add(1)
	select {
	case s.conns <- tc:
	case <-s.ctx.Done():
		_ = tc.Close()
	}
}

// Accept returns the next connection whose handshake succeeded.
func (s *StreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops listening, aborts the handshakes in progress and waits for
// their goroutines. Connections already accepted belong to raft.
func (s *StreamLayer) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr returns the advertised address.
func (s *StreamLayer) Addr() net.Addr { return s.advertise }

// ListenAddr returns the address actually bound (useful with port 0).
func (s *StreamLayer) ListenAddr() net.Addr { return s.ln.Addr() }

// Stats returns the listener's counters.
func (s *StreamLayer) Stats() Stats {
	return Stats{Accepted: s.accepted.Load(), Refused: s.refused.Load(), Overloaded: s.overloaded.Load()}
}

// Dial connects to a peer, presents this node's certificate and verifies
// the peer's against the CA, as tls.Config.ServerName if set, else as the
// host of address. The handshake completes within timeout.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	cfg := s.client
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(string(address))
		if err != nil {
			return nil, fmt.Errorf("raft TLS: peer address %q is not host:port", address)
		}
		cfg = cfg.Clone()
		cfg.ServerName = host
	}
	ctx := s.ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft TLS: dial %s: %w", address, err)
	}
	return c, nil
}
