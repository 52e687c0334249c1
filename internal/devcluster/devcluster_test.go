package devcluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
)

// TestDevclusterWorkersReportOneSpeed: the workers share the process's
// cores, so they report one measured speed (plans weight ranks by it), or
// the configured one.
func TestDevclusterWorkersReportOneSpeed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, want := range []float64{0, 42} {
		dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 3, HTTPAddr: "off", WorkerGFLOPS: want})
		if err != nil {
			t.Fatal(err)
		}
		first := dev.Workers[0].GFLOPS()
		for _, w := range dev.Workers {
			if got := w.GFLOPS(); got != first || got <= 0 || (want > 0 && got != want) {
				dev.Close()
				t.Fatalf("WorkerGFLOPS %v: worker %s reports %v GFLOP/s, worker 0 %v: expected one speed > 0 for all", want, w.ID(), got, first)
			}
		}
		dev.Close()
	}
}
