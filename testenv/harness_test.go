package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
)

// TestHarnessStartRestart starts a cluster, then kills and restarts one
// process of each kind (same ports, same data directory) and waits until
// each is ready again.
func TestHarnessStartRestart(t *testing.T) {
	c := startCluster(t, fastConfig(t, 2))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, p := range c.Procs() {
		t.Logf("%s", p)
	}
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := c.Workers()[0]
	for _, p := range []*localcluster.Proc{w, leader, c.NATS} {
		pid := p.Pid()
		if err := p.Kill(); err != nil {
			t.Fatalf("kill %s: %v", p.Name, err)
		}
		if p.Running() {
			t.Fatalf("%s still running after Kill", p.Name)
		}
		start := time.Now()
		if err := c.RestartAndWait(ctx, p); err != nil {
			t.Fatalf("restart %s: %v", p.Name, err)
		}
		if p.Pid() == pid {
			t.Fatalf("%s has the same pid %d after a restart", p.Name, pid)
		}
		t.Logf("%s killed and ready again in %v (pid %d -> %d)", p.Name, time.Since(start).Round(time.Millisecond), pid, p.Pid())
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitWorkers(ctx, c.Workers()[0].Name, c.Workers()[1].Name); err != nil {
		t.Fatal(err)
	}
}
