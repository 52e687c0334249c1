package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// Env is what a bench may touch, given by the CLI that runs it: the output
// streams and the CLI's flag handling, so that `ringattn bench ...` flags,
// --help and errors read like every other command's.
type Env struct {
	Stdout, Stderr io.Writer
	// NewFlags returns the flag set of `ringattn <name>` (name is "bench
	// kernel" etc.); its Usage prints "Usage: ringattn <name> <synopsis>"
	// and the flags. Nil: a plain flag.FlagSet doing that.
	NewFlags func(name, synopsis string) *flag.FlagSet
	// Parse parses args into fs: --help prints fs's usage to Stdout and
	// returns flag.ErrHelp; a bad flag or a stray argument returns an
	// error the CLI reports as bad usage. Nil: fs.Parse with those rules,
	// bad usage as a UsageError.
	Parse func(fs *flag.FlagSet, args []string) error
}

// UsageError is bad usage or bad input (the CLI exits 2 on it); other
// errors are failures of the bench (exit 1).
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

func usagef(format string, args ...any) error {
	return UsageError{fmt.Errorf(format, args...)}
}

// Targets are the benches Run knows, in the order --help lists them.
var Targets = []string{"kernel", "ring", "cluster", "rss", "recovery", "load", "simulate"}

// Run runs `ringattn bench <target> [flags]`: args[0] names the target.
// It returns flag.ErrHelp after printing a --help, a UsageError for bad
// usage, and any other error when the bench fails.
func Run(env Env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(env.Stdout, "Usage: ringattn bench kernel|ring|cluster|rss|recovery|load|simulate [flags]   (run 'ringattn bench <target> --help')")
			fmt.Fprintln(env.Stdout, "  kernel   the local kernel's GFLOP/s and peak RSS per shape")
			fmt.Fprintln(env.Stdout, "  ring     an in-process R-rank ring against the local kernel: overhead")
			fmt.Fprintln(env.Stdout, "  cluster  an in-process W-worker cluster against the local kernel; tiny-job latency and throughput")
			fmt.Fprintln(env.Stdout, "  rss      multi-process clusters: each worker process's peak RSS per job shape")
			fmt.Fprintln(env.Stdout, "  recovery a multi-process cluster: recovery times from worker, leader and NATS faults mid-job")
			fmt.Fprintln(env.Stdout, "  load     a multi-process cluster under many clients and faults: successes, duplicates, lost, latency, recovery")
			fmt.Fprintln(env.Stdout, "  simulate a scaling model: predicted time and efficiency of W workers on a link, from measured speeds")
			return nil
		}
		return usagef("bench needs a target: kernel, ring, cluster, rss, recovery, load or simulate")
	}
	e := &env
	switch args[0] {
	case "kernel":
		return benchKernel(e, args[1:])
	case "ring":
		return benchRing(e, args[1:])
	case "cluster":
		return benchCluster(e, args[1:])
	case "rss":
		return benchRSS(e, args[1:])
	case "recovery":
		return benchRecovery(e, args[1:])
	case "load":
		return benchLoad(e, args[1:])
	case "simulate":
		return benchSimulate(e, args[1:])
	}
	return usagef("unknown bench target %q, expected kernel, ring, cluster, rss, recovery, load or simulate", args[0])
}

// newFlags is env.NewFlags, or a plain flag set.
func newFlags(env *Env, name, synopsis string) *flag.FlagSet {
	if env.NewFlags != nil {
		return env.NewFlags(name, synopsis)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: ringattn %s %s\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse is env.Parse, or fs.Parse with the same rules.
func parse(env *Env, fs *flag.FlagSet, args []string) error {
	if env.Parse != nil {
		return env.Parse(fs, args)
	}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(env.Stdout)
		fs.Usage()
		return flag.ErrHelp
	}
	if err != nil {
		return UsageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// signalContext ends at the first Ctrl-C.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

// BackwardFactor is the backward's FLOPs over the forward's: the backward
// computes q·kᵀ again, dO·vᵀ, dS·k, dSᵀ·q and Pᵀ·dO: five products
// against the forward's two.
const BackwardFactor = 2.5

// BackwardFLOPs is the count GFLOP/s of a backward is quoted with.
func BackwardFLOPs(p *kernels.Params) float64 { return BackwardFactor * p.VisibleFLOPs() }

// startCPUProfile profiles this process's CPU into file until stop.
func startCPUProfile(file string) (stop func(), err error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

func parseIntList(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, usagef("--%s item %q, expected a positive integer", flagName, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// benchShapes parses the --seq, --dim and --mask lists every bench takes.
func benchShapes(seqs, dims, masks string) (ns, ds []int, causals []bool, err error) {
	if ns, err = parseIntList("seq", seqs); err != nil {
		return
	}
	if ds, err = parseIntList("dim", dims); err != nil {
		return
	}
	causals, err = parseMasks(masks)
	return
}
