package testenv

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
)

// The binaries every test of this package runs, built once per test
// binary (on first use) into binDir, which TestMain removes at the end.
var (
	binDir   string
	binOnce  sync.Once
	bins     localcluster.Binaries
	binsErr  error
	binsTook time.Duration
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ringattn-testenv-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

// binaries returns the built binaries, building them on first use.
func binaries(t *testing.T) localcluster.Binaries {
	t.Helper()
	binOnce.Do(func() {
		root, err := localcluster.ModuleRoot(".")
		if err != nil {
			binsErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		bins, binsErr = localcluster.Build(ctx, root, binDir)
		binsTook = time.Since(start)
		t.Logf("built coordinator, worker and nats-server in %v", binsTook.Round(time.Millisecond))
	})
	if binsErr != nil {
		t.Fatalf("building the binaries: %v", binsErr)
	}
	return bins
}
