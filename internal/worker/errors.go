package worker

import "errors"

// Sentinel errors of this package.
var (
	// ErrInvalidConfig is wrapped by every Config validation error.
	ErrInvalidConfig = errors.New("worker: invalid configuration")
	// ErrInvalidAssignment is wrapped when an assignment is malformed (its
	// plan, rank or parameters do not fit together); the worker rejects it.
	ErrInvalidAssignment = errors.New("worker: invalid assignment")
	// ErrStarted is returned by Run when the worker already ran.
	ErrStarted = errors.New("worker: already started")
	// ErrAborted is the cause of a shard's context when the leader aborted
	// it (job finished, canceled, or moved to a newer epoch).
	ErrAborted = errors.New("worker: shard aborted")
	// ErrDrained is the cause of a shard's context when a drain gave up on
	// it at the drain timeout.
	ErrDrained = errors.New("worker: shard abandoned by drain")
	// ErrStopped is the cause of a shard's context when the worker stops.
	ErrStopped = errors.New("worker: stopped")
)
