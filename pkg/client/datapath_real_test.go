package client_test

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestClientDataPathPhases runs the data path of one causal attention job
// on an embedded cluster of 4 workers, as `ringattn attend --cluster 4
// --causal` does, and logs how long each phase took: the upload, the job
// (queued, then running, from the job's own timestamps) and the fetch of
// the output. It checks the output's exactness on a few rows against the
// float64 reference. RINGATTN_DATAPATH_N sets N (default 2048; H=8,
// D=128, as issue 20 measures with N=32768) and
// RINGATTN_DATAPATH_TRANSFERS the SDK's Options.Transfers,
// RINGATTN_DATAPATH_STRATEGY the job's strategy (default: the planner's),
// RINGATTN_DATAPATH_CPUPROFILE a file for a CPU profile of the job. It
// logs the process's CPU seconds per phase and each worker's store and
// ring bytes too.
func TestClientDataPathPhases(t *testing.T) {
	n := envInt(t, "RINGATTN_DATAPATH_N", 2048)
	transfers := envInt(t, "RINGATTN_DATAPATH_TRANSFERS", 0)
	const h, d = 8, 128
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dcfg := devcluster.Config{Workers: 4, HTTPAddr: "off"}
	if os.Getenv("RINGATTN_DATAPATH_LOG") != "" { // warnings and errors of every component
		dcfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	dev, err := devcluster.Start(ctx, dcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{Transfers: transfers})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r := testrand.New(20)
	mk := func() *tensor.Tensor { return tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d) }
	q, k, v := mk(), mk(), mk()
	in := 3 * 4 * float64(h*n*d) / (1 << 20)

	strategy := os.Getenv("RINGATTN_DATAPATH_STRATEGY")
	cpu0 := cpuSeconds(t)
	t0 := time.Now()
	st, err := cl.SubmitAttention(ctx, q, k, v, true, client.JobOptions{Causal: true, Strategy: strategy})
	if err != nil {
		t.Fatal(err)
	}
	up := time.Since(t0)
	cpu1 := cpuSeconds(t)
	if f := os.Getenv("RINGATTN_DATAPATH_CPUPROFILE"); f != "" {
		stop := startProfile(t, f)
		defer stop()
	}
	t1 := time.Now()
	st, err = cl.Wait(ctx, st.GetId())
	if err != nil {
		t.Fatal(err)
	}
	job := time.Since(t1)
	cpu2 := cpuSeconds(t)
	t2 := time.Now()
	res, err := cl.FetchAttention(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	fetch := time.Since(t2)
	cpu3 := cpuSeconds(t)
	t.Logf("strategy %q (ran %q, epoch %d): CPU seconds upload %.2f, job %.2f, fetch %.2f", strategy, st.GetStrategy(), st.GetEpoch(), cpu1-cpu0, cpu2-cpu1, cpu3-cpu2)
	logWorkerBytes(t, dev.Registry())
	out := 4 * float64(h*n*(d+1)) / (1 << 20)
	ms := func(a, b int64) time.Duration { return time.Duration(b-a) * time.Millisecond }
	t.Logf("N=%d H=%d D=%d transfers=%d: upload %.0f MiB in %v (%.0f MiB/s); job %v (queued %v, running %v); fetch %.0f MiB in %v (%.0f MiB/s)",
		n, h, d, transfers, in, up.Round(time.Millisecond), in/up.Seconds(), job.Round(time.Millisecond),
		ms(st.GetCreatedUnixMs(), st.GetStartedUnixMs()), ms(st.GetStartedUnixMs(), st.GetFinishedUnixMs()),
		out, fetch.Round(time.Millisecond), out/fetch.Seconds())
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("job %v", st.GetState())
	}
	checkRows(t, q, k, v, res, []int{0, n / 2, n - 1})
}

// checkRows compares rows of every head of res against the float64
// reference (the whole reference at N=32768 takes too long).
func checkRows(t *testing.T, q, k, v *tensor.Tensor, res *client.AttentionResult, rows []int) {
	t.Helper()
	h, n, d := q.Shape[1], q.Shape[2], q.Shape[3]
	p := attnref.Problem{B: 1, Hq: h, Hkv: h, N: n, Nk: n, D: d, Mask: attnref.Mask{Causal: true}}
	ref, _ := p.Rows(q.Data, k.Data, v.Data, rows)
	got := make([]float32, 0, len(ref))
	for hh := range h {
		for _, i := range rows {
			got = append(got, res.O.Data[(hh*n+i)*d:(hh*n+i+1)*d]...)
		}
	}
	if diff := attnref.MaxAbsDiff(got, ref); !(diff <= 2e-4*max(1, attnref.MaxAbs(ref))) {
		t.Fatalf("rows %v of o: max |o - ref| = %g", rows, diff)
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		t.Fatalf("%s = %q: want an integer >= 0", name, s)
	}
	return v
}
