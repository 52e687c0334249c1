package main

import (
	"fmt"
	"math"
	"runtime"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// demoTolerance is the bound on max|o - o_ref| for unit-normal inputs.
const demoTolerance = 1e-4

func runDemo(env *cliEnv, args []string) error {
	fs := newFlags(env, "demo", "[--seq N --heads H --kv-heads H --dim D --causal --workers W]")
	n := fs.Int("seq", 4096, "sequence length `N`")
	heads := fs.Int("heads", 8, "query heads `H`")
	kvHeads := fs.Int("kv-heads", 0, "key/value heads (GQA; default: --heads)")
	dim := fs.Int("dim", 64, "head dimension `D`")
	causal := fs.Bool("causal", true, "causal mask")
	workers := fs.Int("workers", 3, "ranks `W` of the ring")
	block := fs.Int("block", 512, "block length in `tokens`")
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

	fmt.Fprintf(env.stdout, "ringattn demo: B=1 Hq=%d Hkv=%d N=%d D=%d causal=%v, %d ranks, blocks of %d, kernels %s on %d cores\n",
		p.Hq, p.Hkv, p.N, p.D, *causal, *workers, *block, kernels.Impl(), runtime.GOMAXPROCS(0))

	ctx, cancel := signalContext()
	defer cancel()
	plan, err := shard.NewPlan(shard.Request{B: p.B, Hq: p.Hq, Hkv: p.Hkv, D: p.D, N: p.N, Nk: p.Nk,
		Block: *block, Mask: shardMask(p.Mask), Ranks: *workers})
	if err != nil {
		return usageError{err}
	}
	start := time.Now()
	o, _, err := ringattn.RunLocal(ctx, &p, plan, q, k, v)
	if err != nil {
		return err
	}
	ringTime := time.Since(start)

	local := make([]float32, len(o))
	start = time.Now()
	if err := kernels.Attention(&p, q, k, v, local, nil); err != nil {
		return err
	}
	localTime := time.Since(start)

	// Check sampled rows (first, last and random ones) against float64.
	rows := sampleRows(r, p.N, *checkRows)
	ref := &attnref.Problem{B: p.B, Hq: p.Hq, Hkv: p.Hkv, N: p.N, Nk: p.Nk, D: p.D, Mask: attnref.Mask{Causal: *causal}}
	want, _ := ref.Rows(q, k, v, rows)
	errRing := maxRowErr(o, want, p, rows)
	errLocal := maxRowErr(local, want, p, rows)

	flops := p.VisibleFLOPs()
	fmt.Fprintf(env.stdout, "  plan       %s, imbalance %.3f\n", plan.Strategy, plan.Imbalance)
	fmt.Fprintf(env.stdout, "  ring       %8.3f s  %7.1f GFLOP/s  max|o-ref| %.2e\n", ringTime.Seconds(), flops/ringTime.Seconds()/1e9, errRing)
	fmt.Fprintf(env.stdout, "  local      %8.3f s  %7.1f GFLOP/s  max|o-ref| %.2e\n", localTime.Seconds(), flops/localTime.Seconds()/1e9, errLocal)
	fmt.Fprintf(env.stdout, "  checked    %d rows × %d heads against the float64 reference (bound %.0e)\n", len(rows), p.Hq, demoTolerance)
	if !(errRing <= demoTolerance) || !(errLocal <= demoTolerance) {
		return fmt.Errorf("result is not exact: max error ring %.3g, local %.3g, bound %.0e", errRing, errLocal, demoTolerance)
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
