// Package localcluster runs a real multi-process ringattn cluster on one
// machine: a NATS server with JetStream (file store), coordinators and
// workers, each a separate OS process on loopback with its own free ports,
// its own data directory and its own log file. `ringattn cluster` runs one
// in the foreground for users, `ringattn bench rss|recovery|load` measure
// against one, and the system and fault tests of testenv run against one.
//
//	bins, err := localcluster.Build(ctx, root, binDir) // or FindBinaries, Locate
//	c, err := localcluster.Start(ctx, localcluster.Config{Bin: bins, Workers: 3})
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
// across restarts); DumpLogs prints their tails.
//
// Readiness is observed, never assumed: NATS serves JetStream (its
// monitoring /healthz); each coordinator's /readyz answers 200 and a
// leader serves the API over NATS; each worker's /readyz answers 200 and
// the leader lists it as live and heard from since the process started.
// Nothing here sleeps for a fixed time: every wait polls a condition
// against a deadline (Poll, PollInterval; Permanent ends a poll early).
//
// The binaries come from Build (go build from a source checkout),
// FindBinaries (next to the running executable, then $PATH) or Locate
// (what `ringattn cluster` uses: --bin DIR, else build from the checkout,
// else FindBinaries). nats-server is built from the module's own
// github.com/nats-io/nats-server/v2 dependency.
//
// Dir keeps LayoutFile, the ports of the NATS server and coordinators, so
// a cluster started again on the same Dir comes back with the same
// addresses (the coordinators' Raft state names its peers by address) and
// its jobs, tensors and logs.
//
// RunLoad drives many concurrent clients' jobs with idempotency keys into
// a cluster while workers, the leader and NATS are faulted, and reports
// throughput, latency, per-fault stall and recovery times, duplicates,
// lost jobs, leaked records and namespaces, and each process's goroutines
// and RSS against its idle level (`ringattn bench load`, testenv's
// TestSystemLoad).
//
// The package speaks to the cluster only through pkg/client and
// pkg/transport (and HTTP to the processes' ops endpoints); it does not
// import nats, nor testing: it is linked into the ringattn CLI.
package localcluster
