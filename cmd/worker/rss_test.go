package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/coordinator"
	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkWorkerPeakRSS measures the peak resident set of worker
// processes on one attention job: an embedded NATS server and a
// single-node coordinator run in this process, the workers are separate
// processes of this command, and each one's peak RSS is its rusage maxrss
// after it drained on SIGTERM. Defaults: N = Nk = 131072, H = 8, D = 64,
// B = 1, block 1024, 4 workers, f32, causal with a sliding window of 1024
// keys (the window only skips compute; every rank still loads all its
// query blocks and receives every key/value block of the ring, so the
// memory is that of the dense job). Override with RINGATTN_RSS_N,
// RINGATTN_RSS_WORKERS, RINGATTN_RSS_HEADS, RINGATTN_RSS_WINDOW (0 = no
// window: fully causal with RINGATTN_RSS_CAUSAL=1, else no mask);
// RINGATTN_RSS_GOMEMLIMIT sets GOMEMLIMIT for the worker processes only.
// Causal jobs use the zigzag plan, the others contiguous.
//
//	go test ./cmd/worker -run '^$' -bench WorkerPeakRSS -benchtime 1x -timeout 30m
//
// The fully causal N = 1,048,576, H = 1 job of issue 10:
//
//	RINGATTN_RSS_N=1048576 RINGATTN_RSS_HEADS=1 RINGATTN_RSS_WINDOW=0 RINGATTN_RSS_CAUSAL=1 \
//	  go test ./cmd/worker -run '^$' -bench WorkerPeakRSS -benchtime 1x -timeout 60m
func BenchmarkWorkerPeakRSS(b *testing.B) {
	n := envInt("RINGATTN_RSS_N", 131072)
	workers := envInt("RINGATTN_RSS_WORKERS", 4)
	heads := envInt("RINGATTN_RSS_HEADS", 8)
	window := 1024
	if v, ok := os.LookupEnv("RINGATTN_RSS_WINDOW"); ok {
		window, _ = strconv.Atoi(v)
	}
	causal := os.Getenv("RINGATTN_RSS_CAUSAL") == "1"
	const d, block = 64, 1024
	for range b.N {
		srv := transporttest.RunServer(b)
		ncfg := transporttest.Config(srv)
		cc := coordinator.DefaultConfig()
		cc.NodeID, cc.Bootstrap, cc.DataDir, cc.HTTPAddr, cc.NATS = "c1", true, b.TempDir(), "", ncfg
		cc.HeartbeatTimeout = 10 * time.Second // loaded machine: no false deaths
		cc.AssignTimeout = 10 * time.Second
		_, trans := raft.NewInmemTransport("")
		coord, err := coordinator.New(cc, coordinator.Deps{Logger: xlog.Discard(), RaftTransport: trans})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { coord.Close() })
		ctx := context.Background()
		cl, err := client.Connect(ctx, ncfg, client.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(cl.Close)
		nc := transporttest.Connect(b, srv)
		store, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: ncfg.Bucket}, nil)
		if err != nil {
			b.Fatal(err)
		}
		// Upload q, k, v block by block (never the whole tensor at once).
		t0 := time.Now()
		// The whole tensors stay in this (unmeasured) process to check
		// sampled output rows against the float64 reference at the end.
		rng := rand.New(rand.NewPCG(1, 2))
		blk := make([]float32, heads*block*d)
		full := map[string][]float32{}
		for _, name := range []string{"q", "k", "v"} {
			t := make([]float32, heads*n*d)
			for i := range (n + block - 1) / block {
				rows := min(block, n-i*block)
				x := blk[:heads*rows*d]
				for j := range x {
					x[j] = float32(rng.NormFloat64())
				}
				for h := range heads {
					copy(t[(h*n+i*block)*d:(h*n+i*block+rows)*d], x[h*rows*d:(h+1)*rows*d])
				}
				if err := store.PutBlock(ctx, "in-rss", name, i, x, transport.F32); err != nil {
					b.Fatal(err)
				}
			}
			full[name] = t
		}
		b.Logf("uploaded q, k, v (%d MiB) in %v", 3*n*heads*d*4>>20, time.Since(t0).Round(time.Millisecond))

		procs := make([]*exec.Cmd, workers)
		logs := make([]*syncBuffer, workers)
		for i := range procs {
			cmd := exec.Command(os.Args[0], "--id", fmt.Sprintf("rss%d", i), "--gflops", "1",
				"--metrics-addr", "off", "--recv-timeout", "60s", "--log-level", "warn")
			cmd.Env = append(os.Environ(), "RINGATTN_WORKER_TEST_MAIN=1", "RINGATTN_NATS_URL="+srv.ClientURL())
			if v := os.Getenv("RINGATTN_RSS_GOMEMLIMIT"); v != "" {
				cmd.Env = append(cmd.Env, "GOMEMLIMIT="+v)
			}
			logs[i] = &syncBuffer{}
			cmd.Stderr = logs[i]
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			procs[i] = cmd
			b.Cleanup(func() { cmd.Process.Kill() }) //nolint:errcheck
		}
		// Wait until the leader sees every worker.
		deadline := time.Now().Add(60 * time.Second)
		for {
			c, err := cl.Cluster(ctx)
			if err == nil && len(c.GetWorkers()) == workers {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("workers did not register: %v %v", c, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		spec := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: int64(heads), Hkv: int64(heads),
			N: int64(n), Nk: int64(n), D: d, Block: block, Strategy: "contiguous", InputRef: "in-rss"}
		switch {
		case window > 0:
			spec.Mask = &pb.Mask{Causal: true, Windowed: true, WindowLeft: int64(window), WindowRight: 0}
		case causal:
			spec.Mask = &pb.Mask{Causal: true}
			spec.Strategy = "zigzag"
		}
		t1 := time.Now()
		st, err := cl.Submit(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 25*time.Minute)
		st, err = cl.Wait(wctx, st.GetId())
		cancel()
		if err != nil || st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			for i, l := range logs {
				b.Logf("worker %d logs:\n%s", i, l.String())
			}
			b.Fatalf("job: %v %v", st, err)
		}
		b.Logf("job %s: %v in epoch %d on %v", st.GetId(), time.Since(t1).Round(time.Millisecond), st.GetEpoch(), st.GetWorkers())
		checkRows(b, ctx, store, st, full, n, heads, d, block, window, causal)
		// The peak is VmHWM, the high-water mark of the worker's own
		// address space, read just before SIGTERM. (rusage maxrss would
		// also count this test process: Linux carries the parent's RSS
		// into a child's maxrss across fork and exec.)
		var peak int64
		for i, cmd := range procs {
			rss, err := localcluster.PeakRSS(cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				b.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				b.Fatalf("worker %d exited with %v:\n%s", i, err, logs[i].String())
			}
			peak = max(peak, rss)
			b.Logf("worker %d: peak RSS %d MiB", i, rss>>20)
		}
		shardMiB := float64(n/workers) * float64(heads*d*4) / (1 << 20)
		b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(peak)/(1<<20)/shardMiB, "RSS/q-shard")
		b.Logf("N=%d H=%d D=%d W=%d window=%d causal=%v: max worker peak RSS %d MiB; one q shard is %.0f MiB, the full q %.0f MiB",
			n, heads, d, workers, window, causal || window > 0, peak>>20, shardMiB, float64(n)*float64(heads*d*4)/(1<<20))
	}
}

// checkRows compares 8 output rows of every head (the first, the last and
// six spread between) with the float64 reference.
func checkRows(b *testing.B, ctx context.Context, store *transport.Store, st *pb.JobStatus, full map[string][]float32,
	n, heads, d, block, window int, causal bool) {
	p := attnref.Problem{B: 1, Hq: heads, Hkv: heads, N: n, Nk: n, D: d}
	switch {
	case window > 0:
		p.Mask = attnref.Mask{Causal: true, Windowed: true, Left: window}
	case causal:
		p.Mask = attnref.Mask{Causal: true}
	}
	rows := []int{0, n - 1}
	for i := 1; i <= 6; i++ {
		rows = append(rows, i*n/7+i)
	}
	want, _ := p.Rows(full["q"], full["k"], full["v"], rows)
	ref := st.GetOutputRef()
	if ref == "" {
		ref = st.GetId()
	}
	var worst float64
	for ri, r := range rows {
		o, err := store.GetBlock(ctx, ref, "o", r/block)
		if err != nil {
			b.Fatal(err)
		}
		rowsIn := len(o) / (heads * d)
		for h := range heads {
			got := o[(h*rowsIn+r%block)*d : (h*rowsIn+r%block+1)*d]
			w := want[(h*len(rows)+ri)*d : (h*len(rows)+ri+1)*d]
			worst = max(worst, attnref.MaxAbsDiff(got, w))
		}
	}
	if !(worst <= 1e-4) {
		b.Fatalf("sampled output rows %v differ from the float64 reference by %g (> 1e-4)", rows, worst)
	}
	b.Logf("output rows %v of every head match the float64 reference: max |o - ref| = %.1e", rows, worst)
}
