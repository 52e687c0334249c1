package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Defaults of Config.
const (
	DefaultURL              = "nats://127.0.0.1:4222"
	DefaultBucket           = "ringattn"
	DefaultName             = "ringattn"
	DefaultConnectTimeout   = 5 * time.Second
	DefaultReconnectWait    = 100 * time.Millisecond
	DefaultReconnectMaxWait = 5 * time.Second
	DefaultReconnectJitter  = 100 * time.Millisecond
	DefaultReconnectBuffer  = 32 << 20
)

// Config is how every ringattn binary connects to NATS. Build one with
// DefaultConfig (or RegisterFlags), adjust, and pass it to Connect; the
// zero values of the durations mean their defaults.
type Config struct {
	// URLs are the servers to connect to (nats://, tls://, ws://, wss://).
	URLs []string
	// User and Password authenticate with username/password.
	User     string
	Password string
	// Token authenticates with a bearer token (not with User).
	Token string
	// CredsFile is a decentralized-auth .creds file (JWT + nkey seed).
	CredsFile string
	// NKeySeedFile is a file holding an nkey user seed (SU...).
	NKeySeedFile string
	// TLS: CA bundle to verify the server, client certificate and key for
	// mutual TLS. Setting any of them turns TLS on.
	TLSCA   string
	TLSCert string
	TLSKey  string
	// TLSInsecureSkipVerify disables server certificate verification; for
	// tests only, never on by default.
	TLSInsecureSkipVerify bool
	// Name is the connection name shown by the server (e.g. "worker-3").
	Name string
	// Prefix is the subject prefix (default "ringattn"); see Subjects.
	Prefix string
	// Bucket is the JetStream object store bucket holding tensors: the
	// default tenant's, and the base of every other tenant's (see
	// TenantBucket).
	Bucket string
	// Tenant is who a client acts as (default "default"; AdminTenant for
	// the admin): the API subjects it calls, the job events it watches and
	// the tensor bucket it uses (StoreConfig). Servers leave it empty.
	Tenant string
	// InboxPrefix is the prefix of this connection's reply subjects
	// (default: Subjects.Inbox(RoleClient, Tenant)). With auth on it must
	// be the one its role's permissions allow: Config.ForRole sets it.
	InboxPrefix string
	// Worker is the worker id this connection belongs to (ForRole sets
	// it for RoleWorker): rings opened through Conn.NewRing send as it
	// (RingConfig.Worker), as a worker's permissions require.
	Worker string
	// StoreReplicas (default 1; 3 for a cluster that survives a server
	// loss), StoreMaxBytes (0 = unlimited) and StoreTTL (0 = objects never
	// expire) are the tensor store bucket's settings, applied when the
	// bucket is created (see StoreConfig).
	StoreReplicas int
	StoreMaxBytes int64
	StoreTTL      time.Duration
	// ConnectTimeout bounds the initial dial and handshake of each server.
	ConnectTimeout time.Duration
	// Reconnection is forever, waiting ReconnectWait·2^attempt (capped at
	// ReconnectMaxWait) plus up to ReconnectJitter between rounds.
	ReconnectWait    time.Duration
	ReconnectMaxWait time.Duration
	ReconnectJitter  time.Duration
	// ReconnectBufferBytes is how much outgoing data is held while
	// reconnecting (default 32 MiB; beyond it publishes fail).
	ReconnectBufferBytes int
	// InProcess, when set, connects to a server running in this process
	// (an Embedded) over an in-memory pipe instead of dialing URLs: no
	// sockets, no system calls. Dev clusters set it; flags never do.
	InProcess nats.InProcessConnProvider
}

// DefaultConfig returns a Config for a local server without auth.
func DefaultConfig() Config {
	return Config{
		URLs:                 []string{DefaultURL},
		Name:                 DefaultName,
		Prefix:               DefaultPrefix,
		Bucket:               DefaultBucket,
		ConnectTimeout:       DefaultConnectTimeout,
		ReconnectWait:        DefaultReconnectWait,
		ReconnectMaxWait:     DefaultReconnectMaxWait,
		ReconnectJitter:      DefaultReconnectJitter,
		ReconnectBufferBytes: DefaultReconnectBuffer,
	}
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if len(c.URLs) == 0 {
		c.URLs = d.URLs
	}
	if c.Name == "" {
		c.Name = d.Name
	}
	if c.Prefix == "" {
		c.Prefix = d.Prefix
	}
	if c.Bucket == "" {
		c.Bucket = d.Bucket
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = d.ConnectTimeout
	}
	if c.ReconnectWait == 0 {
		c.ReconnectWait = d.ReconnectWait
	}
	if c.ReconnectMaxWait == 0 {
		c.ReconnectMaxWait = d.ReconnectMaxWait
	}
	if c.ReconnectJitter == 0 {
		c.ReconnectJitter = d.ReconnectJitter
	}
	if c.ReconnectBufferBytes == 0 {
		c.ReconnectBufferBytes = d.ReconnectBufferBytes
	}
	return c
}

var (
	nameRE    = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	subjectRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// Validate checks c (after defaults) and returns one error naming the first
// bad field and what it expects.
func (c Config) Validate() error {
	c = c.withDefaults()
	for i, raw := range c.URLs {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Host == "" {
			return invalid("URLs[%d] = %q: want a URL like nats://host:4222", i, raw)
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return invalid("URLs[%d] = %q: scheme %q, want nats, tls, ws or wss", i, raw, u.Scheme)
		}
	}
	if c.Password != "" && c.User == "" {
		return invalid("Password is set but User is empty: want both or neither")
	}
	if c.User != "" && c.Password == "" {
		return invalid("User %q is set but Password is empty: want both or neither", c.User)
	}
	methods := 0
	for _, set := range []bool{c.User != "", c.Token != "", c.CredsFile != "", c.NKeySeedFile != ""} {
		if set {
			methods++
		}
	}
	if methods > 1 {
		return invalid("more than one of User/Password, Token, CredsFile, NKeySeedFile is set: want at most one")
	}
	for _, f := range []struct{ name, path string }{
		{"CredsFile", c.CredsFile}, {"NKeySeedFile", c.NKeySeedFile},
		{"TLSCA", c.TLSCA}, {"TLSCert", c.TLSCert}, {"TLSKey", c.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			return invalid("%s = %q: %v", f.name, f.path, err)
		} else if st.IsDir() {
			return invalid("%s = %q is a directory: want a file", f.name, f.path)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return invalid("TLSCert and TLSKey: want both or neither (got cert %q, key %q)", c.TLSCert, c.TLSKey)
	}
	if !subjectRE.MatchString(c.Prefix) {
		return invalid("Prefix = %q: want dot-separated tokens of [A-Za-z0-9_-]", c.Prefix)
	}
	if !nameRE.MatchString(c.Bucket) {
		return invalid("Bucket = %q: want [A-Za-z0-9_-]+", c.Bucket)
	}
	if err := ValidateTenant(c.Tenant); err != nil {
		return invalid("Tenant = %q: want 1..128 characters of [A-Za-z0-9_-], not starting with \"_\" (or %q for the admin)", c.Tenant, AdminTenant)
	}
	if c.Worker != "" && !nameRE.MatchString(c.Worker) {
		return invalid("Worker = %q: want [A-Za-z0-9_-]+", c.Worker)
	}
	if c.InboxPrefix != "" && !subjectRE.MatchString(c.InboxPrefix) {
		return invalid("InboxPrefix = %q: want dot-separated tokens of [A-Za-z0-9_-]", c.InboxPrefix)
	}
	switch {
	case c.StoreReplicas < 0 || c.StoreReplicas > 5:
		return invalid("StoreReplicas = %d: want 1..5 (0 = default 1)", c.StoreReplicas)
	case c.StoreMaxBytes < 0:
		return invalid("StoreMaxBytes = %d: want >= 0 (0 = unlimited)", c.StoreMaxBytes)
	case c.StoreTTL < 0:
		return invalid("StoreTTL = %v: want >= 0 (0 = never expire)", c.StoreTTL)
	case c.ConnectTimeout < 0:
		return invalid("ConnectTimeout = %v: want > 0", c.ConnectTimeout)
	case c.ReconnectWait < 0:
		return invalid("ReconnectWait = %v: want > 0", c.ReconnectWait)
	case c.ReconnectMaxWait < c.ReconnectWait:
		return invalid("ReconnectMaxWait = %v: want >= ReconnectWait (%v)", c.ReconnectMaxWait, c.ReconnectWait)
	case c.ReconnectJitter < 0:
		return invalid("ReconnectJitter = %v: want >= 0", c.ReconnectJitter)
	case c.ReconnectBufferBytes < 0:
		return invalid("ReconnectBufferBytes = %d: want >= 0", c.ReconnectBufferBytes)
	}
	return nil
}

// StoreConfig returns the tensor store settings carried by c (the
// bucket of c's tenant, replicas, size cap, TTL); other StoreConfig
// fields keep their defaults.
func (c Config) StoreConfig() StoreConfig {
	c = c.withDefaults()
	return StoreConfig{Bucket: TenantBucket(c.Bucket, c.Tenant), Replicas: c.StoreReplicas, MaxBytes: c.StoreMaxBytes, TTL: c.StoreTTL}
}

// ForRole returns c set up for identity id of role: the inbox prefix its
// permissions allow (Subjects.Inbox), and for a client or admin the
// tenant it acts as (id; AdminTenant for RoleAdmin).
func (c Config) ForRole(role Role, id string) Config {
	switch role {
	case RoleClient:
		c.Tenant = id
	case RoleAdmin:
		c.Tenant = AdminTenant
	case RoleWorker:
		c.Worker = id
	}
	c.InboxPrefix = c.Subjects().Inbox(role, id)
	return c
}

// HasCredentials reports whether c authenticates (user/password, token,
// creds or nkey): a server serving the API with credentials should set
// APIConfig.EnforceTenants.
func (c Config) HasCredentials() bool {
	return c.User != "" || c.Token != "" || c.CredsFile != "" || c.NKeySeedFile != ""
}

// inboxPrefix is the reply-subject prefix c's connection uses.
func (c Config) inboxPrefix() string {
	if c.InboxPrefix != "" {
		return c.InboxPrefix
	}
	if c.Tenant == AdminTenant {
		return c.Subjects().Inbox(RoleAdmin, "")
	}
	return c.Subjects().Inbox(RoleClient, orDefaultTenant(c.Tenant))
}

// Subjects returns the subjects under c's prefix.
func (c Config) Subjects() Subjects { return NewSubjects(c.withDefaults().Prefix) }

// reconnectDelay is exponential backoff with jitter.
func (c Config) reconnectDelay(attempts int) time.Duration {
	d := c.ReconnectWait
	for i := 1; i < attempts && d < c.ReconnectMaxWait; i++ {
		d *= 2
	}
	d = min(d, c.ReconnectMaxWait)
	if c.ReconnectJitter > 0 {
		d += rand.N(c.ReconnectJitter)
	}
	return d
}

// Options returns the nats.go options for c; logger receives connection
// events (nil discards them).
func (c Config) Options(logger *slog.Logger) ([]nats.Option, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c = c.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.Timeout(c.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(c.ReconnectWait),
		nats.CustomReconnectDelay(c.reconnectDelay),
		nats.ReconnectBufSize(c.ReconnectBufferBytes),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			// err is nil when this side closed the connection: a clean
			// stop, not a fault worth a WARN.
			level := slog.LevelWarn
			if err == nil || nc.IsClosed() {
				level = slog.LevelInfo
			}
			logger.Log(context.Background(), level, "nats disconnected", "url", nc.ConnectedUrlRedacted(), "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted(), "reconnects", nc.Stats().Reconnects)
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			logger.Debug("nats reconnect attempt failed", "err", err)
		}),
		nats.ClosedHandler(func(nc *nats.Conn) {
			if err := nc.LastError(); err != nil {
				logger.Warn("nats connection closed", "err", err)
				return
			}
			logger.Info("nats connection closed")
		}),
		nats.DiscoveredServersHandler(func(nc *nats.Conn) {
			logger.Info("nats discovered servers", "servers", nc.DiscoveredServers())
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			logger.Warn("nats server entering lame duck mode", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				logger.Error("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			logger.Error("nats async error", "err", err)
		}),
	}
	if c.InProcess != nil {
		opts = append(opts, nats.InProcessServer(c.InProcess))
	}
	opts = append(opts, nats.CustomInboxPrefix(c.inboxPrefix()))
	switch {
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.NKeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(c.NKeySeedFile)
		if err != nil {
			return nil, invalid("NKeySeedFile = %q: %v", c.NKeySeedFile, err)
		}
		opts = append(opts, o)
	}
	if c.TLSCA != "" || c.TLSCert != "" || c.TLSInsecureSkipVerify {
		opts = append(opts, nats.Secure(&tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: c.TLSInsecureSkipVerify, //nolint:gosec // opt-in, tests only
		}))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	return opts, nil
}

// Connect validates cfg, connects to the first reachable server and
// returns the connection, which reconnects forever afterwards. Connection
// events go to logger. Rejected credentials give one error wrapping ErrAuth
// (and the nats.go error); unreachable servers one wrapping ErrConnect.
func Connect(cfg Config, logger *slog.Logger) (*nats.Conn, error) {
	opts, err := cfg.Options(logger)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	urls := strings.Join(cfg.URLs, ",")
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		who := ""
		switch {
		case cfg.User != "":
			who = fmt.Sprintf(" as user %q", cfg.User)
		case cfg.Token != "":
			who = " with a token"
		case cfg.CredsFile != "":
			who = fmt.Sprintf(" with creds %q", cfg.CredsFile)
		case cfg.NKeySeedFile != "":
			who = fmt.Sprintf(" with nkey seed %q", cfg.NKeySeedFile)
		}
		if isAuthError(err) {
			return nil, fmt.Errorf("%w: connecting to %s%s: %w", ErrAuth, redact(cfg.URLs), who, err)
		}
		return nil, fmt.Errorf("%w: %s%s: %w", ErrConnect, redact(cfg.URLs), who, err)
	}
	if logger != nil {
		logger.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName(),
			"max_payload", nc.MaxPayload())
	}
	return nc, nil
}

// ConnectWait is Connect, retried with backoff (100 ms doubling to 2 s)
// while no server answers (ErrConnect), for up to wait: the processes of a
// cluster start in any order. Bad configuration and refused credentials
// fail at once.
func ConnectWait(cfg Config, logger *slog.Logger, wait time.Duration) (*nats.Conn, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	deadline := time.Now().Add(wait)
	pause := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := Connect(cfg, logger)
		if err == nil || !errors.Is(err, ErrConnect) || time.Now().Add(pause).After(deadline) {
			return nc, err
		}
		logger.Warn("cannot reach NATS yet; retrying", "attempt", attempt, "in", pause, "err", err)
		time.Sleep(pause)
		pause = min(2*pause, 2*time.Second)
	}
}

func isAuthError(err error) bool {
	for _, e := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		if errors.Is(err, e) {
			return true
		}
	}
	return strings.Contains(strings.ToLower(err.Error()), "authorization violation")
}

// redact drops user info from URLs for error messages.
func redact(urls []string) string {
	out := make([]string, len(urls))
	for i, raw := range urls {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			out[i] = "(bad url)"
			continue
		}
		if u.User != nil {
			u.User = url.User("redacted")
		}
		out[i] = u.String()
	}
	return strings.Join(out, ",")
}
