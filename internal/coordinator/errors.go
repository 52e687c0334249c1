package coordinator

import (
	"errors"
	"fmt"
)

// Sentinel errors. Business errors of the state machine come back through
// the Raft apply response; the API translates them to pb.ErrorCode.
var (
	// ErrNotFound: no such job (or it expired and was purged).
	ErrNotFound = errors.New("coordinator: job not found")
	// ErrExists: a submit reused an existing job id.
	ErrExists = errors.New("coordinator: job id already exists")
	// ErrIdempotencyConflict: an idempotency key was reused with a different spec.
	ErrIdempotencyConflict = errors.New("coordinator: idempotency key reused with a different spec")
	// ErrStaleEpoch: a command names an epoch other than the job's current (+1 for a start).
	ErrStaleEpoch = errors.New("coordinator: stale epoch")
	// ErrFinished: the job already finished.
	ErrFinished = errors.New("coordinator: job already finished")
	// ErrNotDone: a job cannot succeed while output blocks are unfinished.
	ErrNotDone = errors.New("coordinator: output blocks unfinished")
	// ErrBadCommand: a well-formed command with impossible content (rank out
	// of range, missing plan).
	ErrBadCommand = errors.New("coordinator: invalid command")
	// ErrCorruptEntry: a committed log entry cannot be decoded; the node stops.
	ErrCorruptEntry = errors.New("coordinator: corrupt log entry")
	// ErrSnapshot: a snapshot cannot be read.
	ErrSnapshot = errors.New("coordinator: bad snapshot")
	// ErrInvalid: a client request or configuration is invalid.
	ErrInvalid = errors.New("coordinator: invalid")
	// ErrNotLeader: this node is not the Raft leader.
	ErrNotLeader = errors.New("coordinator: not the leader")
	// ErrInputInUse: a submit names the input namespace of a live job.
	ErrInputInUse = errors.New("coordinator: input namespace in use")
	// ErrLimit: a size or queue limit was hit.
	ErrLimit = errors.New("coordinator: limit exceeded")
	// ErrQueueFull: a submit found Limits.MaxQueued jobs queued (decided
	// in State.Apply). It wraps ErrLimit.
	ErrQueueFull = fmt.Errorf("%w: queue full", ErrLimit)
	// ErrTenantQuota: a submit found its tenant with Config.MaxActivePerTenant
	// jobs queued or running (decided in State.Apply). It wraps ErrLimit.
	ErrTenantQuota = fmt.Errorf("%w: tenant quota", ErrLimit)
)
