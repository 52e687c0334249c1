package worker

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Defaults of Config.
const (
	DefaultSlots             = 1
	DefaultHeartbeatInterval = time.Second
	DefaultDrainTimeout      = 30 * time.Second
	DefaultRecvTimeout       = 5 * time.Second
	DefaultRequestTimeout    = 2 * time.Second
	DefaultReportBackoffMax  = 2 * time.Second
	DefaultMeasureDuration   = 150 * time.Millisecond
	// DefaultDoneRetention is how long a finished shard's record is kept
	// after its report was acknowledged, so a re-issued assignment of the
	// same (job, epoch, rank) re-sends the report instead of recomputing.
	DefaultDoneRetention = 10 * time.Minute
	// MetricsDisabled as Config.MetricsAddr turns the HTTP server off.
	MetricsDisabled = "off"
	// MaxGFLOPS bounds Config.GFLOPS: a speed above it (a petaFLOP/s for
	// one worker process) is a typo, and would draw every block of every
	// plan weighted by speed onto this worker.
	MaxGFLOPS = 1e6
)

// Config configures a Worker. Zero values mean their defaults; build one
// with DefaultConfig or fill the fields you need.
type Config struct {
	// ID names the worker on the wire (subject token: [A-Za-z0-9_-]+).
	// Empty means <hostname>-<pid>-<random>.
	ID string
	// NATS is how to reach NATS and the tensor store bucket.
	NATS transport.Config
	// Limits bound the jobs this worker accepts assignments for. They must
	// be the coordinators' (the same flags): an assignment the leader may
	// send but the worker refuses fails its job. The zero value means
	// shard.DefaultLimits().
	Limits shard.Limits
	// Slots is how many ranks the worker runs at once (default 1).
	Slots int
	// Threads bounds the kernel goroutines of one rank; 0 means GOMAXPROCS
	// divided by Slots (at least 1).
	Threads int
	// HeartbeatInterval is the period of heartbeats (default 1 s).
	HeartbeatInterval time.Duration
	// DrainTimeout bounds Drain when its context has no deadline: running
	// shards that have not finished by then are abandoned (default 30 s).
	DrainTimeout time.Duration
	// RecvTimeout is how long a rank waits for a ring frame before it
	// fetches the block from the store instead (default 5 s).
	RecvTimeout time.Duration
	// RequestTimeout bounds one control request (heartbeat, report) to the
	// leader (default 2 s).
	RequestTimeout time.Duration
	// ReportBackoffMax caps the backoff between report retries (default 2 s).
	ReportBackoffMax time.Duration
	// DoneRetention is how long an acknowledged shard is remembered for
	// idempotent re-assignment (default 10 min).
	DoneRetention time.Duration
	// GFLOPS, when > 0, is reported instead of measuring the kernel speed
	// at start. MeasureDuration is how long the measurement runs (default
	// 150 ms).
	GFLOPS          float64
	MeasureDuration time.Duration
	// MetricsAddr is the HTTP address serving /metrics and /healthz
	// (default "127.0.0.1:0", a free port; MetricsDisabled turns it off).
	MetricsAddr string
	// Version is reported in heartbeats (default "dev").
	Version string
	// Logger receives the worker's logs (nil discards them).
	Logger *slog.Logger
	// StallFault and PanicFault are test-only fault injections; leave them
	// nil in production. A rank they pick (see Fault) stalls — keeps its
	// worker heartbeating but makes no progress until its context ends —
	// or panics inside its computation. cmd/worker reads them from
	// RINGATTN_FAULT_STALL and RINGATTN_FAULT_PANIC (ParseFault).
	StallFault, PanicFault *Fault
	// Registerer receives the worker's metrics (nil: a private registry).
	// Gatherer, when set, is what /metrics serves; nil serves the
	// Registerer when it is also a Gatherer.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// DefaultConfig returns a Config with every default filled in except ID.
func DefaultConfig() Config {
	return Config{
		NATS:              transport.DefaultConfig(),
		Limits:            shard.DefaultLimits(),
		Slots:             DefaultSlots,
		HeartbeatInterval: DefaultHeartbeatInterval,
		DrainTimeout:      DefaultDrainTimeout,
		RecvTimeout:       DefaultRecvTimeout,
		RequestTimeout:    DefaultRequestTimeout,
		ReportBackoffMax:  DefaultReportBackoffMax,
		DoneRetention:     DefaultDoneRetention,
		MeasureDuration:   DefaultMeasureDuration,
		MetricsAddr:       "127.0.0.1:0",
		Version:           "dev",
	}
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// DefaultID returns <hostname>-<pid>-<4 random hex bytes>, with every
// character a subject token cannot hold replaced by '-'.
func DefaultID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	host = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '-'
	}, host)
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// withDefaults fills zero fields with their defaults.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.ID == "" {
		c.ID = DefaultID()
	}
	if c.Slots == 0 {
		c.Slots = d.Slots
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = d.HeartbeatInterval
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = d.DrainTimeout
	}
	if c.RecvTimeout == 0 {
		c.RecvTimeout = d.RecvTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.ReportBackoffMax == 0 {
		c.ReportBackoffMax = d.ReportBackoffMax
	}
	if c.DoneRetention == 0 {
		c.DoneRetention = d.DoneRetention
	}
	if c.MeasureDuration == 0 {
		c.MeasureDuration = d.MeasureDuration
	}
	if c.MetricsAddr == "" {
		c.MetricsAddr = d.MetricsAddr
	}
	if c.Version == "" {
		c.Version = d.Version
	}
	if c.Limits == (shard.Limits{}) {
		c.Limits = shard.DefaultLimits()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// Validate checks c (after defaults) and returns one error naming the first
// bad field and what it expects.
func (c Config) Validate() error {
	c = c.withDefaults()
	if !idRE.MatchString(c.ID) {
		return invalid("ID = %q: want [A-Za-z0-9_-]+ (it is a NATS subject token)", c.ID)
	}
	if err := c.NATS.Validate(); err != nil {
		return fmt.Errorf("%w: NATS: %w", ErrInvalidConfig, err)
	}
	if err := c.Limits.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	switch {
	case c.Slots < 1 || c.Slots > 1024:
		return invalid("Slots = %d: want 1..1024", c.Slots)
	case c.Threads < 0:
		return invalid("Threads = %d: want >= 0 (0 means GOMAXPROCS/Slots)", c.Threads)
	case c.HeartbeatInterval < 10*time.Millisecond:
		return invalid("HeartbeatInterval = %v: want >= 10ms", c.HeartbeatInterval)
	case c.DrainTimeout < 0:
		return invalid("DrainTimeout = %v: want > 0", c.DrainTimeout)
	case c.RecvTimeout < 0:
		return invalid("RecvTimeout = %v: want > 0", c.RecvTimeout)
	case c.RequestTimeout < 0:
		return invalid("RequestTimeout = %v: want > 0", c.RequestTimeout)
	case c.ReportBackoffMax < 0:
		return invalid("ReportBackoffMax = %v: want > 0", c.ReportBackoffMax)
	case c.DoneRetention < 0:
		return invalid("DoneRetention = %v: want > 0", c.DoneRetention)
	case CheckGFLOPS(c.GFLOPS) != nil:
		return invalid("GFLOPS = %v: %v", c.GFLOPS, CheckGFLOPS(c.GFLOPS))
	case c.MeasureDuration < 0:
		return invalid("MeasureDuration = %v: want > 0", c.MeasureDuration)
	}
	return nil
}

// CheckGFLOPS returns why gf cannot be a worker's reported speed: it must
// be 0 (measure at start) or a finite number in (0, MaxGFLOPS]. NaN, Inf,
// negative and absurd speeds would skew every plan weighted by speed.
func CheckGFLOPS(gf float64) error {
	if gf == 0 || (gf > 0 && gf <= MaxGFLOPS) { // false for NaN and +Inf
		return nil
	}
	return fmt.Errorf("want 0 (measure at start) or a finite speed in (0, %g] GFLOP/s", float64(MaxGFLOPS))
}
