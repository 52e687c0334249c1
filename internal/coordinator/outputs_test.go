package coordinator

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func openStore(t *testing.T, url string) *transport.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := connect(t, url).OpenStore(ctx, transport.StoreConfig{Bucket: transport.DefaultBucket})
	noErr(t, err)
	return st
}

func namespaces(t *testing.T, st *transport.Store) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nss, err := st.Namespaces(ctx)
	noErr(t, err)
	var out []string
	for _, ns := range nss {
		out = append(out, ns.Name)
	}
	return out
}

// A job succeeds only when the store holds every output block with the
// checksum reported: a wrong checksum re-plans the block, a block never
// written fails the job after MaxVerifyTries re-plans, naming it; and a
// succeeded job whose outputs vanish says so when fetched.
func TestCoordinatorOutputsVerified(t *testing.T) {
	old := outputsCheckEvery
	outputsCheckEvery = 50 * time.Millisecond
	t.Cleanup(func() { outputsCheckEvery = old })
	tc := newCluster(t, 1, func(c *Config) { c.MaxVerifyTries = 2 })
	nc := connect(t, tc.url)
	ld := tc.leader()
	w := newTestWorker(t, tc.url, "w", 10, 10*time.Millisecond)
	w.mu.Lock()
	w.lie = map[int32]int{2: 1} // block 2's first report is wrong
	w.mu.Unlock()
	waitWorkers(t, nc, 1)

	r := submit(t, nc, attnSpec("liar", 256))
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 15*time.Second)
	if js.Epoch != 2 || js.Reason != "" || !slices.Equal(js.Outputs, []string{"o"}) {
		t.Fatalf("after a wrong checksum: %v", js)
	}
	if j := tc.nodes[ld].State().Job(r.Job.Id); j.Redos != 1 || len(j.Checksums) != 4 {
		t.Fatalf("record: redos %d, %d checksums", j.Redos, len(j.Checksums))
	}
	if n := metricLabel(t, tc.nodes[ld], "ringattn_output_verify_failures_total", "problem", "mismatch"); n != 1 {
		t.Fatalf("verify failures{mismatch} = %v, want 1", n)
	}

	// Outputs deleted behind the coordinator's back: get says so.
	st := openStore(t, tc.url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := st.DeleteNamespace(ctx, r.Job.Id); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		js = getJob(t, nc, r.Job.Id)
		if js.State != pb.JobState_JOB_STATE_SUCCEEDED || len(js.Outputs) != 0 ||
			!strings.Contains(js.Reason, "outputs missing or changed in the store: output block 0 (o) missing from the store (4 of 4 blocks checked)") {
			return fmt.Errorf("after deleting the outputs: %v", js)
		}
		return nil
	})

	// A block never written: re-planned MaxVerifyTries times, then failed.
	w.mu.Lock()
	w.skip = map[int32]bool{1: true}
	w.mu.Unlock()
	r = submit(t, nc, attnSpec("lost", 256))
	js = waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_FAILED, 15*time.Second)
	if js.Epoch != 3 || js.Reason != "output block 1 (o) missing from the store after 2 re-plans of the outputs" {
		t.Fatalf("never written: %v", js)
	}
}

// The sweeper deletes upload namespaces no job references once they are
// older than the grace period, and never one a live job reads.
func TestCoordinatorSweeper(t *testing.T) {
	const grace = time.Second
	tc := newCluster(t, 1, func(c *Config) {
		c.SweepInterval = 100 * time.Millisecond
		c.SweepGrace = grace
	})
	nc := connect(t, tc.url)
	ld := tc.leader()
	st := openStore(t, tc.url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(ns string) time.Time {
		noErr(t, st.PutBlock(ctx, ns, "q", 0, []float32{1, 2, 3}, transport.F32))
		return time.Now()
	}
	orphanAt := put("up-orphan")
	put("up-live")
	spec := attnSpec("sw", 256)
	spec.InputRef = "up-live"
	submit(t, nc, spec) // no workers: it stays QUEUED, reading up-live

	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		nss := namespaces(t, st)
		if !slices.Contains(nss, "up-live") {
			t.Fatalf("the sweeper deleted the inputs of a queued job: %v", nss)
		}
		if slices.Contains(nss, "up-orphan") {
			return fmt.Errorf("orphan still there: %v", nss)
		}
		if d := time.Since(orphanAt); d < grace {
			t.Fatalf("orphan deleted %v after its upload, before the grace period %v", d, grace)
		}
		return nil
	})
	// More sweeps leave the live job's inputs alone.
	time.Sleep(3 * 100 * time.Millisecond)
	if nss := namespaces(t, st); !slices.Contains(nss, "up-live") {
		t.Fatalf("live inputs swept: %v", nss)
	}
	if n := metricValue(t, tc.nodes[ld], "ringattn_namespaces_swept_total"); n != 1 {
		t.Fatalf("namespaces_swept_total = %v, want 1", n)
	}
}

func TestCoordinatorSampleBlocks(t *testing.T) {
	for _, c := range []struct {
		total int64
		n     int
		want  string
	}{
		{0, 4, "[]"}, {3, 4, "[0 1 2]"}, {4, 4, "[0 1 2 3]"}, {5, 4, "[0 1 2 4]"}, {1000, 3, "[0 499 999]"},
		{math.MaxInt32, 2, "[0 2147483646]"},
	} {
		if got := fmt.Sprint(sampleBlocks(c.total, c.n)); got != c.want {
			t.Errorf("sampleBlocks(%d, %d) = %s, want %s", c.total, c.n, got, c.want)
		}
	}
}
