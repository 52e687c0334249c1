package testenv

import "errors"

// Sentinel errors of the harness.
var (
	// ErrInvalid: a Config field is wrong (the error names it).
	ErrInvalid = errors.New("testenv: invalid config")
	// ErrBinaryNotFound: a binary was neither built nor found.
	ErrBinaryNotFound = errors.New("testenv: binary not found")
	// ErrBuild: go build failed (the error carries its output).
	ErrBuild = errors.New("testenv: build failed")
	// ErrNotReady: a process or the cluster did not become ready in time.
	ErrNotReady = errors.New("testenv: not ready")
	// ErrExited: a process exited when it should be running.
	ErrExited = errors.New("testenv: process exited")
	// ErrRunning: the process is running (Restart needs it stopped).
	ErrRunning = errors.New("testenv: process is running")
	// ErrPortInUse: a process exited because a port it was given was
	// taken (by another program, between the harness picking it and the
	// process binding it).
	ErrPortInUse = errors.New("testenv: port in use")
	// ErrNoLeader: no coordinator is leader.
	ErrNoLeader = errors.New("testenv: no leader")
)
