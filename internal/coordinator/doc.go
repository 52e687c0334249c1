// Package coordinator is ringattn's control plane: a Raft-replicated job
// queue and scheduler that survives losing its leader without losing or
// duplicating a job (DESIGN.md §3, §5, §7; the state machine is argued in
// this package's DESIGN.md).
//
// Layout:
//
//   - state.go: the replicated State and its transitions, plain Go with no
//     raft import, driven by typed append-only commands (pb.Command
//     envelope, one Apply switch); snapshot.go: its versioned snapshots;
//     logschema.go: the conversion to and from the log's own schema.
//   - fsm.go: the thin raft.FSM adapter. A committed entry that cannot be
//     decoded stops the node (Deps.Fatal, default panic); business errors
//     come back in the apply response (Result.Err).
//   - coordinator.go: Raft (hashicorp/raft with raft-wal as log and stable
//     store, file snapshots in Config.DataDir, TCP transport), static-peer
//     bootstrap, leadership tracking.
//   - leader.go: the leader session's life: serves heartbeats, reports
//     and the API through transport's typed calls, runs the rounds.
//   - registry.go: the worker registry from sanitized heartbeats (soft
//     state).
//   - scheduler.go: the scheduler, a pure function of (jobs, workers,
//     now) returning decisions: deadlines, re-plans, gang-sized starts
//     with waiting and backfill (DESIGN.md, "Scheduling").
//   - tick.go: the leader's round: builds the scheduler's input from the
//     log and the registry and commits its decisions through Raft.
//   - dispatch.go: epochs planned by pkg/shard (weighted by worker
//     GFLOP/s) and encoded by transport's codec, assignments and their
//     (re-)sends, job ends and events.
//   - expiry.go: the progress watchdog, TTL expiry of finished jobs and
//     forgetting soft state of epochs that are over.
//   - report.go: the worker report handler: checks the reporting worker
//     owns the rank, acks only after commit.
//   - verify.go: outputs checked against the store before a job succeeds
//     (and again when a client gets it); sweep.go: orphaned uploads deleted.
//   - progress.go: per-ring-step PROGRESS events from the heartbeats.
//   - contain.go: panic containment and bounded, cancellable planning.
//   - api.go: the client API, served by the leader with
//     transport.ServeAPI;
//     busy.go: bounded request and report handling (BUSY replies); the
//     queue limit itself is decided in State.Apply.
//   - http.go, jsonview.go, status.go, leaderhttp.go, metrics.go: ops
//     endpoints (plain JSON, the status page linking the leader's) and
//     Prometheus metrics.
//
// The wire messages are in pkg/transport/pb (api.proto, control.proto).
// The log entries and snapshot records are internal/coordinator/pb's
// raft.proto, a schema of their own (versioned, importing nothing of the
// wire's); the in-memory records State works on are its state.proto;
// logschema.go converts between them at the log's edge.
package coordinator
