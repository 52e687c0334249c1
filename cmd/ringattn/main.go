// Command ringattn is the user CLI of ringattn: exact attention over long
// sequences, locally, on an in-process ring, or on a cluster. See
// `ringattn help` and DESIGN.md §6.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/ringattn/ringattn/internal/memtune"
)

// Exit codes (DESIGN §6).
const (
	exitOK    = 0
	exitJob   = 1 // the job failed or the result is not exact
	exitUsage = 2 // bad usage or bad input
)

// usageError is bad usage or bad input: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

type command struct {
	name    string
	summary string
	run     func(env *cliEnv, args []string) error
}

// cliEnv is what a command may touch: its output streams.
type cliEnv struct {
	stdout, stderr io.Writer
}

func commands() []command {
	return []command{
		{"attend", "compute attention on .npy/.safetensors inputs", runAttend},
		{"mha", "run a multi-head self-attention layer (torch conventions)", runMHA},
		{"demo", "run a random job on an embedded cluster and check it against the float64 reference", runDemo},
		{"dev", "run an all-in-one cluster (NATS, coordinator, workers) in this process until Ctrl-C", runDev},
		{"cluster", "run a multi-process local cluster (NATS, coordinators, workers as processes) until Ctrl-C", runCluster},
		{"submit", "upload inputs and submit an attention job to a running cluster", runSubmit},
		{"status", "show a job's status", runStatus},
		{"get", "fetch a finished job's outputs", runGet},
		{"cancel", "cancel a job", runCancel},
		{"list", "list jobs", runList},
		{"watch", "follow a job's progress until it finishes", runWatch},
		{"bench", "benchmarks: bench kernel|ring|cluster|rss|recovery", runBench},
		{"version", "print the version", func(env *cliEnv, _ []string) error {
			fmt.Fprintln(env.stdout, "ringattn", version())
			return nil
		}},
	}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `ringattn computes exact attention, softmax(QKᵀ·scale + mask)·V, over
sequences too long for one machine, and checks itself against a float64 reference.

Usage:
  ringattn <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run 'ringattn <command> --help' for a command's flags.
Exit codes: 0 success, 1 job failure, 2 bad usage or input.
`)
}

func main() {
	memtune.Apply()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the CLI and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	env := &cliEnv{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	case "--version", "-version":
		fmt.Fprintln(stdout, "ringattn", version())
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(env, args[1:])
		switch {
		case err == nil:
			return exitOK
		case errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.As(err, new(usageError)):
			fmt.Fprintf(stderr, "ringattn %s: %v\n", c.name, oneLine(err))
			return exitUsage
		default:
			fmt.Fprintf(stderr, "ringattn %s: %v\n", c.name, oneLine(err))
			return exitJob
		}
	}
	fmt.Fprintf(stderr, "ringattn: unknown command %q (run 'ringattn help')\n", args[0])
	return exitUsage
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// newFlags returns a FlagSet whose errors are returned, not printed twice.
func newFlags(env *cliEnv, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: ringattn %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags; a flag error is a usage error, --help prints to stdout.
func parse(env *cliEnv, fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(env.stdout)
		fs.Usage()
		return flag.ErrHelp
	}
	if err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
