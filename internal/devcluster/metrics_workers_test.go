package devcluster_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// sumWorkers sums the samples of family fam (a counter, or a histogram's
// _count) over every in-process worker's series, and counts the workers.
func sumWorkers(e *exposition, fam string) (sum float64, workers int) {
	for s, v := range e.samples {
		name, labels, ok := strings.Cut(s, "{")
		if ok && name == fam && strings.Contains(labels, `worker="`) {
			sum += v
			workers++
		}
	}
	return sum, workers
}

// TestDevclusterMetricsGathersEveryWorker: the dev cluster's one /metrics
// gathers the coordinator, every in-process worker (const label worker),
// the Go runtime and the process; scrapes while a job runs show the
// workers' FLOPs and ring steps moving.
func TestDevclusterMetricsGathersEveryWorker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 2, WorkerThreads: 1, WorkerGFLOPS: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	before, err := scrape(ctx, dev.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`ringattn_worker_flops_total{worker="worker-0"}`, `ringattn_worker_flops_total{worker="worker-1"}`,
		`ringattn_jobs{state="succeeded"}`, `go_goroutines`, `process_cpu_seconds_total`, `process_resident_memory_bytes`} {
		if _, ok := before.value(s); !ok || strings.TrimSpace(before.help[family(s)]) == "" {
			t.Errorf("%s not exposed with HELP", s)
		}
	}
	if _, n := sumWorkers(before, "ringattn_worker_flops_total"); n != 2 {
		t.Errorf("%d workers' FLOP counters, want 2", n)
	}
	flops0, _ := sumWorkers(before, "ringattn_worker_flops_total")
	steps0, _ := sumWorkers(before, "ringattn_worker_ring_step_seconds_count")

	// Scrape every 10 ms while the job runs.
	var mu sync.Mutex
	var during []*exposition
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if e, err := scrape(ctx, dev.HTTPAddr()); err == nil {
				mu.Lock()
				during = append(during, e)
				mu.Unlock()
			}
		}
	}()
	r := testrand.New(11)
	const h, n, d = 2, 2048, 64
	q, k, v := randTensor(r, 1, h, n, d), randTensor(r, 1, h, n, d), randTensor(r, 1, h, n, d)
	job, err := cl.SubmitAttention(ctx, q, k, v, true, client.JobOptions{Block: 256, Parallelism: 2})
	if err != nil {
		t.Fatal(err)
	}
	st, err := cl.Wait(ctx, job.GetId())
	close(stop)
	wg.Wait()
	if err != nil || st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job: %v, %v", st, err)
	}
	after, err := scrape(ctx, dev.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	flops1, _ := sumWorkers(after, "ringattn_worker_flops_total")
	steps1, _ := sumWorkers(after, "ringattn_worker_ring_step_seconds_count")
	// A scrape while the job was running saw the counters past their
	// values before it: they move as the job runs.
	running := 0
	moved := func(fam string, lo float64) string {
		for _, e := range during {
			if r, _ := e.value(`ringattn_jobs{state="running"}`); r < 1 {
				continue // before the job started or after it ended
			}
			running++
			if v, _ := sumWorkers(e, fam); v > lo {
				return ""
			}
		}
		return fmt.Sprintf("%s: none of %d scrapes while the job ran saw it above %v", fam, running, lo)
	}
	if !(flops1 > flops0) || !(steps1 > steps0) {
		t.Errorf("workers' FLOPs %v -> %v, ring steps %v -> %v: want both to increase", flops0, flops1, steps0, steps1)
	}
	for _, msg := range []string{moved("ringattn_worker_flops_total", flops0), moved("ringattn_worker_ring_step_seconds_count", steps0)} {
		if msg != "" {
			t.Error(msg)
		}
	}
	t.Logf("%d scrapes during the job; FLOPs %v -> %v, ring steps %v -> %v", len(during), flops0, flops1, steps0, steps1)
}
