package transport

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
)

// The NATS client's connection errors, named here so callers classify
// them without importing nats: the connection was closed (for good), or
// no server answered at any of the URLs.
var (
	ErrConnectionClosed = nats.ErrConnectionClosed
	ErrNoServers        = nats.ErrNoServers
)

// Sentinel errors of this package. Errors returned by it wrap one of these
// (or a ringattn sentinel, for the ring) so callers can use errors.Is.
var (
	// ErrInvalidConfig is wrapped by every Config/EmbeddedConfig/StoreConfig/
	// RingConfig validation error.
	ErrInvalidConfig = errors.New("transport: invalid configuration")
	// ErrAuth is wrapped when the NATS server rejects the credentials.
	ErrAuth = errors.New("transport: authentication failed")
	// ErrConnect is wrapped when no NATS server could be reached.
	ErrConnect = errors.New("transport: cannot connect to NATS")
	// ErrInvalidName is wrapped when a job id or tensor name is not
	// [A-Za-z0-9_-]+, or a block index is negative.
	ErrInvalidName = errors.New("transport: invalid name")
	// ErrInvalidShape is wrapped when a tensor's shape, length or block
	// length is inconsistent.
	ErrInvalidShape = errors.New("transport: invalid tensor shape")
	// ErrBlockNotFound is wrapped when a block is not in the store.
	ErrBlockNotFound = errors.New("transport: block not found")
	// ErrCorrupt is wrapped when a block or frame fails its CRC32C check or
	// does not decode (see CorruptBlockError).
	ErrCorrupt = errors.New("transport: corrupt data")
	// ErrTooLarge is wrapped when a block or frame exceeds a configured limit.
	ErrTooLarge = errors.New("transport: too large")
	// ErrStoreFull is wrapped when the store bucket has reached its MaxBytes.
	ErrStoreFull = errors.New("transport: tensor store full")
	// ErrClosed is returned by a NATSRing after Close.
	ErrClosed = errors.New("transport: ring closed")
	// ErrAbandoned is wrapped, with ringattn.ErrTimeout, by a NATSRing's
	// Recv of a frame its sender announced it abandoned (the receiver did
	// not acknowledge it in time, or a publish failed): the sender was
	// alive then, so a receiver need not treat it as stalled.
	ErrAbandoned = errors.New("transport: frame abandoned by its sender")
	// ErrPermission is wrapped when the NATS server refused this
	// connection a permission the call needed (its role's permissions do
	// not allow it: another tenant's bucket, an unprovisioned one).
	ErrPermission = errors.New("transport: permission denied")
	// ErrEmbeddedStopped is returned by an in-process connection to an
	// Embedded server that is stopped.
	ErrEmbeddedStopped = errors.New("transport: embedded server stopped")
)

// BlockRef names one block of one tensor of one job.
type BlockRef struct {
	Job    string
	Tensor string
	Block  int
}

func (r BlockRef) String() string {
	return fmt.Sprintf("job %q tensor %q block %d", r.Job, r.Tensor, r.Block)
}

// CorruptBlockError reports a stored block whose bytes do not match their
// CRC32C (or the object store's digest), or whose size does not match its
// metadata. It wraps ErrCorrupt.
type CorruptBlockError struct {
	Job    string
	Tensor string
	Block  int
	// Reason says what did not match.
	Reason string
}

func (e *CorruptBlockError) Error() string {
	return fmt.Sprintf("transport: corrupt block (%s): %s", BlockRef{e.Job, e.Tensor, e.Block}, e.Reason)
}

// Unwrap returns ErrCorrupt.
func (e *CorruptBlockError) Unwrap() error { return ErrCorrupt }
