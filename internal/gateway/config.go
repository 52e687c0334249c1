package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/ringattn/ringattn/pkg/shard"
)

// DefaultAddr is where a gateway listens unless told otherwise: loopback.
const DefaultAddr = "127.0.0.1:8080"

// Config of a gateway; zero values mean the defaults.
type Config struct {
	// Token, when set, is the bearer token every /v1 request must carry.
	Token string
	// MaxRequestBytes bounds a submit's body: the spec and every tensor
	// part together (default 1 GiB). Past it the answer is 413.
	MaxRequestBytes int64
	// MaxInFlight bounds the submits and output downloads served at once,
	// each holding its tensors in memory (default 4). Past it the answer is
	// 429 with Retry-After.
	MaxInFlight int
	// Limits are the job limits checked before anything is uploaded: the
	// coordinators' (zero value: shard.DefaultLimits).
	Limits shard.Limits
	// ClusterTimeout bounds each call to the cluster (default 30 s): a
	// cluster that does not answer within it gives 503.
	ClusterTimeout time.Duration
	// MaxWait bounds a long-poll (GET /v1/jobs/{id}?wait=...), default 60 s.
	MaxWait time.Duration
	// Version is reported by GET /v1/info.
	Version string
	// Logger receives request errors (nil discards them).
	Logger *slog.Logger
}

// WithDefaults returns c with its zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = 1 << 30
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 4
	}
	if c.Limits == (shard.Limits{}) {
		c.Limits = shard.DefaultLimits()
	}
	if c.ClusterTimeout == 0 {
		c.ClusterTimeout = 30 * time.Second
	}
	if c.MaxWait == 0 {
		c.MaxWait = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first field out of range, naming it.
func (c Config) Validate() error {
	switch {
	case c.MaxRequestBytes < 1:
		return fmt.Errorf("MaxRequestBytes = %d, expected >= 1", c.MaxRequestBytes)
	case c.MaxInFlight < 1:
		return fmt.Errorf("MaxInFlight = %d, expected >= 1", c.MaxInFlight)
	case c.ClusterTimeout <= 0:
		return fmt.Errorf("ClusterTimeout = %v, expected > 0", c.ClusterTimeout)
	case c.MaxWait <= 0:
		return fmt.Errorf("MaxWait = %v, expected > 0", c.MaxWait)
	}
	if err := c.Limits.Validate(); err != nil {
		return fmt.Errorf("Limits.%v", err)
	}
	return nil
}

// CheckBind refuses to serve a non-loopback address without a token,
// unless insecure is set: the job API would be open to the network.
func CheckBind(addr, token string, insecure bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v", addr, err)
	}
	if token != "" || insecure || Loopback(host) {
		return nil
	}
	return errors.New("address " + addr + " is not loopback: set a bearer token (--token or RINGATTN_GATEWAY_TOKEN), or allow it explicitly with --insecure")
}

// Loopback reports whether host (a name or an IP, no port) is a loopback
// address; "" and unspecified addresses (every interface) are not.
func Loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
