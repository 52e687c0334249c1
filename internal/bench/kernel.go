package bench

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
)

// benchKernel prints a Markdown table of the local kernel's speed. Each shape
// runs in a child process so that its peak RSS is its own.
func benchKernel(env *Env, args []string) error {
	fs := newFlags(env, "bench kernel", "[--seq 2048,8192,32768] [--dim 64,128] [--heads 8] [--runs 3] [--precision fp32,bf16] [--backward]")
	seqs := fs.String("seq", "2048,8192,32768", "comma-separated sequence `lengths`")
	dims := fs.String("dim", "64,128", "comma-separated head `dims`")
	heads := fs.Int("heads", 8, "heads `H` (B = 1)")
	runs := fs.Int("runs", 3, "timed runs per shape; the median is reported")
	masks := fs.String("mask", "none,causal", "masks to run: none, causal")
	backward := fs.Bool("backward", false, "also time kernels.AttentionBackward (the gradients of sum(O·dO)) per shape")
	precs := fs.String("precision", "fp32", "comma-separated forward `precisions` to time: fp32, bf16 (kernels.PrecisionBF16: bf16 products, fp32 softmax and accumulation); given, the table has a precision column")
	one := fs.String("one", "", "internal: run one shape N,D,causal and print a result line")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if *runs < 1 || *heads < 1 {
		return usagef("--runs and --heads must be >= 1")
	}
	var precList []kernels.Precision
	for _, ps := range strings.Split(*precs, ",") {
		var pr kernels.Precision
		switch strings.TrimSpace(ps) {
		case "fp32", "f32":
			pr = kernels.PrecisionF32
		case "bf16":
			pr = kernels.PrecisionBF16
		default:
			return usagef("--precision item %q, expected fp32 or bf16", ps)
		}
		precList = append(precList, pr)
	}
	if *one != "" {
		if len(precList) != 1 {
			return usagef("--one takes one --precision, got %q", *precs)
		}
		return benchKernelOne(env, *one, *heads, *runs, *backward, precList[0])
	}
	precCol := false
	fs.Visit(func(f *flag.Flag) { precCol = precCol || f.Name == "precision" })
	ns, ds, causals, err := benchShapes(*seqs, *dims, *masks)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	peak := kernels.PeakGFLOPS(200*time.Millisecond) * float64(runtime.GOMAXPROCS(0))
	fmt.Fprintf(env.Stdout, "kernel %s, %d cores, measured FMA peak %.1f GFLOP/s (all cores)\n\n", kernels.Impl(), runtime.GOMAXPROCS(0), peak)
	header, rule := "| B | H | N | D | mask | time (s) | GFLOP/s | % of peak | peak RSS (MiB) |",
		"|---|---|---|---|------|----------|---------|-----------|----------------|"
	if precCol {
		header, rule = "| B | H | N | D | mask | precision | time (s) | GFLOP/s | % of peak | peak RSS (MiB) |",
			"|---|---|---|---|------|-----------|----------|---------|-----------|----------------|"
	}
	if *backward {
		header += " backward (s) | backward GFLOP/s | backward % of peak | backward / forward time |"
		rule += "--------------|------------------|--------------------|-------------------------|"
	}
	fmt.Fprintln(env.Stdout, header)
	fmt.Fprintln(env.Stdout, rule)
	for _, n := range ns {
		for _, d := range ds {
			for _, c := range causals {
				for _, pr := range precList {
					args := []string{"bench", "kernel", "--one", fmt.Sprintf("%d,%d,%v", n, d, c),
						"--heads", strconv.Itoa(*heads), "--runs", strconv.Itoa(*runs), "--precision", map[kernels.Precision]string{kernels.PrecisionF32: "fp32", kernels.PrecisionBF16: "bf16"}[pr]}
					if *backward {
						args = append(args, "--backward")
					}
					cmd := exec.Command(self, args...)
					var out bytes.Buffer
					cmd.Stdout, cmd.Stderr = &out, env.Stderr
					if err := cmd.Run(); err != nil {
						return fmt.Errorf("bench N=%d D=%d causal=%v: %v", n, d, c, err)
					}
					var secs, gflops, rss, bsecs, bgflops float64
					format, vals := "%g %g %g", []any{&secs, &gflops, &rss}
					if *backward {
						format, vals = "%g %g %g %g %g", append(vals, &bsecs, &bgflops)
					}
					if _, err := fmt.Sscanf(strings.TrimSpace(out.String()), format, vals...); err != nil {
						return fmt.Errorf("bench N=%d D=%d: bad child output %q", n, d, out.String())
					}
					mask := "none"
					if c {
						mask = "causal"
					}
					if precCol {
						mask += " | " + map[kernels.Precision]string{kernels.PrecisionF32: "fp32", kernels.PrecisionBF16: "bf16"}[pr]
					}
					fmt.Fprintf(env.Stdout, "| 1 | %d | %d | %d | %s | %.4f | %s | %s | %.0f |",
						*heads, n, d, mask, secs, rate(gflops), rate(100*gflops/peak), rss)
					if *backward {
						fmt.Fprintf(env.Stdout, " %.4f | %s | %s | %.2f |", bsecs, rate(bgflops), rate(100*bgflops/peak), bsecs/secs)
					}
					fmt.Fprintln(env.Stdout)
				}
			}
		}
	}
	fmt.Fprintln(env.Stdout, "\nGFLOP/s counts 4·B·H·N·N·D, only pairs the mask leaves visible (≈ half for causal).")
	if *backward {
		fmt.Fprintf(env.Stdout, "The backward's GFLOP/s counts %.1f× that (five matrix products against the forward's two); peak RSS includes the backward's buffers.\n", BackwardFactor)
	}
	return nil
}

func benchKernelOne(env *Env, spec string, heads, runs int, backward bool, prec kernels.Precision) error {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		return usagef("--one %q, expected N,D,causal", spec)
	}
	n, err1 := strconv.Atoi(parts[0])
	d, err2 := strconv.Atoi(parts[1])
	causal, err3 := strconv.ParseBool(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return usagef("--one %q, expected N,D,causal", spec)
	}
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: heads, Hkv: heads, D: d}, N: n, Nk: n, Mask: kernels.Mask{Causal: causal}, Precision: prec}
	if err := p.Validate(); err != nil {
		return UsageError{err}
	}
	r := testrand.New(1)
	q := r.Slice(heads*n*d, testrand.Normal)
	k := r.Slice(heads*n*d, testrand.Normal)
	v := r.Slice(heads*n*d, testrand.Normal)
	o := make([]float32, len(q))
	var lse []float32 // the backward needs it; the forward-only rows stay as they were
	if backward {
		lse = make([]float32, heads*n)
	}
	var times []float64
	for i := 0; i < runs; i++ {
		start := time.Now()
		if err := kernels.Attention(&p, q, k, v, o, lse); err != nil {
			return err
		}
		times = append(times, time.Since(start).Seconds())
	}
	sort.Float64s(times)
	med := times[len(times)/2]
	if !backward {
		fmt.Fprintf(env.Stdout, "%g %g %g\n", med, p.VisibleFLOPs()/med/1e9, peakRSSMiB())
		return nil
	}
	do := r.Slice(heads*n*d, testrand.Normal)
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
	var btimes []float64
	for i := 0; i < runs; i++ {
		start := time.Now()
		if err := kernels.AttentionBackward(&p, q, k, v, o, lse, do, dq, dk, dv); err != nil {
			return err
		}
		btimes = append(btimes, time.Since(start).Seconds())
	}
	sort.Float64s(btimes)
	bmed := btimes[len(btimes)/2]
	fmt.Fprintf(env.Stdout, "%g %g %g %g %g\n", med, p.VisibleFLOPs()/med/1e9, peakRSSMiB(), bmed, BackwardFLOPs(&p)/bmed/1e9)
	return nil
}

// peakRSSMiB is this process's peak resident set size.
func peakRSSMiB() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Maxrss) / 1024 // Linux reports KiB
}

// rate formats a GFLOP/s or percentage cell: one decimal from 10 up,
// three significant digits below, so a tiny shape on a loaded machine
// shows 0.0412 rather than 0.0.
func rate(x float64) string {
	if x >= 10 {
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.3g", x)
}
