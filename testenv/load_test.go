package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
)

// TestSystemLoad drives 50 concurrent clients submitting 300 small and 4
// larger jobs with idempotency keys (each submit repeated once with the
// same key) into 3 coordinators and 4 workers, while a worker is
// SIGKILLed mid-shard, another SIGTERMed mid-shard, the leader SIGKILLed
// and NATS restarted with jobs running. Every key must name exactly one
// job, every job SUCCEED with exact outputs (or be refused with an error,
// counted), no job be announced finished twice, every job record and
// store namespace expire, and every process that ran throughout return to
// its idle goroutines and RSS. `ringattn bench load` runs bigger loads.
func TestSystemLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a load on real processes: not in -short")
	}
	cfg := fastConfig(t, 4)
	cfg.CoordinatorArgs = append(cfg.CoordinatorArgs, localcluster.LoadCoordinatorArgs(20*time.Second, 20*time.Second)...)
	c := startCluster(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	rep, err := localcluster.RunLoad(ctx, c, localcluster.LoadConfig{Clients: 50, Small: 300, Large: 4, Faults: localcluster.AllLoadFaults,
		ExpiryTimeout: 60 * time.Second, IdleTimeout: 30 * time.Second, Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load of %d jobs with %d faults in %v:\n%s", rep.Jobs, len(rep.Faults), round(time.Since(start)), rep.Markdown())
	if rep.Duplicates != 0 || rep.Lost != 0 {
		t.Errorf("%d duplicates and %d lost jobs: want 0 and 0", rep.Duplicates, rep.Lost)
	}
	if rep.Succeeded+rep.Refused != rep.Jobs {
		t.Errorf("%d succeeded + %d refused != %d jobs", rep.Succeeded, rep.Refused, rep.Jobs)
	}
	if rep.Succeeded < rep.Jobs/2 {
		t.Errorf("only %d of %d jobs succeeded", rep.Succeeded, rep.Jobs)
	}
	for _, p := range rep.Problems {
		t.Error(p)
	}
}
