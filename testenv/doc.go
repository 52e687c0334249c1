// Package testenv holds the system and fault tests of ringattn: each runs
// a real multi-process cluster on this machine (internal/localcluster: a
// NATS server, coordinators and workers as OS processes, built from this
// checkout once per test binary) and faults it.
//
// System tests (TestSystem*) run real faults against real processes and
// check every result against the float64 reference (internal/attnref),
// and that no job is lost or finished twice. Each fault is landed where
// it must be by polling (a worker's ring step counter, its running
// shards) or by the workers' test-only fault hooks (StartWorkerEnv with
// RINGATTN_FAULT_STALL stalls a rank after a given ring step); a test that
// cannot land its fault fails rather than passing with a note.
//
// When a test fails (or with TESTENV_DUMP_LOGS=1) the tail of every
// process's log is written to the test log; TESTENV_LOG_LEVEL sets the
// processes' log level.
//
// The package has no non-test code: the launcher it tests with is
// internal/localcluster, which `ringattn cluster` and `ringattn bench`
// use too.
package testenv
