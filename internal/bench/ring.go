package bench

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// Tolerance is the largest |ring - kernel| a benchmark accepts: both
// compute the same function in float32 on unit-normal inputs.
const Tolerance = 1e-4

// GradTolerance bounds |ring - kernel| / max(1, max |kernel|) over the
// gradients dq, dk, dv of bench ring --backward: dk and dv sum over every
// query row, so the bound is relative to their size.
const GradTolerance = 2e-4

// maxAbs is max |x|.
func maxAbs(xs []float32) float64 {
	var m float64
	for _, x := range xs {
		m = max(m, math.Abs(float64(x)))
	}
	return m
}

// gradDiff is the largest max |a-b| / max(1, max |b|) of the pairs.
func gradDiff(pairs ...[2][]float32) float64 {
	var m float64
	for _, p := range pairs {
		m = max(m, maxAbsDiff(p[0], p[1])/max(1, maxAbs(p[1])))
	}
	return m
}

// parseMasks reads --mask none,causal.
func parseMasks(s string) ([]bool, error) {
	var out []bool
	for _, m := range strings.Split(s, ",") {
		switch strings.TrimSpace(m) {
		case "none":
			out = append(out, false)
		case "causal":
			out = append(out, true)
		default:
			return nil, usagef("--mask item %q, expected none or causal", m)
		}
	}
	return out, nil
}

func maskName(causal bool) string {
	if causal {
		return "causal"
	}
	return "none"
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return math.NaN()
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// maxAbsDiff is max |a-b|, +Inf when a value is NaN or the lengths differ.
func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

// cpuSeconds is this process's user + system CPU time so far: on a shared
// machine it is steadier than wall time (other processes' load stretches
// wall time but not the work done here).
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// benchRing prints a Markdown table of an in-process R-rank ring against
// kernels.Attention on the same shape and cores. Kernel and ring runs
// alternate so both see the same machine load; medians are reported.
func benchRing(env *Env, args []string) error {
	fs := newFlags(env, "bench ring", "[--seq 4096,16384] [--dim 128] [--heads 8] [--ranks 2,4] [--mask none,causal] [--runs 3] [--backward]")
	seqs := fs.String("seq", "4096,16384", "comma-separated sequence `lengths` (N = Nk)")
	dims := fs.String("dim", "128", "comma-separated head `dims`")
	heads := fs.Int("heads", 8, "heads `H` (B = 1)")
	ranksF := fs.String("ranks", "2,4", "comma-separated ring `sizes` R")
	masks := fs.String("mask", "none,causal", "masks to run: none, causal")
	block := fs.Int("block", 0, "tokens per block (0: the plan's default)")
	strategy := fs.String("strategy", "", "shard strategy (default: the planner's choice)")
	runs := fs.Int("runs", 3, "timed runs of each side per row; the median is reported")
	png := fs.String("png", "", "also plot the overheads to this `file` (.png, .svg or .pdf)")
	backward := fs.Bool("backward", false, "also time the ring's backward (RunLocalBackward) against kernels.AttentionBackward: a second table")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this `file` (go tool pprof)")
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
	if *runs < 1 || *heads < 1 || *block < 0 {
		return usagef("--runs and --heads must be >= 1, --block >= 0")
	}
	ns, ds, causals, err := benchShapes(*seqs, *dims, *masks)
	if err != nil {
		return err
	}
	rs, err := parseIntList("ranks", *ranksF)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	fmt.Fprintf(env.Stdout, "kernel %s, GOMAXPROCS %d; ring ranks are goroutines over an in-memory ring; %d runs per side, medians\n\n",
		kernels.Impl(), runtime.GOMAXPROCS(0), *runs)
	var labels []string
	wall, cpu := barSeries{name: "wall-time overhead"}, barSeries{name: "CPU-time overhead"}
	fmt.Fprintln(env.Stdout, "| B | H | N | D | mask | R | strategy | kernel (s) | ring (s) | overhead | kernel CPU (s) | ring CPU (s) | CPU overhead | ring GFLOP/s | max abs diff |")
	fmt.Fprintln(env.Stdout, "|---|---|---|---|------|---|----------|------------|----------|----------|----------------|--------------|--------------|--------------|--------------|")
	var bwdRows []string // the backward table, printed after the forward one
	for _, n := range ns {
		for _, d := range ds {
			for _, c := range causals {
				p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: *heads, Hkv: *heads, D: d}, N: n, Nk: n, Mask: kernels.Mask{Causal: c}}
				if err := p.Validate(); err != nil {
					return UsageError{err}
				}
				r := testrand.New(1)
				q := r.Slice(*heads*n*d, testrand.Normal)
				k := r.Slice(*heads*n*d, testrand.Normal)
				v := r.Slice(*heads*n*d, testrand.Normal)
				var do []float32
				if *backward {
					do = r.Slice(*heads*n*d, testrand.Normal)
				}
				for _, ranks := range rs {
					plan, err := shard.NewPlan(shard.Request{B: 1, Hq: *heads, Hkv: *heads, D: d, N: n, Nk: n, Ranks: ranks,
						Block: *block, Strategy: shard.Strategy(*strategy), Mask: shard.Mask{Causal: c}})
					if err != nil {
						return UsageError{err}
					}
					var tk, tr, ck, cr []float64
					var btk, btr, bck, bcr []float64
					var diff, bdiff float64
					for range *runs {
						t0, c0 := time.Now(), cpuSeconds()
						// Like the ring, the kernel returns a fresh o and lse.
						o := make([]float32, len(q))
						lse := make([]float32, *heads*n)
						if err := kernels.Attention(&p, q, k, v, o, lse); err != nil {
							return err
						}
						t1, c1 := time.Now(), cpuSeconds()
						ro, _, err := ringattn.RunLocal(ctx, &p, plan, q, k, v)
						if err != nil {
							return err
						}
						tr = append(tr, time.Since(t1).Seconds())
						cr = append(cr, cpuSeconds()-c1)
						ck = append(ck, c1-c0)
						tk = append(tk, t1.Sub(t0).Seconds())
						diff = max(diff, maxAbsDiff(o, ro))
						if !*backward {
							continue
						}
						// Both backwards start from the kernel's o and lse.
						t2, c2 := time.Now(), cpuSeconds()
						dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
						if err := kernels.AttentionBackward(&p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
							return err
						}
						t3, c3 := time.Now(), cpuSeconds()
						rdq, rdk, rdv, err := ringattn.RunLocalBackward(ctx, &p, plan, q, k, v, o, lse, do)
						if err != nil {
							return err
						}
						btr = append(btr, time.Since(t3).Seconds())
						bcr = append(bcr, cpuSeconds()-c3)
						bck = append(bck, c3-c2)
						btk = append(btk, t3.Sub(t2).Seconds())
						bdiff = max(bdiff, gradDiff([2][]float32{rdq, dq}, [2][]float32{rdk, dk}, [2][]float32{rdv, dv}))
					}
					if !(diff <= Tolerance) {
						return fmt.Errorf("bench ring N=%d D=%d %s R=%d: ring differs from the kernel by %g (> %g)",
							n, d, maskName(c), ranks, diff, Tolerance)
					}
					if *backward {
						if !(bdiff <= GradTolerance) {
							return fmt.Errorf("bench ring N=%d D=%d %s R=%d: ring gradients differ from the kernel's by %g of their size (> %g)",
								n, d, maskName(c), ranks, bdiff, GradTolerance)
						}
						mk, mr, mck, mcr := median(btk), median(btr), median(bck), median(bcr)
						bwdRows = append(bwdRows, fmt.Sprintf("| 1 | %d | %d | %d | %s | %d | %s | %.3f | %.3f | %+.1f%% | %.3f | %.3f | %+.1f%% | %s | %.1e |",
							*heads, n, d, maskName(c), ranks, plan.Strategy, mk, mr, 100*(mr/mk-1), mck, mcr, 100*(mcr/mck-1),
							rate(BackwardFLOPs(&p)/mr/1e9), bdiff))
					}
					mk, mr, mck, mcr := median(tk), median(tr), median(ck), median(cr)
					fmt.Fprintf(env.Stdout, "| 1 | %d | %d | %d | %s | %d | %s | %.3f | %.3f | %+.1f%% | %.3f | %.3f | %+.1f%% | %s | %.1e |\n",
						*heads, n, d, maskName(c), ranks, plan.Strategy, mk, mr, 100*(mr/mk-1), mck, mcr, 100*(mcr/mck-1),
						rate(p.VisibleFLOPs()/mr/1e9), diff)
					labels = append(labels, fmt.Sprintf("N=%d D=%d %s R=%d", n, d, maskName(c), ranks))
					wall.values = append(wall.values, 100*(mr/mk-1))
					cpu.values = append(cpu.values, 100*(mcr/mck-1))
				}
			}
		}
	}
	fmt.Fprintln(env.Stdout, "\noverhead = ring median / kernel median - 1 (wall time), same process, same cores, runs interleaved;")
	fmt.Fprintln(env.Stdout, "CPU = user + system CPU seconds of this process over the call (steadier than wall time on a shared machine).")
	if *backward {
		fmt.Fprintln(env.Stdout, "\nBackward: ringattn.RunLocalBackward on the ring against kernels.AttentionBackward, both from the kernel's o and lse, runs interleaved with the forward ones")
		fmt.Fprintln(env.Stdout, "")
		fmt.Fprintln(env.Stdout, "| B | H | N | D | mask | R | strategy | kernel bwd (s) | ring bwd (s) | overhead | kernel bwd CPU (s) | ring bwd CPU (s) | CPU overhead | ring bwd GFLOP/s | max rel diff |")
		fmt.Fprintln(env.Stdout, "|---|---|---|---|------|---|----------|----------------|--------------|----------|--------------------|------------------|--------------|------------------|--------------|")
		for _, row := range bwdRows {
			fmt.Fprintln(env.Stdout, row)
		}
		fmt.Fprintf(env.Stdout, "\nbackward GFLOP/s counts %.1f× the forward's visible FLOPs; max rel diff = max |ring - kernel| / max(1, max |kernel|) over dq, dk, dv.\n", BackwardFactor)
	}
	if *png != "" {
		title := fmt.Sprintf("in-process ring vs kernels.Attention (B=1, H=%d), GOMAXPROCS %d", *heads, runtime.GOMAXPROCS(0))
		if err := writeBarsPNG(*png, title, "overhead over the kernel (%)", labels, []barSeries{wall, cpu}); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "\nplot: %s\n", *png)
	}
	return nil
}
