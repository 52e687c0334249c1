// Package testenv runs a real multi-process ringattn cluster on one
// machine: a NATS server with JetStream (file store), coordinators and
// workers, each a separate OS process on loopback with its own free ports,
// its own data directory and its own log file. It is what the system and
// fault tests of this package run against, and what `ringattn cluster`
// runs in the foreground for users.
//
//	bins, err := testenv.Build(ctx, root, binDir) // or FindBinaries, Locate
//	c, err := testenv.Start(ctx, testenv.Config{Bin: bins, Workers: 3})
//	defer c.Close()
//	leader, _ := c.Leader(ctx)
//	leader.Kill()                   // SIGKILL; Stop/Cont (SIGSTOP/SIGCONT), Terminate (SIGTERM)
//	next, _ := c.WaitLeader(ctx, leader)
//	c.RestartAndWait(ctx, leader)   // same data directory, same ports
//
// Every process can be killed (SIGKILL), hung and resumed (SIGSTOP,
// SIGCONT), terminated (SIGTERM) and restarted with the same data
// directory and ports. With Config.ProxyWorkers each worker reaches NATS
// through its own Proxy, which adds latency, caps bandwidth, refuses or
// drops connections. Each process writes to Dir/logs/<name>.log (appended
// across restarts); DumpLogs prints their tails, and the tests of this
// package do so when they fail (or with TESTENV_DUMP_LOGS=1).
//
// Readiness is observed, never assumed: NATS serves JetStream; each
// coordinator's /readyz answers 200 and a leader serves the API over NATS;
// each worker's /readyz answers 200 and the leader lists it as live and
// heard from since the process started.
//
// The binaries come from Build (go build from a source checkout; the test
// binary of this package builds them once, on first use), FindBinaries
// (next to the running executable, then $PATH) or Locate (what `ringattn
// cluster` uses: --bin DIR, else build from the checkout, else
// FindBinaries). nats-server is built from the module's own
// github.com/nats-io/nats-server/v2 dependency.
//
// Dir keeps layout.json, the ports of the NATS server and coordinators, so
// a cluster started again on the same Dir comes back with the same
// addresses (the coordinators' Raft state names its peers by address) and
// its jobs, tensors and logs.
//
// Nothing here sleeps for a fixed time: every wait polls a condition
// against a deadline (Poll, PollInterval).
//
// System tests (TestSystem*) run real faults against real processes and
// check every result against the float64 reference (internal/attnref),
// and that no job is lost or finished twice. Each fault is landed where
// it must be by polling (a worker's ring step counter, its running
// shards) or by the workers' test-only fault hooks (StartWorkerEnv with
// RINGATTN_FAULT_STALL stalls a rank after a given ring step); a test that
// cannot land its fault fails rather than passing with a note.
//
// RunLoad drives many concurrent clients' jobs with idempotency keys into
// a cluster while workers, the leader and NATS are faulted, and reports
// throughput, latency, per-fault stall and recovery times, duplicates,
// lost jobs, leaked records and namespaces, and each process's goroutines
// and RSS against its idle level (TestSystemLoad, `ringattn bench load`).
package testenv
