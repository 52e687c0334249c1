// Package testenv runs a real multi-process ringattn cluster on one
// machine: a NATS server with JetStream (file store), coordinators and
// workers, each a separate OS process on loopback with its own free ports,
// its own data directory and its own log file. It is what the system and
// fault tests of this package run against, and what `ringattn cluster`
// runs in the foreground for users.
//
// Every process can be killed (SIGKILL), hung and resumed (SIGSTOP,
// SIGCONT), terminated (SIGTERM) and restarted with the same data
// directory and ports. A Proxy sits between a worker and NATS when asked
// and adds latency, limits bandwidth or drops connections.
//
// The binaries come from Build (go build from a source checkout, once per
// test binary) or FindBinaries (next to the running executable, then
// $PATH). The NATS server binary is nats-server built from the module's own
// github.com/nats-io/nats-server/v2 dependency.
//
// Nothing here sleeps for a fixed time: every wait polls a condition
// against a deadline.
package testenv
