package testenv

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/xlog"
)

// fastConfig is a cluster tuned for fast tests: short heartbeats and Raft
// timeouts, one kernel thread per worker, no speed measurement at start.
func fastConfig(t *testing.T, workers int) localcluster.Config {
	return localcluster.Config{
		Bin:               binaries(t),
		Dir:               t.TempDir(),
		Coordinators:      3,
		Workers:           workers,
		NoWorkers:         workers == 0,
		HeartbeatTimeout:  1500 * time.Millisecond,
		RaftTimeout:       300 * time.Millisecond,
		HeartbeatInterval: 200 * time.Millisecond,
		RecvTimeout:       2 * time.Second,
		RequestTimeout:    time.Second,
		DrainTimeout:      10 * time.Second,
		WorkerThreads:     1,
		WorkerGFLOPS:      1,
		LogLevel:          logLevel(),
		Ready:             60 * time.Second,
		Logger:            xlog.Test(t).With("side", "testenv"),
	}
}

// startCluster starts a cluster for the test; on failure (or with
// TESTENV_DUMP_LOGS set) the tail of every process's log is written to
// the test log. Cleanup kills it.
func startCluster(t *testing.T, cfg localcluster.Config) *localcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := localcluster.Start(ctx, cfg)
	if err != nil {
		dumpDirLogs(t, cfg.Dir)
		t.Fatalf("starting the cluster: %v", err)
	}
	t.Logf("cluster up in %v: %d coordinators, %d workers, NATS %s", time.Since(start).Round(time.Millisecond),
		len(c.Coordinators), len(c.Workers()), c.URL())
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("TESTENV_DUMP_LOGS") != "" {
			var b strings.Builder
			c.DumpLogs(&b, 150)
			t.Logf("process logs:\n%s", b.String())
		}
		c.Kill()
	})
	return c
}

// dumpDirLogs writes the tail of every log in dir/logs to the test log.
func dumpDirLogs(t *testing.T, dir string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, p := range paths {
		tail, err := localcluster.ReadTail(p, 8<<10)
		if err != nil {
			t.Logf("%s: %v", p, err)
			continue
		}
		t.Logf("----- %s (last 8 KiB) -----\n%s", p, tail)
	}
}

// logLevel is the processes' log level: info, or TESTENV_LOG_LEVEL.
func logLevel() string {
	if l := os.Getenv("TESTENV_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}
