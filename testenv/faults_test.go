package testenv

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/localcluster"
)

// stallAfterFirstStep is the worker fault spec (RINGATTN_FAULT_STALL) that
// stalls every first-epoch rank of the worker once it has finished one
// ring step, until the rank is aborted: a fault injected there lands
// mid-shard, whatever the speed of the machine.
const stallAfterFirstStep = "RINGATTN_FAULT_STALL=epoch=1,step=1"

// lateCount are a worker's counters of how its shards ended and how the
// leader answered its reports.
type lateCount struct {
	accepted, stale, aborted float64
}

// lateCounters scrapes a worker's report and shard counters.
func lateCounters(ctx context.Context, t *testing.T, c *localcluster.Cluster, w *localcluster.Proc) lateCount {
	t.Helper()
	var out lateCount
	for _, m := range []struct {
		name string
		v    *float64
	}{
		{`ringattn_worker_reports_total{status="accepted"}`, &out.accepted},
		{`ringattn_worker_reports_total{status="stale"}`, &out.stale},
		{`ringattn_worker_shards_total{result="aborted"}`, &out.aborted},
	} {
		v, err := c.Metric(ctx, w, m.name)
		if err != nil {
			t.Fatal(err)
		}
		*m.v = v
	}
	return out
}

// storeFallbacks is the sum over the running workers of the ring frames
// they fetched from the store instead.
func storeFallbacks(ctx context.Context, t *testing.T, c *localcluster.Cluster) float64 {
	t.Helper()
	var sum float64
	for _, w := range c.Workers() {
		if !w.Running() {
			continue
		}
		n, err := c.Metric(ctx, w, "ringattn_worker_store_fallbacks_total")
		if err != nil {
			t.Fatal(err)
		}
		sum += n
	}
	return sum
}

// logContains reports whether a process's log holds s.
func logContains(t *testing.T, p *localcluster.Proc, s string) bool {
	t.Helper()
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(data), s)
}
