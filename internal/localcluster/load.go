package localcluster

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// LoadFault is a process fault RunLoad injects while the load runs.
type LoadFault string

// The faults of a load run.
const (
	// FaultWorkerKill SIGKILLs a worker that runs a shard; a new worker
	// replaces it.
	FaultWorkerKill LoadFault = "worker-kill"
	// FaultWorkerTerm SIGTERMs a worker that runs a shard: it drains and
	// must exit 0; a new worker replaces it.
	FaultWorkerTerm LoadFault = "worker-term"
	// FaultLeaderKill SIGKILLs the coordinator leader while jobs run; it
	// is restarted with its data once a new leader serves.
	FaultLeaderKill LoadFault = "leader-kill"
	// FaultNATSRestart SIGKILLs the NATS server while jobs run and starts
	// it again on the same port and store.
	FaultNATSRestart LoadFault = "nats-restart"
)

// AllLoadFaults are every fault, in the order RunLoad injects them.
var AllLoadFaults = []LoadFault{FaultWorkerKill, FaultWorkerTerm, FaultLeaderKill, FaultNATSRestart}

// ParseLoadFaults reads "all", "none" or a comma list of fault names.
func ParseLoadFaults(s string) ([]LoadFault, error) {
	switch strings.TrimSpace(s) {
	case "all":
		return slices.Clone(AllLoadFaults), nil
	case "none", "":
		return nil, nil
	}
	var out []LoadFault
	for _, item := range strings.Split(s, ",") {
		f := LoadFault(strings.TrimSpace(item))
		if !slices.Contains(AllLoadFaults, f) {
			var names []string
			for _, a := range AllLoadFaults {
				names = append(names, string(a))
			}
			return nil, fmt.Errorf("%w: fault %q: want all, none or a comma list of %s", ErrInvalid, item, strings.Join(names, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// LoadConfig configures RunLoad. Zero values mean the defaults noted.
type LoadConfig struct {
	// Clients submit concurrently, each over its own NATS connection
	// (default 50).
	Clients int
	// Small and Large are the numbers of small jobs (a few blocks,
	// milliseconds of work) and larger jobs (a few GFLOP) (default 300
	// and 4).
	Small, Large int
	// Faults are injected in order, spread over the run: fault i of n
	// once (i+1)/(n+1) of the jobs finished (and not before the previous
	// fault's cluster is restored).
	Faults []LoadFault
	// Seed makes the inputs and the idempotency keys (default 1).
	Seed uint64
	// JobTimeout bounds each job from its first submit to its checked
	// outputs (default 5 min).
	JobTimeout time.Duration
	// ExpiryTimeout bounds the wait, after the load, for every job record
	// and every store namespace to be gone (default 2 min). The cluster's
	// coordinators need a short --job-ttl and --sweep-grace for it
	// (LoadCoordinatorArgs).
	ExpiryTimeout time.Duration
	// IdleTimeout bounds the wait for the processes' goroutines and RSS
	// to return to their idle level (default 60 s).
	IdleTimeout time.Duration
	// GoroutineSlack: a process is back at idle with at most idle +
	// GoroutineSlack goroutines (default 25).
	GoroutineSlack int
	// RSSSlack: ... and a resident set of at most idle + RSSSlack bytes
	// (default 96 MiB).
	RSSSlack int64
	// Logger receives progress (nil: discard).
	Logger *slog.Logger
}

func (c *LoadConfig) fill() error {
	if c.Clients == 0 {
		c.Clients = 50
	}
	if c.Small == 0 && c.Large == 0 {
		c.Small, c.Large = 300, 4
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.JobTimeout <= 0 {
		c.JobTimeout = 5 * time.Minute
	}
	if c.ExpiryTimeout <= 0 {
		c.ExpiryTimeout = 2 * time.Minute
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = time.Minute
	}
	if c.GoroutineSlack <= 0 {
		c.GoroutineSlack = 25
	}
	if c.RSSSlack <= 0 {
		c.RSSSlack = 96 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Clients < 1 || c.Clients > 1000:
		return fmt.Errorf("%w: Clients = %d: want 1..1000", ErrInvalid, c.Clients)
	case c.Small < 0 || c.Large < 0 || c.Small+c.Large > 1_000_000:
		return fmt.Errorf("%w: Small = %d, Large = %d: want >= 0 and at most 1000000 jobs", ErrInvalid, c.Small, c.Large)
	}
	for _, f := range c.Faults {
		if !slices.Contains(AllLoadFaults, f) {
			return fmt.Errorf("%w: fault %q: want one of %v", ErrInvalid, f, AllLoadFaults)
		}
	}
	return nil
}

// LoadCoordinatorArgs are coordinator flags that let a load run's jobs
// expire after jobTTL and orphaned uploads be swept after sweepGrace, so
// that RunLoad can check that nothing leaked. Tombstones (id, state,
// idempotency key of an expired job) stay for the run: RunLoad checks the
// keys against them. jobTTL must exceed the time a client takes from its
// job finishing to its outputs fetched, and sweepGrace the time from an
// upload to its submit committed (both grow with the load and with
// leader changes); RunLoad's wait for expiry takes at least the longer.
func LoadCoordinatorArgs(jobTTL, sweepGrace time.Duration) []string {
	return []string{"--job-ttl", jobTTL.String(), "--tombstone-ttl", "1h",
		"--sweep-grace", sweepGrace.String(), "--sweep-interval", "1s"}
}

// LoadFaultResult is what one injected fault did.
type LoadFaultResult struct {
	Fault LoadFault
	// Victim is the process hit.
	Victim string
	// At is the time of injection, since the run started.
	At time.Duration
	// Landed says whether the fault was injected where it must: on a
	// worker running a shard, or while jobs ran.
	Landed bool
	// Detail is the fault's own reaction time: worker-term the victim's
	// exit, leader-kill a new leader serving, nats-restart NATS serving
	// JetStream again (0 for worker-kill).
	Detail time.Duration
	// Stall is how long no job finished after the fault: fault -> the
	// first job finished after it.
	Stall time.Duration
	// Recovery is fault -> every job in flight at the fault finished.
	Recovery time.Duration
	// InFlight counts the jobs submitted and not finished at the fault.
	InFlight int
	// Err is why the fault went wrong (the victim did not exit 0, ...).
	Err string
}

// LoadProc is one process's goroutines and resident set, idle before the
// load and after it (once everything expired).
type LoadProc struct {
	Name                            string
	IdleGoroutines, AfterGoroutines float64
	IdleRSS, AfterRSS               int64
	// Skipped says why the process was not compared (restarted, ...).
	Skipped string
	// Role notes a coordinator whose role changed: its idle goroutines
	// are then those of a coordinator idle in its new role.
	Role string
}

// LoadReport is the result of RunLoad. Problems lists every guarantee
// that did not hold; a correct cluster has none.
type LoadReport struct {
	Jobs, Small, Large, Clients int
	Faults                      []LoadFaultResult
	// Succeeded: SUCCEEDED with outputs equal to the float64 reference.
	Succeeded int
	// Refused: submits the coordinator refused with an error, by text.
	Refused       int
	RefusalErrors map[string]int
	// Duplicates: keys that named more than one job, and jobs announced
	// finished more than once.
	Duplicates int
	// Lost: keys accepted whose job did not end SUCCEEDED with exact
	// outputs.
	Lost int
	// Submits counts submit calls (first, deliberate retry, retries
	// after transient errors); Existing how many answered an existing job.
	Submits, Existing int
	// Replanned counts jobs that finished in an epoch > 1.
	Replanned int
	// Elapsed is first submit -> last job checked; Throughput is
	// Succeeded / Elapsed in jobs/s.
	Elapsed    time.Duration
	Throughput float64
	// P50, P99, Max latency: first submit -> job seen finished.
	P50, P99, Max time.Duration
	// LeftRecords and LeftNamespaces are the job records (tombstones of
	// expired jobs not counted) and store namespaces left when the expiry
	// wait ended (0: nothing leaked).
	LeftRecords, LeftNamespaces int
	ExpiredAfter                time.Duration
	Procs                       []LoadProc
	Problems                    []string
}
