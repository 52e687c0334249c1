package transport

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// DefaultMaxPayload is the embedded server's max message payload (8 MiB).
const DefaultMaxPayload = 8 << 20

// EmbeddedConfig configures an in-process nats-server with JetStream.
type EmbeddedConfig struct {
	// Host to bind; default 127.0.0.1 (never all interfaces unless asked).
	Host string
	// Port to bind; 0 or -1 picks a free port.
	Port int
	// DataDir holds the JetStream file store; empty means a temporary
	// directory removed by Shutdown.
	DataDir string
	// MaxPayload is the largest message the server accepts (default 8 MiB).
	MaxPayload int32
	// MaxStore and MaxMemory cap JetStream file and memory storage in
	// bytes; 0 lets the server choose.
	MaxStore  int64
	MaxMemory int64
	// User and Password, when set, are required from every client.
	User     string
	Password string
	// Token, when set, is required from every client (not with User).
	Token string
	// NKeyUsers are public nkeys (U...) allowed to connect (not with User
	// or Token).
	NKeyUsers []string
	// Users are identities with permissions (not with User, Token or
	// NKeyUsers): each authenticates with a username and password, or an
	// nkey, and may publish and subscribe what its Permissions allow
	// (Subjects.Permissions for ringattn's roles).
	Users []EmbeddedUser
	// TLSCert and TLSKey turn TLS on with this server certificate; with
	// TLSCA set, clients must present a certificate signed by it.
	TLSCert string
	TLSKey  string
	TLSCA   string
	// ServerName names the server (default: generated).
	ServerName string
	// Logger receives the server's log (Notice -> Info, Trace -> Debug-4);
	// nil silences it.
	Logger *slog.Logger
	// ReadyTimeout bounds the wait for the server to accept connections
	// (default 10 s).
	ReadyTimeout time.Duration
}

// EmbeddedUser is one identity of an embedded server: Name and Password,
// or NKey (a public user nkey, U...), and its permissions.
type EmbeddedUser struct {
	Name        string
	Password    string
	NKey        string
	Permissions Permissions
}

// serverPermissions converts p to nats-server's user permissions; a
// request's reply may be published to once within a minute.
func serverPermissions(p Permissions) *server.Permissions {
	sp := func(s SubjectPermission) *server.SubjectPermission {
		if s.Allow == nil && s.Deny == nil {
			// Nothing listed: allow nothing (nats-server reads a nil
			// permission as no restriction).
			return &server.SubjectPermission{Deny: []string{">"}}
		}
		return &server.SubjectPermission{Allow: slices.Clone(s.Allow), Deny: slices.Clone(s.Deny)}
	}
	out := &server.Permissions{Publish: sp(p.Publish), Subscribe: sp(p.Subscribe)}
	if p.AllowResponses {
		out.Response = &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	}
	return out
}

// Embedded is a running in-process NATS server.
type Embedded struct {
	mu      sync.Mutex
	cfg     EmbeddedConfig // resolved: real port and data dir
	tempDir bool
	srv     *server.Server
}

// StartEmbedded starts a nats-server with JetStream per cfg and waits until
// it accepts connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = -1
	}
	if cfg.MaxPayload == 0 {
		cfg.MaxPayload = DefaultMaxPayload
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	switch {
	case cfg.Port < -1 || cfg.Port > 65535:
		return nil, invalid("EmbeddedConfig.Port = %d: want 0..65535 or -1 (random)", cfg.Port)
	case cfg.MaxPayload < 0 || cfg.MaxPayload > 64<<20:
		return nil, invalid("EmbeddedConfig.MaxPayload = %d: want 1..%d bytes", cfg.MaxPayload, 64<<20)
	case (cfg.User == "") != (cfg.Password == ""):
		return nil, invalid("EmbeddedConfig.User/Password: want both or neither")
	case cfg.MaxStore < 0 || cfg.MaxMemory < 0:
		return nil, invalid("EmbeddedConfig.MaxStore/MaxMemory: want >= 0")
	case (cfg.User != "" && (cfg.Token != "" || len(cfg.NKeyUsers) > 0)) || (cfg.Token != "" && len(cfg.NKeyUsers) > 0):
		return nil, invalid("EmbeddedConfig: want at most one of User/Password, Token, NKeyUsers")
	case len(cfg.Users) > 0 && (cfg.User != "" || cfg.Token != "" || len(cfg.NKeyUsers) > 0):
		return nil, invalid("EmbeddedConfig.Users: not with User/Password, Token or NKeyUsers")
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return nil, invalid("EmbeddedConfig.TLSCert/TLSKey: want both or neither")
	case cfg.TLSCA != "" && cfg.TLSCert == "":
		return nil, invalid("EmbeddedConfig.TLSCA needs TLSCert and TLSKey")
	}
	for i, u := range cfg.Users {
		switch {
		case (u.Name == "") == (u.NKey == ""):
			return nil, invalid("EmbeddedConfig.Users[%d]: want a Name (with a Password) or an NKey", i)
		case u.Name != "" && u.Password == "":
			return nil, invalid("EmbeddedConfig.Users[%d] %q: want a Password", i, u.Name)
		case u.NKey != "" && !nkeys.IsValidPublicUserKey(u.NKey):
			return nil, invalid("EmbeddedConfig.Users[%d].NKey = %q: want a public user nkey (U...)", i, u.NKey)
		}
	}
	e := &Embedded{cfg: cfg}
	if e.cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "ringattn-nats-")
		if err != nil {
			return nil, fmt.Errorf("transport: embedded server data dir: %w", err)
		}
		e.cfg.DataDir, e.tempDir = dir, true
	}
	if err := e.start(); err != nil {
		if e.tempDir {
			os.RemoveAll(e.cfg.DataDir)
		}
		return nil, err
	}
	return e, nil
}

func (e *Embedded) start() error {
	c := e.cfg
	opts := &server.Options{
		ServerName:         c.ServerName,
		Host:               c.Host,
		Port:               c.Port,
		NoLog:              c.Logger == nil,
		NoSigs:             true,
		JetStream:          true,
		StoreDir:           c.DataDir,
		JetStreamMaxStore:  c.MaxStore,
		JetStreamMaxMemory: c.MaxMemory,
		MaxPayload:         c.MaxPayload,
		Username:           c.User,
		Password:           c.Password,
		Authorization:      c.Token,
	}
	for _, pub := range c.NKeyUsers {
		opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: pub})
	}
	for _, u := range c.Users {
		if u.NKey != "" {
			opts.Nkeys = append(opts.Nkeys, &server.NkeyUser{Nkey: u.NKey, Permissions: serverPermissions(u.Permissions)})
			continue
		}
		opts.Users = append(opts.Users, &server.User{Username: u.Name, Password: u.Password,
			Permissions: serverPermissions(u.Permissions)})
	}
	if c.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: c.TLSCert, KeyFile: c.TLSKey,
			CaFile: c.TLSCA, Verify: c.TLSCA != "", Timeout: 2})
		if err != nil {
			return fmt.Errorf("%w: EmbeddedConfig TLS: %v", ErrInvalidConfig, err)
		}
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = tc, true, c.TLSCA != "", 2
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("transport: embedded server: %w", err)
	}
	if c.Logger != nil {
		debug := c.Logger.Enabled(context.Background(), slog.LevelDebug)
		srv.SetLoggerV2(slogServerLogger{c.Logger.With("component", "nats-server")}, debug, false, false)
	}
	srv.Start()
	if !srv.ReadyForConnections(c.ReadyTimeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("transport: embedded server on %s:%d not ready within %v", c.Host, c.Port, c.ReadyTimeout)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return fmt.Errorf("transport: embedded server: JetStream did not start (store dir %q)", c.DataDir)
	}
	if addr, ok := srv.Addr().(*net.TCPAddr); ok {
		e.cfg.Port = addr.Port // restarts reuse the port clients know
	}
	e.srv = srv
	return nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:40123.
func (e *Embedded) ClientURL() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	scheme := "nats://"
	if e.cfg.TLSCert != "" {
		scheme = "tls://"
	}
	return scheme + net.JoinHostPort(e.cfg.Host, strconv.Itoa(e.cfg.Port))
}

// Config returns the resolved configuration (real port and data dir).
func (e *Embedded) Config() EmbeddedConfig {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg
}

// InProcessConn connects to the running server over an in-memory pipe
// (nats.InProcessConnProvider; see Config.InProcess).
func (e *Embedded) InProcessConn() (net.Conn, error) {
	srv := e.Server()
	if srv == nil {
		return nil, ErrEmbeddedStopped
	}
	return srv.InProcessConn()
}

// Server returns the running server, or nil while stopped.
func (e *Embedded) Server() *server.Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv
}

// Stop shuts the server down and waits for it, keeping the data dir so
// Restart can bring the same store back. Stopping twice is a no-op.
func (e *Embedded) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
}

func (e *Embedded) stopLocked() {
	if e.srv == nil {
		return
	}
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.srv = nil
}

// Restart stops the server if it runs and starts a new one on the same
// host, port and data dir (JetStream state survives).
func (e *Embedded) Restart() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
	return e.start()
}

// Shutdown stops the server and removes a temporary data dir. Safe to call
// more than once.
func (e *Embedded) Shutdown() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
	if e.tempDir {
		os.RemoveAll(e.cfg.DataDir)
		e.tempDir = false
	}
}

// slogServerLogger adapts slog to nats-server's Logger.
type slogServerLogger struct{ l *slog.Logger }

func (s slogServerLogger) Noticef(format string, v ...any) { s.l.Info(fmt.Sprintf(format, v...)) }
func (s slogServerLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s slogServerLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s slogServerLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }

// Fatalf logs at error level: an embedded server must never exit the process.
func (s slogServerLogger) Fatalf(format string, v ...any) {
	s.l.Error("fatal: " + fmt.Sprintf(format, v...))
}

func (s slogServerLogger) Tracef(format string, v ...any) {
	s.l.Log(context.Background(), slog.LevelDebug-4, fmt.Sprintf(format, v...))
}
