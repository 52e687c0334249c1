package localcluster

import "errors"

// Sentinel errors of the harness.
var (
	// ErrInvalid: a Config field is wrong (the error names it).
	ErrInvalid = errors.New("localcluster: invalid config")
	// ErrBinaryNotFound: a binary was neither built nor found.
	ErrBinaryNotFound = errors.New("localcluster: binary not found")
	// ErrBuild: go build failed (the error carries its output).
	ErrBuild = errors.New("localcluster: build failed")
	// ErrNotReady: a process or the cluster did not become ready in time.
	ErrNotReady = errors.New("localcluster: not ready")
	// ErrExited: a process exited when it should be running.
	ErrExited = errors.New("localcluster: process exited")
	// ErrRunning: the process is running (Restart needs it stopped).
	ErrRunning = errors.New("localcluster: process is running")
	// ErrPortInUse: a process exited because a port it was given was
	// taken (by another program, between the harness picking it and the
	// process binding it).
	ErrPortInUse = errors.New("localcluster: port in use")
	// ErrNoLeader: no coordinator is leader.
	ErrNoLeader = errors.New("localcluster: no leader")
)
