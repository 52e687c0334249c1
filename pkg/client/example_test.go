package client_test

import (
	"context"
	"fmt"
	"log"
	"math"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// startCluster stands in for a running cluster (`ringattn dev`): NATS, a
// Raft coordinator and two workers in this process.
func startCluster(ctx context.Context) *devcluster.Cluster {
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 2, HTTPAddr: "off"})
	if err != nil {
		log.Fatal(err)
	}
	return dev
}

// Run a causal attention job on a cluster and compare it with the local kernel.
func ExampleClient_Attention() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev := startCluster(ctx)
	defer dev.Close()

	// Connect with the same options the binaries take (URL, credentials, TLS).
	cfg := dev.NATSConfig() // e.g. transport.DefaultConfig() for nats://127.0.0.1:4222
	cl, err := client.Connect(ctx, cfg, client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	r := testrand.New(1)
	q := tensor.New(r.Slice(2*300*32, testrand.Normal), 1, 2, 300, 32) // [B, Hq, N, D]
	k := tensor.New(r.Slice(1*300*32, testrand.Normal), 1, 1, 300, 32) // [B, Hkv, Nk, D]: GQA
	v := tensor.New(r.Slice(1*300*32, testrand.Normal), 1, 1, 300, 32)
	res, err := cl.Attention(ctx, q, k, v, true, client.JobOptions{Causal: true, Block: 64}, nil)
	if err != nil {
		log.Fatal(err)
	}

	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 2, Hkv: 1, D: 32}, N: 300, Nk: 300, Mask: kernels.Mask{Causal: true}}
	want := make([]float32, len(q.Data))
	if err := kernels.Attention(&p, q.Data, k.Data, v.Data, want, nil); err != nil {
		log.Fatal(err)
	}
	var maxErr float64
	for i := range want {
		maxErr = math.Max(maxErr, math.Abs(float64(res.O.Data[i]-want[i])))
	}
	fmt.Println(res.Status.GetState(), res.O.Shape, res.LSE.Shape, maxErr < 1e-5)
	// Output: JOB_STATE_SUCCEEDED [1 2 300 32] [1 2 300] true
}

// Submit without waiting, then follow the job and fetch its result later.
func ExampleClient_SubmitAttention() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev := startCluster(ctx)
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	r := testrand.New(2)
	x := func() *tensor.Tensor { return tensor.New(r.Slice(500*16, testrand.Normal), 500, 16) } // [N, D]
	q, k, v := x(), x(), x()
	st, err := cl.SubmitAttention(ctx, q, k, v, false, client.JobOptions{Block: 128, IdempotencyKey: "example-1"})
	if err != nil {
		log.Fatal(err)
	}
	st, err = cl.Watch(ctx, st.GetId(), 0, nil)
	if err != nil {
		log.Fatal(err)
	}
	res, err := cl.FetchAttention(ctx, st)
	if err != nil {
		log.Fatal(err)
	}
	// A retried submit with the same idempotency key returns the same job.
	again, err := cl.SubmitAttention(ctx, q, k, v, false, client.JobOptions{Block: 128, IdempotencyKey: "example-1"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.GetState(), st.GetBlocksTotal(), res.O.Shape, again.GetId() == st.GetId())
	// Output: JOB_STATE_SUCCEEDED 4 [1 1 500 16] true
}

// Follow a job's progress: done/total in ring steps once the workers report
// them (blocks before), with a rate and an ETA only once they can be told.
func ExampleClient_WatchProgress() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dev := startCluster(ctx)
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	r := testrand.New(3)
	x := func() *tensor.Tensor { return tensor.New(r.Slice(512*16, testrand.Normal), 1, 1, 512, 16) }
	st, err := cl.SubmitAttention(ctx, x(), x(), x(), false, client.JobOptions{Block: 64})
	if err != nil {
		log.Fatal(err)
	}
	var last client.Progress
	st, err = cl.WatchProgress(ctx, st.GetId(), func(p client.Progress) {
		last = p
		if p.ETAOK {
			log.Printf("%.0f%% %.1f %s/s ETA %v", 100*p.Fraction(), p.Rate, p.Unit, p.ETA)
		}
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.GetState(), last.Fraction(), last.FinishedBeforeWatch)
	// Output: JOB_STATE_SUCCEEDED 1 false
}
