package main

import (
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// demoTolerance is the bound on max|o - o_ref| for unit-normal inputs.
const demoTolerance = 1e-4

func runDemo(env *cliEnv, args []string) error {
	fs := newFlags(env, "demo", "[--seq N --heads H --kv-heads H --dim D --causal --workers W]")
	n := fs.Int("seq", 16384, "sequence length `N`")
	heads := fs.Int("heads", 8, "query heads `H`")
	kvHeads := fs.Int("kv-heads", 0, "key/value heads (GQA; default: --heads)")
	dim := fs.Int("dim", 64, "head dimension `D`")
	causal := fs.Bool("causal", false, "causal mask (bottom-right aligned)")
	workers := fs.Int("workers", 3, "`W` workers in the embedded cluster")
	block := fs.Int("block", 1024, "block length in `tokens`")
	seed := fs.Uint64("seed", 1, "random `seed`")
	checkRows := fs.Int("check-rows", 48, "query rows per head checked against the float64 reference")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if *kvHeads == 0 {
		*kvHeads = *heads
	}
	switch {
	case *n < 1:
		return usagef("--seq = %d, expected >= 1", *n)
	case *workers < 1:
		return usagef("--workers = %d, expected >= 1", *workers)
	case *checkRows < 1:
		return usagef("--check-rows = %d, expected >= 1", *checkRows)
	}
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: *heads, Hkv: *kvHeads, D: *dim}, N: *n, Nk: *n,
		Mask: kernels.Mask{Causal: *causal}}
	if err := p.Validate(); err != nil {
		return usageError{err}
	}
	r := testrand.New(*seed)
	q := r.Slice(p.B*p.Hq*p.N*p.D, testrand.Normal)
	k := r.Slice(p.B*p.Hkv*p.Nk*p.D, testrand.Normal)
	v := r.Slice(p.B*p.Hkv*p.Nk*p.D, testrand.Normal)

	fmt.Fprintf(env.stdout, "ringattn demo: B=1 Hq=%d Hkv=%d N=%d D=%d causal=%v, %d workers, blocks of %d, kernels %s on %d cores\n",
		p.Hq, p.Hkv, p.N, p.D, *causal, *workers, *block, kernels.Impl(), runtime.GOMAXPROCS(0))

	ctx, cancel := signalContext()
	defer cancel()
	t0 := time.Now()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: *workers, HTTPAddr: "off"})
	if err != nil {
		return fmt.Errorf("starting the embedded cluster: %w", err)
	}
	defer dev.Close()
	cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		return err
	}
	defer cl.Close()
	fmt.Fprintf(env.stdout, "  cluster    NATS %s (JetStream), 1 coordinator (Raft), %d workers; up in %v\n",
		dev.URL(), *workers, time.Since(t0).Round(time.Millisecond))

	opts := client.JobOptions{Causal: *causal, Block: *block}
	qt, kt, vt := tensor.New(q, 1, p.Hq, p.N, p.D), tensor.New(k, 1, p.Hkv, p.Nk, p.D), tensor.New(v, 1, p.Hkv, p.Nk, p.D)
	t1 := time.Now()
	st, err := cl.SubmitAttention(ctx, qt, kt, vt, false, opts)
	if err != nil {
		return err
	}
	uploaded := time.Now()
	fmt.Fprintf(env.stdout, "  submitted  job %s (upload %.3f s)\n", st.GetId(), uploaded.Sub(t1).Seconds())
	st, err = watchJob(ctx, env, cl, st.GetId(), env.stdout)
	if err != nil {
		return err
	}
	if err := jobOutcome(st); err != nil {
		return err
	}
	ran := time.Now()
	res, err := cl.FetchAttention(ctx, st)
	if err != nil {
		return err
	}
	fetched := time.Now()
	o := res.O.Data

	local := make([]float32, len(o))
	start := time.Now()
	if err := kernels.Attention(&p, q, k, v, local, nil); err != nil {
		return err
	}
	localTime := time.Since(start)

	// Check sampled rows (first, last and random ones) against float64.
	rows := sampleRows(r, p.N, *checkRows)
	ref := &attnref.Problem{B: p.B, Hq: p.Hq, Hkv: p.Hkv, N: p.N, Nk: p.Nk, D: p.D, Mask: attnref.Mask{Causal: *causal}}
	want, _ := ref.Rows(q, k, v, rows)
	errCluster := maxRowErr(o, want, p, rows)
	errLocal := maxRowErr(local, want, p, rows)
	same := true
	for i := range o {
		if o[i] != local[i] {
			same = false
			break
		}
	}

	flops := p.VisibleFLOPs()
	job := ran.Sub(uploaded)
	fmt.Fprintf(env.stdout, "  job        %s: %s plan over %d ranks, epoch %d\n", st.GetId(), st.GetStrategy(), len(st.GetWorkers()), st.GetEpoch())
	fmt.Fprintf(env.stdout, "  upload     %8.3f s   fetch %.3f s\n", uploaded.Sub(t1).Seconds(), fetched.Sub(ran).Seconds())
	fmt.Fprintf(env.stdout, "  cluster    %8.3f s  %7.1f GFLOP/s  max|o-ref| %.2e\n", job.Seconds(), flops/job.Seconds()/1e9, errCluster)
	fmt.Fprintf(env.stdout, "  local      %8.3f s  %7.1f GFLOP/s  max|o-ref| %.2e  (same cores, one process)\n", localTime.Seconds(), flops/localTime.Seconds()/1e9, errLocal)
	// The cluster sums a row's key blocks in its plan's order, the local
	// kernel in its own, so the two agree to rounding, not always to the bit;
	// both are checked against float64.
	agree := "to rounding (the plan folds key blocks in another order than the local kernel)"
	if same {
		agree = "bit for bit"
	}
	fmt.Fprintf(env.stdout, "  checked    %d rows × %d heads against the float64 reference (bound %.0e); cluster and local agree %s\n",
		len(rows), p.Hq, demoTolerance, agree)
	if !(errCluster <= demoTolerance) || !(errLocal <= demoTolerance) {
		return fmt.Errorf("result is not exact: max error cluster %.3g, local %.3g, bound %.0e", errCluster, errLocal, demoTolerance)
	}
	fmt.Fprintln(env.stdout, "  exact: yes")
	return nil
}

func sampleRows(r *testrand.Rand, n, count int) []int {
	if count >= n {
		rows := make([]int, n)
		for i := range rows {
			rows[i] = i
		}
		return rows
	}
	seen := map[int]bool{0: true, n - 1: true}
	rows := []int{0, n - 1}
	for len(rows) < count {
		i := r.Intn(n)
		if !seen[i] {
			seen[i] = true
			rows = append(rows, i)
		}
	}
	return rows
}

// maxRowErr compares rows `rows` of o ([B,Hq,N,D]) with want ([B,Hq,len(rows),D]).
func maxRowErr(o []float32, want []float64, p kernels.Params, rows []int) float64 {
	var m float64
	d := p.D
	for bh := 0; bh < p.B*p.Hq; bh++ {
		for ri, i := range rows {
			for t := 0; t < d; t++ {
				g := float64(o[(bh*p.N+i)*d+t])
				w := want[(bh*len(rows)+ri)*d+t]
				if math.IsNaN(g) {
					return math.Inf(1)
				}
				m = math.Max(m, math.Abs(g-w))
			}
		}
	}
	return m
}
