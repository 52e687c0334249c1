// Package bench is `ringattn bench`: the benchmarks of the kernel, the
// in-process ring, an in-process cluster, and multi-process clusters
// (internal/localcluster) under faults and load. Each prints Markdown
// tables and can plot them (gonum/plot); every result is checked against
// the local kernel or the float64 reference, and a bench whose outputs are
// wrong fails.
//
//	kernel    the local kernel's GFLOP/s and peak RSS per shape, each shape
//	          in a child process (the ringattn binary run again with --one)
//	ring      an R-rank in-memory ring against the kernel: the overhead
//	cluster   an in-process W-worker cluster: overhead, tiny-job latency
//	rss       each worker process's peak RSS per job shape
//	recovery  recovery times from worker, leader and NATS faults mid-job
//	load      many clients' jobs under faults (localcluster.RunLoad)
//
// The package is tooling, kept out of the CLI's own package so that the
// product does not carry it: cmd/ringattn dispatches `ringattn bench
// <target>` to Run with an Env holding its output streams and its flag
// handling, so the benches' --help and errors read like every command's.
// Run returns a UsageError for bad usage (exit 2) and flag.ErrHelp after
// printing a --help.
package bench
