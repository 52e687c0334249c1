package bench

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// percentile is the nearest-rank p-th percentile (0 < p <= 100) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// benchCluster runs an in-process cluster (embedded NATS + JetStream, a
// Raft coordinator, W workers sharing this process's cores) and prints
// Markdown tables: attention jobs through the whole cluster against the
// local kernel on the same shape and cores, then tiny-job latency and
// throughput (submit -> result downloaded).
func benchCluster(env *Env, args []string) error {
	fs := newFlags(env, "bench cluster", "[--workers 4] [--seq 8192] [--dim 128] [--heads 8] [--mask none,causal] [--runs 3] [--tiny 200] [--concurrency 8] [--backward]")
	workersF := fs.String("workers", "4", "comma-separated worker `counts` W")
	seqs := fs.String("seq", "8192", "comma-separated sequence `lengths` (N = Nk) of the attention jobs")
	dims := fs.String("dim", "128", "comma-separated head `dims`")
	heads := fs.Int("heads", 8, "heads `H` (B = 1)")
	masks := fs.String("mask", "none,causal", "masks to run: none, causal")
	block := fs.Int("block", 1024, "tokens per block")
	runs := fs.Int("runs", 3, "timed runs of each side per row; the median is reported")
	tiny := fs.Int("tiny", 200, "tiny jobs (B=1, H=1, N=64, D=16) for latency and throughput; 0 skips")
	conc := fs.Int("concurrency", 8, "tiny jobs in flight in the throughput run")
	png := fs.String("png", "", "also plot the overheads to this `file` (.png, .svg or .pdf)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this `file` (go tool pprof)")
	backward := fs.Bool("backward", false, "run backward jobs (o and lse given) against kernels.AttentionBackward instead of forward jobs; GFLOP/s count 2.5× the forward's FLOPs")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		stop, err := startCPUProfile(*cpuprofile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if *runs < 1 || *heads < 1 || *block < 1 || *tiny < 0 || *conc < 1 {
		return usagef("--runs, --heads, --block and --concurrency must be >= 1, --tiny >= 0")
	}
	ws, err := parseIntList("workers", *workersF)
	if err != nil {
		return err
	}
	ns, ds, causals, err := benchShapes(*seqs, *dims, *masks)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	fmt.Fprintf(env.Stdout, "kernel %s, GOMAXPROCS %d; in-process cluster: embedded NATS (JetStream), 1 Raft coordinator, W workers on these cores; %d runs per side, medians\n",
		kernels.Impl(), runtime.GOMAXPROCS(0), *runs)
	var peak float64
	if *backward {
		peak = kernels.PeakGFLOPS(200*time.Millisecond) * float64(runtime.GOMAXPROCS(0))
		fmt.Fprintf(env.Stdout, "measured FMA peak %.1f GFLOP/s (all cores)\n\n", peak)
		fmt.Fprintln(env.Stdout, "| W | B | H | N | D | mask | kernel bwd (s) | cluster compute (s) | overhead | end-to-end (s) | overhead | cluster GFLOP/s | % of peak | epochs | max rel diff |")
		fmt.Fprintln(env.Stdout, "|---|---|---|---|---|------|----------------|---------------------|----------|----------------|----------|-----------------|-----------|--------|--------------|")
	} else {
		fmt.Fprintln(env.Stdout)
		fmt.Fprintln(env.Stdout, "| W | B | H | N | D | mask | kernel (s) | cluster compute (s) | overhead | end-to-end (s) | overhead | kernel CPU (s) | end-to-end CPU (s) | CPU overhead | epochs | max abs diff |")
		fmt.Fprintln(env.Stdout, "|---|---|---|---|---|------|------------|---------------------|----------|----------------|----------|----------------|--------------------|--------------|--------|--------------|")
	}
	type tinyRow struct {
		w                int
		p50, p99, mean   float64
		jobsPerSec       float64
		conc, n, nThroug int
	}
	var tinies []tinyRow
	pl := &clusterPlot{}
	for _, w := range ws {
		dev, err := devcluster.Start(ctx, devcluster.Config{Workers: w, HTTPAddr: "off"})
		if err != nil {
			return fmt.Errorf("starting a %d-worker cluster: %w", w, err)
		}
		err = func() error {
			defer dev.Close()
			cl, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
			if err != nil {
				return err
			}
			defer cl.Close()
			for _, n := range ns {
				for _, d := range ds {
					for _, c := range causals {
						row := benchClusterRow
						if *backward {
							row = func(ctx context.Context, env *Env, cl *client.Client, _ *clusterPlot, w, h, n, d, block int, causal bool, runs int) error {
								return benchClusterBackwardRow(ctx, env, cl, peak, w, h, n, d, block, causal, runs)
							}
						}
						if err := row(ctx, env, cl, pl, w, *heads, n, d, *block, c, *runs); err != nil {
							return err
						}
					}
				}
			}
			if *tiny == 0 {
				return nil
			}
			lat, err := tinyLatencies(ctx, cl, *tiny)
			if err != nil {
				return err
			}
			t0 := time.Now()
			if err := tinyThroughput(ctx, cl, *tiny, *conc); err != nil {
				return err
			}
			el := time.Since(t0).Seconds()
			var sum float64
			for _, l := range lat {
				sum += l
			}
			tinies = append(tinies, tinyRow{w: w, p50: percentile(lat, 50), p99: percentile(lat, 99), mean: sum / float64(len(lat)),
				jobsPerSec: float64(*tiny) / el, conc: *conc, n: len(lat), nThroug: *tiny})
			return nil
		}()
		if err != nil {
			return err
		}
	}
	if *backward {
		fmt.Fprintln(env.Stdout, "\ncluster compute = the backward job's started -> finished time in the coordinator; end-to-end = upload of q, k, v, dO, O, LSE + submit + compute + download of dq, dk, dv.")
		fmt.Fprintln(env.Stdout, "overhead = cluster median / kernel median - 1 (kernel: kernels.AttentionBackward in this process on all cores from the kernel's O and LSE, runs interleaved).")
		fmt.Fprintf(env.Stdout, "cluster GFLOP/s counts %.1f× the forward's visible FLOPs over the cluster compute time; max rel diff = max |cluster - kernel| / max(1, max |kernel|) over dq, dk, dv.\n", BackwardFactor)
	} else {
		fmt.Fprintln(env.Stdout, "\ncluster compute = the job's started -> finished time in the coordinator; end-to-end = upload + submit + compute + download of the output.")
		fmt.Fprintln(env.Stdout, "overhead = cluster median / kernel median - 1 (kernel: kernels.Attention in this process on all cores, runs interleaved).")
		fmt.Fprintln(env.Stdout, "CPU = user + system CPU seconds of this whole process (NATS server, coordinator, workers, client) over the call.")
	}
	if len(tinies) > 0 {
		fmt.Fprintln(env.Stdout, "\nTiny jobs (B=1, H=1, N=Nk=64, D=16): one at a time for latency, then the same count with a fixed number in flight for throughput.")
		fmt.Fprintln(env.Stdout, "\n| W | jobs | latency p50 (ms) | p99 (ms) | mean (ms) | throughput jobs | in flight | jobs/s |")
		fmt.Fprintln(env.Stdout, "|---|------|------------------|----------|-----------|-----------------|-----------|--------|")
		for _, t := range tinies {
			fmt.Fprintf(env.Stdout, "| %d | %d | %.1f | %.1f | %.1f | %d | %d | %.1f |\n",
				t.w, t.n, 1000*t.p50, 1000*t.p99, 1000*t.mean, t.nThroug, t.conc, t.jobsPerSec)
		}
		fmt.Fprintln(env.Stdout, "\nlatency = SDK Attention call: upload q, k, v to the store, submit, wait (polling), download o.")
	}
	if *png != "" && len(pl.labels) > 0 {
		pl.compute.name, pl.endToEnd.name, pl.cpu.name = "compute (wall)", "end-to-end (wall)", "end-to-end (CPU)"
		title := fmt.Sprintf("in-process cluster vs kernels.Attention (B=1, H=%d), GOMAXPROCS %d", *heads, runtime.GOMAXPROCS(0))
		if err := writeBarsPNG(*png, title, "overhead over the kernel (%)", pl.labels, []barSeries{pl.compute, pl.endToEnd, pl.cpu}); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "\nplot: %s\n", *png)
	}
	return nil
}

// clusterPlot collects the rows of the overhead chart.
type clusterPlot struct {
	labels                 []string
	compute, endToEnd, cpu barSeries
}

func benchClusterRow(ctx context.Context, env *Env, cl *client.Client, pl *clusterPlot, w, h, n, d, block int, causal bool, runs int) error {
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: h, Hkv: h, D: d}, N: n, Nk: n, Mask: kernels.Mask{Causal: causal}}
	if err := p.Validate(); err != nil {
		return UsageError{err}
	}
	r := testrand.New(1)
	q := r.Slice(h*n*d, testrand.Normal)
	k := r.Slice(h*n*d, testrand.Normal)
	v := r.Slice(h*n*d, testrand.Normal)
	qt, kt, vt := tensor.New(q, 1, h, n, d), tensor.New(k, 1, h, n, d), tensor.New(v, 1, h, n, d)
	var tk, tc, te, ck, ce []float64
	var diff float64
	var epochs uint64
	for range runs {
		t0, c0 := time.Now(), cpuSeconds()
		o := make([]float32, len(q))
		if err := kernels.Attention(&p, q, k, v, o, nil); err != nil {
			return err
		}
		t1, c1 := time.Now(), cpuSeconds()
		res, err := cl.Attention(ctx, qt, kt, vt, false, client.JobOptions{Causal: causal, Block: block}, nil)
		if err != nil {
			return fmt.Errorf("cluster job W=%d N=%d D=%d %s: %w", w, n, d, maskName(causal), err)
		}
		te = append(te, time.Since(t1).Seconds())
		ce = append(ce, cpuSeconds()-c1)
		ck = append(ck, c1-c0)
		tk = append(tk, t1.Sub(t0).Seconds())
		st := res.Status
		tc = append(tc, float64(st.GetFinishedUnixMs()-st.GetStartedUnixMs())/1000)
		epochs = max(epochs, st.GetEpoch())
		diff = max(diff, maxAbsDiff(o, res.O.Data))
	}
	if !(diff <= Tolerance) {
		return fmt.Errorf("bench cluster W=%d N=%d D=%d %s: cluster output differs from the kernel by %g (> %g)",
			w, n, d, maskName(causal), diff, Tolerance)
	}
	mk, mc, me, mck, mce := median(tk), median(tc), median(te), median(ck), median(ce)
	fmt.Fprintf(env.Stdout, "| %d | 1 | %d | %d | %d | %s | %.3f | %.3f | %+.1f%% | %.3f | %+.1f%% | %.3f | %.3f | %+.1f%% | %d | %.1e |\n",
		w, h, n, d, maskName(causal), mk, mc, 100*(mc/mk-1), me, 100*(me/mk-1), mck, mce, 100*(mce/mck-1), epochs, diff)
	pl.labels = append(pl.labels, fmt.Sprintf("W=%d N=%d D=%d %s", w, n, d, maskName(causal)))
	pl.compute.values = append(pl.compute.values, 100*(mc/mk-1))
	pl.endToEnd.values = append(pl.endToEnd.values, 100*(me/mk-1))
	pl.cpu.values = append(pl.cpu.values, 100*(mce/mck-1))
	return nil
}

// benchClusterBackwardRow times backward jobs (BACKWARD: o and lse
// uploaded, the forward's) through the cluster against
// kernels.AttentionBackward on the same shape and cores, runs interleaved,
// and prints one row of the backward table; peak is the measured FMA peak
// of all cores in GFLOP/s.
func benchClusterBackwardRow(ctx context.Context, env *Env, cl *client.Client, peak float64, w, h, n, d, block int, causal bool, runs int) error {
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: h, Hkv: h, D: d}, N: n, Nk: n, Mask: kernels.Mask{Causal: causal}}
	if err := p.Validate(); err != nil {
		return UsageError{err}
	}
	r := testrand.New(1)
	q, k, v, do := r.Slice(h*n*d, testrand.Normal), r.Slice(h*n*d, testrand.Normal), r.Slice(h*n*d, testrand.Normal), r.Slice(h*n*d, testrand.Normal)
	o, lse := make([]float32, len(q)), make([]float32, h*n)
	if err := kernels.Attention(&p, q, k, v, o, lse); err != nil {
		return err
	}
	t4 := func(x []float32) *tensor.Tensor { return tensor.New(x, 1, h, n, d) }
	lt := tensor.New(lse, 1, h, n)
	var tk, tc, te []float64
	var diff float64
	var epochs uint64
	for range runs {
		t0 := time.Now()
		dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
		if err := kernels.AttentionBackward(&p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
			return err
		}
		t1 := time.Now()
		res, err := cl.AttentionBackwardFrom(ctx, t4(q), t4(k), t4(v), t4(o), lt, t4(do), client.JobOptions{Causal: causal, Block: block}, nil)
		if err != nil {
			return fmt.Errorf("cluster backward job W=%d N=%d D=%d %s: %w", w, n, d, maskName(causal), err)
		}
		te = append(te, time.Since(t1).Seconds())
		tk = append(tk, t1.Sub(t0).Seconds())
		st := res.Status
		tc = append(tc, float64(st.GetFinishedUnixMs()-st.GetStartedUnixMs())/1000)
		epochs = max(epochs, st.GetEpoch())
		diff = max(diff, gradDiff([2][]float32{res.DQ.Data, dq}, [2][]float32{res.DK.Data, dk}, [2][]float32{res.DV.Data, dv}))
	}
	if !(diff <= GradTolerance) {
		return fmt.Errorf("bench cluster --backward W=%d N=%d D=%d %s: cluster gradients differ from the kernel's by %g (relative, > %g)",
			w, n, d, maskName(causal), diff, GradTolerance)
	}
	mk, mc, me := median(tk), median(tc), median(te)
	gflops := BackwardFLOPs(&p) / max(mc, 1e-3) / 1e9 // the coordinator's times are in ms
	fmt.Fprintf(env.Stdout, "| %d | 1 | %d | %d | %d | %s | %.3f | %.3f | %+.1f%% | %.3f | %+.1f%% | %.1f | %.1f | %d | %.1e |\n",
		w, h, n, d, maskName(causal), mk, mc, 100*(mc/mk-1), me, 100*(me/mk-1), gflops, 100*gflops/peak, epochs, diff)
	return nil
}

func tinyTensors(seed uint64) (q, k, v *tensor.Tensor) {
	r := testrand.New(seed)
	const n, d = 64, 16
	return tensor.New(r.Slice(n*d, testrand.Normal), 1, 1, n, d), tensor.New(r.Slice(n*d, testrand.Normal), 1, 1, n, d),
		tensor.New(r.Slice(n*d, testrand.Normal), 1, 1, n, d)
}

func tinyJob(ctx context.Context, cl *client.Client, seed uint64) error {
	q, k, v := tinyTensors(seed)
	res, err := cl.Attention(ctx, q, k, v, false, client.JobOptions{Block: 64}, nil)
	if err != nil {
		return err
	}
	if res.Status.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		return fmt.Errorf("tiny job %s ended %v", res.Status.GetId(), res.Status.GetState())
	}
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 1, Hkv: 1, D: 16}, N: 64, Nk: 64}
	o := make([]float32, len(q.Data))
	if err := kernels.Attention(&p, q.Data, k.Data, v.Data, o, nil); err != nil {
		return err
	}
	if diff := maxAbsDiff(o, res.O.Data); !(diff <= Tolerance) {
		return fmt.Errorf("tiny job %s differs from the kernel by %g", res.Status.GetId(), diff)
	}
	return nil
}

func tinyLatencies(ctx context.Context, cl *client.Client, n int) ([]float64, error) {
	var lat []float64
	for i := range n {
		t0 := time.Now()
		if err := tinyJob(ctx, cl, uint64(1000+i)); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0).Seconds())
	}
	return lat, nil
}

func tinyThroughput(ctx context.Context, cl *client.Client, n, conc int) error {
	jobs := make(chan int)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := tinyJob(ctx, cl, uint64(100000+i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case jobs <- i:
		case err = <-errs:
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}
