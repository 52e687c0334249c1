package client_test

import (
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// cpuSeconds is the process's user + system CPU time so far.
func cpuSeconds(t *testing.T) float64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// startProfile writes a CPU profile to file until the returned stop.
func startProfile(t *testing.T, file string) (stop func()) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// logWorkerBytes logs each worker's store and ring byte counters.
func logWorkerBytes(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "ringattn_worker_store_bytes_total" && name != "ringattn_worker_ring_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			lines = append(lines, strings.TrimPrefix(name, "ringattn_worker_")+" "+strings.Join(labels, ",")+
				" "+strconvMiB(m.GetCounter().GetValue()))
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		t.Log(l)
	}
}

func strconvMiB(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
