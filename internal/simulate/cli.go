package simulate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/shard"
)

const usageText = `Usage: ringattn bench simulate [flags]

Predicts how an attention job runs on W workers: an event simulation of the
planner's plan (ring steps overlapped with sending the next key/value
blocks, split-KV's reduction tree) from the kernel's measured speed, the
transport's CPU cost per byte and a link's bandwidth and latency. Prints
one row per (W, link, N, mask): predicted wall time, efficiency = ideal
time (FLOPs / (W x speed)) / predicted time, and the bytes moved.

Without --gflops the kernel is measured here for about a second (its
GFLOP/s on all of this machine's cores is one worker's speed); without
--transport-ns-per-byte the CPU cost of a real in-process NATS ring is
measured. Loading inputs from and writing outputs to the store is not
modelled.

Examples:
  ringattn bench simulate --workers 8,64,256 --link 10Gbit,100Gbit --n 65536,1048576,4194304 --mask full,causal
  ringattn bench simulate --workers 16 --link 25Gbit --n 262144 --causal --gflops 400 --transport-ns-per-byte 0.5
  ringattn bench simulate --workers 8 --link 100Gbit --n 1048576 --causal --strategy contiguous,zigzag,striped
  ringattn bench simulate --workers 64 --link 25Gbit --nats-servers 3 --server-link 100Gbit --n 1048576 --causal
  ringattn bench simulate --validate                  # predicted vs measured in-process rings, W=2 and W=4
  ringattn bench simulate --validate --validate-n 16384 --validate-ring mem

Flags:
`

// UsageError is bad usage or bad input (exit 2); Run's other errors are
// failures of a measurement or the simulation (exit 1).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Main runs `ringattn bench simulate` with args (the flags after
// "simulate"), prints any error to stderr as one line, and returns the
// exit code: 0, 1 when a measurement or the simulation fails, 2 for bad
// usage.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := Run(ctx, args, stdout, stderr)
	switch {
	case err == nil || errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(UsageError)):
		fmt.Fprintf(stderr, "ringattn bench simulate: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "ringattn bench simulate: %v\n", userError(err))
	return 1
}

// Run is Main returning the error instead of printing it: nil, flag.ErrHelp
// after printing --help, a UsageError, or a failure.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench simulate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	workers := fs.String("workers", "8,64,256", "comma-separated worker `counts` W")
	links := fs.String("link", "10Gbit,100Gbit", "comma-separated link `speeds` per worker and direction (10Gbit, 400Mbit, 2.5GB/s, inf)")
	ns := fs.String("n", "65536,1048576,4194304", "comma-separated sequence `lengths` N (= Nk)")
	heads := fs.Int("heads", 8, "query heads `Hq` (B = 1)")
	kvHeads := fs.Int("kv-heads", 0, "key/value heads `Hkv` (0: = --heads)")
	dim := fs.Int("dim", 128, "head dimension `D`")
	masks := fs.String("mask", "full,causal", "comma-separated masks: full (or none), causal")
	causal := fs.Bool("causal", false, "the causal mask only (same as --mask causal)")
	strategies := fs.String("strategy", "auto", "comma-separated shard `strategies`: auto, contiguous, zigzag, striped, splitkv, heads (auto may split the key/value heads into groups too; the table names the groups)")
	block := fs.Int("block", 0, "tokens per block (0: the planner's default, 1024)")
	gflops := fs.Float64("gflops", 0, "one worker's kernel speed on all its cores, `GFLOP/s` (0: measure this machine)")
	diagCost := fs.Float64("diagonal-tile-cost", 0, "cost of a kernel tile on a causal diagonal in whole tiles (0: measure this machine's kernel)")
	cores := fs.Int("cores", runtime.GOMAXPROCS(0), "cores per worker (default: this machine's GOMAXPROCS, which a measured speed is for)")
	nsPerByte := fs.Float64("transport-ns-per-byte", -1, "transport CPU per payload byte, sender and receiver together, `ns` (-1: measure an in-process NATS ring)")
	mergeNs := fs.Float64("merge-ns-per-byte", -1, "CPU to finalize or merge an (O, LSE) partial per byte, `ns` (-1: measure kernels.MergeOutputs here)")
	servers := fs.Int("nats-servers", 0, "dedicated NATS `servers` relaying every frame (0: a server on every worker host, frames cross each host's link once each way)")
	serverLink := fs.String("server-link", "", "link speed of each dedicated NATS server (default: --link)")
	latency := fs.Duration("latency", 20*time.Microsecond, "one-way link latency")
	stepOverhead := fs.Duration("step-overhead", 50*time.Microsecond, "fixed overhead per ring step per rank")
	window := fs.Int("window-bytes", DefaultWindowBytes, "transport flow-control window per peer, bytes")
	fullRing := fs.Bool("full-ring", false, "pass every key/value block through every rank, as the forward did before short-circuits (default: only to the ranks that need it)")
	buffer := fs.Int("buffer-bytes", DefaultBufferBytes, "frames a receiver holds before its engine asks for them, bytes")
	calib := fs.Duration("calibrate-time", time.Second, "how long each measurement runs")
	validate := fs.Bool("validate", false, "run real in-process rings of W=2 and W=4 and print predicted vs measured")
	validateN := fs.Int("validate-n", 8192, "sequence length of the --validate runs")
	validateRing := fs.String("validate-ring", RingNATS, "ring of the --validate runs: nats (embedded NATS server) or mem (in-memory)")
	validateW := fs.String("validate-workers", "2,4", "comma-separated W of the --validate runs")
	runs := fs.Int("runs", 3, "timed runs per --validate row (the median is reported)")
	usage := func(w io.Writer) {
		fmt.Fprint(w, usageText)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	fail := func(format string, a ...any) error {
		return UsageError{fmt.Errorf(format, a...)}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return flag.ErrHelp
		}
		return fail("%v (run 'ringattn bench simulate --help')", err)
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	switch {
	case *heads < 1 || *dim < 1 || *kvHeads < 0:
		return fail("--heads and --dim must be >= 1, --kv-heads >= 0")
	case *kvHeads > 0 && *heads%*kvHeads != 0:
		return fail("--kv-heads %d must divide --heads %d", *kvHeads, *heads)
	case *block < 0:
		return fail("--block %d, expected >= 0", *block)
	case *gflops < 0 || math.IsNaN(*gflops) || math.IsInf(*gflops, 0):
		return fail("--gflops %g, expected a positive speed (0: measure)", *gflops)
	case *diagCost < 0 || math.IsNaN(*diagCost) || math.IsInf(*diagCost, 0):
		return fail("--diagonal-tile-cost %g, expected >= 0 (0: measure)", *diagCost)
	case *cores < 1:
		return fail("--cores %d, expected >= 1", *cores)
	case *nsPerByte < 0 && *nsPerByte != -1 || math.IsNaN(*nsPerByte) || math.IsInf(*nsPerByte, 0):
		return fail("--transport-ns-per-byte %g, expected >= 0 (-1: measure)", *nsPerByte)
	case *mergeNs < 0 && *mergeNs != -1 || math.IsNaN(*mergeNs) || math.IsInf(*mergeNs, 0):
		return fail("--merge-ns-per-byte %g, expected >= 0 (-1: measure)", *mergeNs)
	case *latency < 0 || *stepOverhead < 0:
		return fail("--latency and --step-overhead must be >= 0")
	case *window < 1 || *buffer < 1:
		return fail("--window-bytes and --buffer-bytes must be >= 1")
	case *calib <= 0:
		return fail("--calibrate-time %v, expected > 0", *calib)
	case *runs < 1:
		return fail("--runs %d, expected >= 1", *runs)
	case *servers < 0:
		return fail("--nats-servers %d, expected >= 0", *servers)
	case *causal && set["mask"]:
		return fail("--causal and --mask both given: use one")
	}
	if *kvHeads == 0 {
		*kvHeads = *heads
	}
	if *causal {
		*masks = "causal"
	}
	maskList, err := parseMasks(*masks)
	if err != nil {
		return fail("%v", err)
	}
	strats, err := parseStrategies(*strategies)
	if err != nil {
		return fail("%v", err)
	}
	if *validate {
		ws, err := parseInts("validate-workers", *validateW)
		if err != nil {
			return fail("%v", err)
		}
		if *validateRing != RingNATS && *validateRing != RingMem {
			return fail("--validate-ring %q, expected nats or mem", *validateRing)
		}
		if *validateN < 1 {
			return fail("--validate-n %d, expected >= 1", *validateN)
		}
		opts := ValidateOptions{Workers: ws, N: *validateN, Heads: *heads, Dim: *dim, Causal: maskList, Block: *block,
			Strategy: strats[0], Runs: *runs, Ring: *validateRing, Calibration: *calib,
			Model: Config{GFLOPS: *gflops, Cores: *cores, StepOverhead: stepOverhead.Seconds(), WindowBytes: float64(*window),
				BufferBytes: float64(*buffer), DiagonalTileCost: *diagCost, FullRing: *fullRing, MergeSecPerByte: max(0, *mergeNs) * 1e-9},
			Log: func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }}
		if *nsPerByte >= 0 {
			opts.Model.SendSecPerByte, opts.Model.RecvSecPerByte = *nsPerByte/2*1e-9, *nsPerByte/2*1e-9
		}
		return runValidate(ctx, opts, stdout)
	}
	wList, err := parseInts("workers", *workers)
	if err != nil {
		return fail("%v", err)
	}
	nList, err := parseInts("n", *ns)
	if err != nil {
		return fail("%v", err)
	}
	linkList, err := parseLinks(*links)
	if err != nil {
		return fail("%v", err)
	}
	var serverBps float64
	if *serverLink != "" {
		if serverBps, err = ParseLink(*serverLink); err != nil {
			return fail("--server-link %v", err)
		}
	}
	// Check every plan's request before measuring anything.
	for _, n := range nList {
		for _, w := range wList {
			r := shard.Request{B: 1, Hq: *heads, Hkv: *kvHeads, D: *dim, N: n, Nk: n, Ranks: w, Block: *block}
			if err := r.Validate(); err != nil {
				return fail("W=%d N=%d: %v", w, n, userError(err))
			}
		}
	}
	cfg := Config{GFLOPS: *gflops, Cores: *cores, DiagonalTileCost: *diagCost, FullRing: *fullRing, Latency: latency.Seconds(), StepOverhead: stepOverhead.Seconds(),
		WindowBytes: float64(*window), BufferBytes: float64(*buffer), NATSServers: *servers, ServerBytesPerSec: serverBps}
	fmt.Fprintf(stdout, "bench simulate: B=1 Hq=%d Hkv=%d D=%d, fp32 on the wire, one worker per host of %d cores\n", *heads, *kvHeads, *dim, *cores)
	if cfg.GFLOPS == 0 || cfg.DiagonalTileCost == 0 {
		ks, err := MeasureKernelCausal(ctx, *calib, *heads, *dim)
		if err != nil {
			return fmt.Errorf("measuring the kernel: %w", err)
		}
		if cfg.GFLOPS == 0 {
			cfg.GFLOPS = ks.GFLOPS
			fmt.Fprintf(stdout, "kernel: %.1f GFLOP/s per worker, measured here (%s, %d runs, wall clock on a machine that may be shared)\n", ks.GFLOPS, ks.Shape, ks.Runs)
		}
		if cfg.DiagonalTileCost == 0 {
			cfg.DiagonalTileCost = ks.DiagonalTileCost
			fmt.Fprintf(stdout, "kernel: a tile on a causal diagonal costs %.2f dense tiles, measured here\n", ks.DiagonalTileCost)
		}
	}
	if *gflops > 0 {
		fmt.Fprintf(stdout, "kernel: %.1f GFLOP/s per worker (--gflops)\n", cfg.GFLOPS)
	}
	if *diagCost > 0 {
		fmt.Fprintf(stdout, "kernel: a tile on a causal diagonal costs %.2f dense tiles (--diagonal-tile-cost)\n", cfg.DiagonalTileCost)
	}
	if *nsPerByte < 0 {
		tc, err := MeasureTransport(ctx, *calib, 8<<20)
		if err != nil {
			return fmt.Errorf("measuring the transport: %w", err)
		}
		cp := MeasureCopy()
		*nsPerByte = (tc.SecPerByte + cp) * 1e9
		fmt.Fprintf(stdout, "transport: %.3f ns of CPU per byte, measured (%s, counting the server too, so an upper bound; plus %.3f ns for the engine's copy before sending)\n",
			*nsPerByte, tc.Method, cp*1e9)
	} else {
		fmt.Fprintf(stdout, "transport: %.3f ns of CPU per byte (--transport-ns-per-byte)\n", *nsPerByte)
	}
	cfg.SendSecPerByte, cfg.RecvSecPerByte = *nsPerByte/2*1e-9, *nsPerByte/2*1e-9
	if *mergeNs >= 0 {
		cfg.MergeSecPerByte = *mergeNs * 1e-9
	} else {
		mc, err := MeasureMerge(*dim)
		if err != nil {
			return fmt.Errorf("measuring the merge: %w", err)
		}
		cfg.MergeSecPerByte = mc
	}
	fmt.Fprintf(stdout, "merge: %.3f ns of CPU per byte of (O, LSE)\n", cfg.MergeSecPerByte*1e9)
	relay := "key/value blocks only to the ranks that need them (shard.Plan.Traffic); a NATS server on every worker host"
	if *fullRing {
		relay = "every key/value block through every rank (--full-ring); a NATS server on every worker host"
	}
	if *servers > 0 {
		sl := "the workers' link"
		if *serverLink != "" {
			sl = *serverLink
		}
		relay = strings.Replace(relay, "a NATS server on every worker host",
			fmt.Sprintf("%d dedicated NATS servers relaying every frame, each on %s", *servers, sl), 1)
	}
	fmt.Fprintf(stdout, "%s; link latency %v, step overhead %v, window %d bytes, receive buffer %d bytes; input load and output write not modelled\n\n",
		relay, *latency, *stepOverhead, *window, *buffer)
	fmt.Fprintln(stdout, "| W | link | N | mask | strategy | predicted (s) | ideal (s) | efficiency | bytes moved | busiest link (s) | worst rank idle |")
	fmt.Fprintln(stdout, "|---|------|---|------|----------|---------------|-----------|------------|-------------|------------------|-----------------|")
	for _, n := range nList {
		for _, c := range maskList {
			for _, w := range wList {
				for _, s := range strats {
					if err := ctx.Err(); err != nil {
						return err
					}
					plan, err := shard.NewPlanContext(ctx, shard.Request{B: 1, Hq: *heads, Hkv: *kvHeads, D: *dim, N: n, Nk: n,
						Ranks: w, Block: *block, Strategy: s, Mask: shard.Mask{Causal: c}})
					if err != nil {
						return fail("W=%d N=%d: %v", w, n, userError(err))
					}
					loads, err := Loads(ctx, plan, cfg)
					if err != nil {
						return err
					}
					for _, l := range linkList {
						lc := cfg
						lc.LinkBytesPerSec = l.bps
						res, err := loads.Simulate(ctx, lc)
						if err != nil {
							return fmt.Errorf("W=%d N=%d: %w", w, n, err)
						}
						var idle float64
						var maxSent int64
						for _, rk := range res.Ranks {
							idle = max(idle, rk.Idle/max(res.Time, 1e-300))
							maxSent = max(maxSent, rk.BytesSent)
						}
						linkTime := "-"
						if !math.IsInf(l.bps, 1) && l.bps > 0 {
							linkTime = fmt.Sprintf("%.4g", float64(maxSent)/l.bps)
						}
						fmt.Fprintf(stdout, "| %d | %s | %d | %s | %s | %.4g | %.4g | %.3f | %s | %s | %.0f %% |\n",
							w, l.name, n, maskName(c), strategyName(plan), res.Time, res.Ideal, res.Efficiency,
							humanBytes(res.Bytes), linkTime, 100*idle)
					}
				}
			}
		}
	}
	fmt.Fprintln(stdout, "\nefficiency = ideal / predicted, ideal = visible FLOPs / (W x kernel speed); busiest link = the most bytes one worker sends / link speed.")
	return nil
}

func runValidate(ctx context.Context, opts ValidateOptions, stdout io.Writer) error {
	fmt.Fprintf(stdout, "bench simulate --validate: B=1 H=%d D=%d N=%d, all W ranks in this process on %d cores (GOMAXPROCS), %s ring, median of %d runs\n",
		opts.Heads, opts.Dim, opts.N, opts.Model.Cores, opts.Ring, opts.Runs)
	rows, cal, err := Validate(ctx, opts)
	if err != nil {
		return fmt.Errorf("--validate: %w", err)
	}
	m := cal.Model
	fmt.Fprintf(stdout, "model: kernel %.1f GFLOP/s at the start (each run is predicted from its own, below), transport %.3f ns/byte CPU, merge %.3f ns/byte, step overhead %v\n\n",
		m.GFLOPS, (m.SendSecPerByte+m.RecvSecPerByte)*1e9, m.MergeSecPerByte*1e9, time.Duration(m.StepOverhead*float64(time.Second)))
	fmt.Fprintln(stdout, "| W | N | mask | strategy | bytes moved | predicted (s) | measured (s) | runs: predicted/measured (s) @ kernel GFLOP/s | error | predicted CPU (s) | measured CPU (s) | CPU error |")
	fmt.Fprintln(stdout, "|---|---|------|----------|-------------|---------------|--------------|-----------------------------------------------|-------|-------------------|------------------|-----------|")
	for _, r := range rows {
		var rs []string
		for i, x := range r.Runs {
			rs = append(rs, fmt.Sprintf("%.3f/%.3f @%.0f", r.Predictions[i], x, r.GFLOPS[i]))
		}
		fmt.Fprintf(stdout, "| %d | %d | %s | %s | %s | %.4f | %.4f | %s | %+.1f %% | %.3f | %.3f | %+.1f %% |\n", r.W, r.N, maskName(r.Causal), r.Strategy,
			humanBytes(r.Bytes), r.Predicted, r.Measured, strings.Join(rs, ", "), 100*r.Error, r.PredictedCPU, r.MeasuredCPU, 100*r.CPUError)
	}
	fmt.Fprintln(stdout, "\nerror = median over the runs of predicted / measured, minus 1; each run is predicted from the kernel speed measured just before and after it. Wall-clock times on a shared machine vary with its load; CPU times (the model's kernel FLOPs at the kernel's GFLOP per CPU-second plus transport CPU, against the process's user+system time) much less.")
	return nil
}

// userError drops the package prefixes of an error a user sees.
func userError(err error) error {
	s := err.Error()
	for _, p := range []string{"shard: invalid request: ", "simulate: invalid configuration: ", "simulate: ", "ringattn: invalid argument: "} {
		s = strings.ReplaceAll(s, p, "")
	}
	return errors.New(s)
}

func maskName(causal bool) string {
	if causal {
		return "causal"
	}
	return "full"
}

func parseInts(name, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--%s item %q, expected a positive integer", name, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseMasks(s string) ([]bool, error) {
	var out []bool
	for _, f := range strings.Split(s, ",") {
		switch strings.TrimSpace(f) {
		case "full", "none":
			out = append(out, false)
		case "causal":
			out = append(out, true)
		default:
			return nil, fmt.Errorf("--mask item %q, expected full (or none) or causal", f)
		}
	}
	return out, nil
}

// strategyName is the plan's strategy and, with head groups, their number
// and ranks (e.g. "zigzag/2x2": 2 head groups of a 2-rank ring).
func strategyName(p *shard.Plan) string {
	if p.Groups() == 1 && p.Strategy != shard.Heads {
		return string(p.Strategy)
	}
	return fmt.Sprintf("%s/%dx%d", p.Strategy, p.Groups(), p.GroupRanks())
}

func parseStrategies(s string) ([]shard.Strategy, error) {
	var out []shard.Strategy
	for _, f := range strings.Split(s, ",") {
		switch f = strings.TrimSpace(f); shard.Strategy(f) {
		case "auto":
			out = append(out, shard.Auto)
		case shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV, shard.Heads:
			out = append(out, shard.Strategy(f))
		default:
			return nil, fmt.Errorf("--strategy item %q, expected auto, contiguous, zigzag, striped, splitkv or heads", f)
		}
	}
	return out, nil
}

type link struct {
	name string
	bps  float64 // bytes per second; +Inf unlimited
}

// parseLinks reads link speeds: a number with a unit of bits (bit, Kbit,
// Mbit, Gbit, Tbit; "bps" spellings too) or bytes per second (B/s, KB/s,
// MB/s, GB/s, TB/s; decimal units), or "inf".
func parseLinks(s string) ([]link, error) {
	var out []link
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		bps, err := ParseLink(f)
		if err != nil {
			return nil, fmt.Errorf("--link item %w", err)
		}
		out = append(out, link{name: f, bps: bps})
	}
	return out, nil
}

// ParseLink parses one link speed (see parseLinks) into bytes per second.
func ParseLink(f string) (float64, error) {
	if strings.EqualFold(f, "inf") {
		return math.Inf(1), nil
	}
	i := 0
	for i < len(f) && (f[i] >= '0' && f[i] <= '9' || f[i] == '.') {
		i++
	}
	num, unit := f[:i], strings.ToLower(strings.TrimSpace(f[i:]))
	x, err := strconv.ParseFloat(num, 64)
	bad := fmt.Errorf("%q, expected a speed such as 10Gbit, 400Mbit, 2.5GB/s or inf", f)
	if err != nil || !(x > 0) || math.IsInf(x, 0) {
		return 0, bad
	}
	scale := map[string]float64{"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
	for _, suf := range []struct {
		s     string
		bytes bool
	}{{"bit/s", false}, {"bits", false}, {"bit", false}, {"bps", false}, {"b/s", true}} {
		if !strings.HasSuffix(unit, suf.s) {
			continue
		}
		prefix := strings.TrimSuffix(unit, suf.s)
		m, ok := scale[prefix]
		if !ok {
			return 0, bad
		}
		// "b/s" lowercased is ambiguous only in spelling: the byte units are
		// written B/s, KB/s, GB/s; "bit" and "bps" are bits.
		if suf.bytes {
			if !strings.HasSuffix(f, "B/s") {
				return 0, bad
			}
			return x * m, nil
		}
		return x * m / 8, nil
	}
	return 0, bad
}

func humanBytes(b int64) string {
	x := float64(b)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"} {
		if x < 1024 || u == "PiB" {
			if u == "B" {
				return fmt.Sprintf("%d B", b)
			}
			return fmt.Sprintf("%.1f %s", x, u)
		}
		x /= 1024
	}
	return ""
}
