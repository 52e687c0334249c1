package simulate

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Ring kinds a validation runs on.
const (
	RingNATS = "nats" // transport.NATSRing through an embedded server
	RingMem  = "mem"  // ringattn.MemNet (frames by reference)
)

// ValidateOptions say what Validate measures.
type ValidateOptions struct {
	Workers     []int  // ranks W of each run (default 2, 4)
	N           int    // sequence length (default 8192)
	Heads, Dim  int    // default 8, 128
	Causal      []bool // masks (default full and causal)
	Block       int    // 0: the planner's default
	Strategy    shard.Strategy
	Runs        int    // timed runs per row, median (default 3)
	Ring        string // RingNATS (default) or RingMem
	Calibration time.Duration
	// Probe is how long the kernel is measured before and after each run
	// (default 300 ms).
	Probe time.Duration
	// Model is the machine model; GFLOPS, SendSecPerByte/RecvSecPerByte
	// and MergeSecPerByte are measured when 0. Cores, RanksPerHost and
	// the link are set for this process: all ranks on one host of
	// GOMAXPROCS cores, no link.
	Model Config
	// Log, when set, receives one line per measurement as it is made.
	Log func(format string, args ...any)
}

// ValidationRow compares a prediction with a measured run.
type ValidationRow struct {
	W         int
	N         int
	Causal    bool
	Strategy  shard.Strategy
	Predicted float64 // seconds, median of Predictions
	Measured  float64 // seconds, median of Runs
	// Runs are the measured times, Predictions the prediction of each run
	// from the kernel speed measured around it (GFLOPS).
	Runs, Predictions, GFLOPS []float64
	Bytes                     int64 // bytes the plan moves
	// Error is the median over the runs of predicted/measured, minus 1.
	Error float64
	// CPU compares the process's CPU time over a run (median) with the
	// model's: the kernel's computed FLOPs at its GFLOP per CPU-second
	// plus the transport's CPU per byte. Load on a shared machine moves
	// CPU time much less than wall time.
	PredictedCPU, MeasuredCPU, CPUError float64
}

// Calibration is what Validate measured before its runs.
type Calibration struct {
	Kernel    KernelSpeed
	Transport TransportCost
	Merge     float64 // MergeSecPerByte
	Copy      float64 // the engine's copy before sending, core-seconds per byte
	Model     Config
}

func (o *ValidateOptions) defaults() {
	if len(o.Workers) == 0 {
		o.Workers = []int{2, 4}
	}
	if o.N == 0 {
		o.N = 8192
	}
	if o.Heads == 0 {
		o.Heads = 8
	}
	if o.Dim == 0 {
		o.Dim = 128
	}
	if len(o.Causal) == 0 {
		o.Causal = []bool{false, true}
	}
	if o.Runs == 0 {
		o.Runs = 3
	}
	if o.Ring == "" {
		o.Ring = RingNATS
	}
	if o.Calibration == 0 {
		o.Calibration = time.Second
	}
	if o.Probe == 0 {
		o.Probe = 300 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	}
}

// Calibrate measures what opts.Model leaves 0 (the kernel's GFLOP/s, the
// transport's CPU per byte for a NATS ring, the merge cost) and returns the
// model of this process: W ranks on one host of GOMAXPROCS cores.
func Calibrate(ctx context.Context, opts ValidateOptions) (Calibration, error) {
	opts.defaults()
	m := opts.Model
	var cal Calibration
	if m.Cores == 0 {
		m.Cores = runtime.GOMAXPROCS(0)
	}
	if m.GFLOPS == 0 || m.DiagonalTileCost == 0 {
		ks, err := MeasureKernelCausal(ctx, opts.Calibration, opts.Heads, opts.Dim)
		if err != nil {
			return cal, err
		}
		cal.Kernel = ks
		if m.GFLOPS == 0 {
			m.GFLOPS = ks.GFLOPS
		}
		if m.DiagonalTileCost == 0 {
			m.DiagonalTileCost = ks.DiagonalTileCost
		}
		opts.Log("kernel: %.1f GFLOP/s, a diagonal tile costs %.2f tiles (%s, %d runs)", ks.GFLOPS, ks.DiagonalTileCost, ks.Shape, ks.Runs)
	}
	if opts.Ring == RingNATS && m.SendSecPerByte == 0 && m.RecvSecPerByte == 0 {
		tc, err := MeasureTransport(ctx, opts.Calibration, 8<<20)
		if err != nil {
			return cal, err
		}
		cal.Transport = tc
		// The engine also copies each view it sends into a contiguous
		// frame (rankRun.compact) on a ring that does not share frames.
		cp := MeasureCopy()
		cal.Copy = cp
		m.SendSecPerByte, m.RecvSecPerByte = tc.SecPerByte/2+cp, tc.SecPerByte/2
		opts.Log("transport: %.3f ns/byte CPU, %.0f MB/s (%s); the engine's copy before sending %.3f ns/byte",
			tc.SecPerByte*1e9, tc.BytesPerSec/1e6, tc.Method, cp*1e9)
	}
	if m.MergeSecPerByte == 0 {
		mc, err := MeasureMerge(opts.Dim)
		if err != nil {
			return cal, err
		}
		cal.Merge, m.MergeSecPerByte = mc, mc
	}
	cal.Model = m
	return cal, nil
}

// Validate runs real in-process rings of opts.Workers ranks (all ranks of
// one run share this process's cores, as the model's RanksPerHost = W
// says), times them, and returns each next to the simulator's prediction
// for the same plan. Timings on a loaded machine are noisy: the caller
// states the load; nothing here asserts a bound.
func Validate(ctx context.Context, opts ValidateOptions) ([]ValidationRow, Calibration, error) {
	opts.defaults()
	if opts.Ring != RingNATS && opts.Ring != RingMem {
		return nil, Calibration{}, invalid("ring %q, expected %s or %s", opts.Ring, RingNATS, RingMem)
	}
	cal, err := Calibrate(ctx, opts)
	if err != nil {
		return nil, cal, err
	}
	var e *transport.Embedded
	if opts.Ring == RingNATS {
		if e, err = transport.StartEmbedded(transport.EmbeddedConfig{}); err != nil {
			return nil, cal, err
		}
		defer e.Shutdown()
	}
	n, h, d := opts.N, opts.Heads, opts.Dim
	r := testrand.New(1)
	q := r.Slice(h*n*d, testrand.Normal)
	k := r.Slice(h*n*d, testrand.Normal)
	v := r.Slice(h*n*d, testrand.Normal)
	var rows []ValidationRow
	job := 0
	for _, causal := range opts.Causal {
		p := &kernels.Params{Shape: kernels.Shape{B: 1, Hq: h, Hkv: h, D: d}, N: n, Nk: n, Mask: kernels.Mask{Causal: causal}}
		for _, w := range opts.Workers {
			pr := shard.Request{B: 1, Hq: h, Hkv: h, D: d, N: n, Nk: n, Ranks: w,
				Block: opts.Block, Strategy: opts.Strategy, Mask: shard.Mask{Causal: causal}}
			if pr.Strategy == shard.Auto {
				pr.HeadGroups = 1 // validate the ring: auto among the sequence strategies
			}
			plan, err := shard.NewPlanContext(ctx, pr)
			if err != nil {
				return nil, cal, err
			}
			row := ValidationRow{W: w, N: n, Causal: causal, Strategy: plan.Strategy}
			var ratios, predCPU, measCPU, cpuRatios []float64
			for range opts.Runs {
				job++
				// On a shared machine the kernel's speed drifts with the
				// load: measure it around every run and predict that run
				// from the mean (unless the model fixes it).
				var before KernelSpeed
				if opts.Model.GFLOPS == 0 {
					if before, err = MeasureKernel(ctx, opts.Probe, h, d); err != nil {
						return nil, cal, err
					}
				}
				var secs float64
				cpu0 := cpuSeconds()
				if opts.Ring == RingNATS {
					secs, err = runNATS(ctx, e, fmt.Sprintf("simulate-validate-%d", job), p, plan, q, k, v, cal.Model.FullRing)
				} else {
					secs, err = runMem(ctx, p, plan, q, k, v, cal.Model.FullRing)
				}
				if err != nil {
					return nil, cal, err
				}
				cpu := cpuSeconds() - cpu0
				m := cal.Model
				cpuGFLOPS := cal.Kernel.CPUGFLOPS
				if opts.Model.GFLOPS == 0 {
					after, err := MeasureKernel(ctx, opts.Probe, h, d)
					if err != nil {
						return nil, cal, err
					}
					m.GFLOPS = (before.GFLOPS + after.GFLOPS) / 2
					cpuGFLOPS = (before.CPUGFLOPS + after.CPUGFLOPS) / 2
				}
				m.RanksPerHost = w
				m.LinkBytesPerSec, m.Latency = 0, 0
				pred, err := Simulate(ctx, plan, m)
				if err != nil {
					return nil, cal, err
				}
				row.Bytes = pred.Bytes
				row.Runs = append(row.Runs, secs)
				row.Predictions = append(row.Predictions, pred.Time)
				row.GFLOPS = append(row.GFLOPS, m.GFLOPS)
				ratios = append(ratios, pred.Time/secs)
				if cpuGFLOPS > 0 {
					pc := pred.ComputeFLOPs / (cpuGFLOPS * 1e9)
					for _, rk := range pred.Ranks {
						pc += rk.TransportCPU
					}
					predCPU = append(predCPU, pc)
					measCPU = append(measCPU, cpu)
					cpuRatios = append(cpuRatios, pc/cpu)
				}
			}
			if len(predCPU) > 0 {
				row.PredictedCPU, row.MeasuredCPU, row.CPUError = median(predCPU), median(measCPU), median(cpuRatios)-1
			}
			row.Measured = median(row.Runs)
			row.Predicted = median(row.Predictions)
			row.Error = median(ratios) - 1
			opts.Log("W=%d N=%d causal=%v %s: predicted %.4f s, measured %.4f s (%+.1f %%)",
				w, n, causal, plan.Strategy, row.Predicted, row.Measured, 100*row.Error)
			rows = append(rows, row)
		}
	}
	return rows, cal, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runMem times ringattn.RunLocalNet (every rank a goroutine, MemNet).
func runMem(ctx context.Context, p *kernels.Params, plan *shard.Plan, q, k, v []float32, fullRing bool) (float64, error) {
	net, err := ringattn.NewMemNet(len(plan.Ranks), ringattn.MemOptions{})
	if err != nil {
		return 0, err
	}
	defer net.Close()
	start := time.Now()
	if _, _, err := ringattn.RunLocalNet(ctx, ringattn.LocalConfig{Net: net, FullRing: fullRing}, p, plan, q, k, v); err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// runNATS times every rank of plan run by ringattn.RunRank in this process,
// each over its own connection and transport.NATSRing, from an in-memory
// source to an in-memory sink (no store: the model leaves it out too). The
// rings are opened before the clock starts. A fallback (a frame fetched
// from the source after a receive timeout) fails the run: it would time
// the timeout, not the ring.
func runNATS(ctx context.Context, e *transport.Embedded, job string, p *kernels.Params, plan *shard.Plan, q, k, v []float32, fullRing bool) (float64, error) {
	w := len(plan.Ranks)
	rings, closeAll, err := openRings(e, job, w)
	if err != nil {
		return 0, err
	}
	defer closeAll()
	src, err := ringattn.NewMemSource(p, plan.Block, q, k, v)
	if err != nil {
		return 0, err
	}
	sink, err := ringattn.NewMemSink(p, plan.Block)
	if err != nil {
		return 0, err
	}
	errs := make([]error, w)
	falls := make([]int, w)
	var wg sync.WaitGroup
	start := time.Now()
	for r := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = ringattn.RunRank(ctx, ringattn.RankConfig{Params: p, Plan: plan, Ring: rings[r], Source: src, Sink: sink,
				FullRing: fullRing, Progress: func(pr ringattn.Progress) { falls[r] = pr.Fallbacks }})
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	for r, f := range falls {
		if f > 0 {
			return 0, fmt.Errorf("rank %d fetched %d blocks from the source after receive timeouts: the run is not a ring's time", r, f)
		}
	}
	return secs, nil
}
