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
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/ringattn/ringattn/internal/memtune"
)

// Exit codes (DESIGN §6).
const (
	exitOK    = 0
	exitJob   = 1 // the job failed or the result is not exact
	exitUsage = 2 // bad usage or bad input
	exitReach = 3 // the cluster cannot be reached
)

// unreachableError is a cluster that cannot be reached: exit 3.
type unreachableError struct{ err error }

func (e unreachableError) Error() string { return e.err.Error() }
func (e unreachableError) Unwrap() error { return e.err }

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
		{"gateway", "serve the HTTP job API (for curl and Python) for a running cluster until Ctrl-C", runGateway},
		{"submit", "upload inputs and submit an attention job to a running cluster", runSubmit},
		{"status", "show a job's status", runStatus},
		{"get", "fetch a finished job's outputs", runGet},
		{"cancel", "cancel a job", runCancel},
		{"list", "list jobs", runList},
		{"watch", "follow a job's progress until it finishes", runWatch},
		{"info", "show a running cluster's leader and workers (--wait: until it is up)", runInfo},
		{"randn", "write a random normal .npy tensor (inputs to try things with)", runRandn},
		{"compare", "compare two .npy outputs: max |a - b| within a tolerance", runCompare},
		{"bench", "benchmarks: bench kernel|ring|cluster|rss|recovery", runBench},
		{"version", "print the version, commit and build date", func(env *cliEnv, _ []string) error {
			fmt.Fprintln(env.stdout, versionLine())
			return nil
		}},
	}
}

// commit and date may be set at link time:
//
//	go build -ldflags "-X main.commit=$(git rev-parse HEAD) -X main.date=$(date -u +%FT%TZ)"
//
// else they come from the build's VCS stamp (absent with -buildvcs=false).
var commit, date string

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// buildStamp returns the commit (12 hex digits, "+dirty" when modified)
// and build date, "unknown" when neither -ldflags nor the VCS stamp says.
func buildStamp() (rev, when string) {
	rev, when = commit, date
	modified := false
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.time":
				if when == "" {
					when = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		rev = "unknown"
	} else if modified && commit == "" {
		rev += "+dirty"
	}
	if when == "" {
		when = "unknown"
	}
	return rev, when
}

func versionLine() string {
	rev, when := buildStamp()
	return fmt.Sprintf("ringattn %s (commit %s, built %s, %s)", version(), rev, when, runtime.Version())
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
Run 'ringattn <command> --help' for a command's flags and examples.

Examples:
  ringattn demo                                   # a random job on an embedded cluster, checked
  ringattn attend -q q.npy -k k.npy -v v.npy -o o.npy --causal
  ringattn dev                                    # a cluster in one process, then in another shell:
  ringattn attend --nats 127.0.0.1:4222 -q q.npy -k k.npy -v v.npy -o o.npy

Exit codes: 0 success, 1 job failure, 2 bad usage or input, 3 cluster unreachable.
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
		fmt.Fprintln(stdout, versionLine())
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
		case errors.As(err, new(unreachableError)):
			fmt.Fprintf(stderr, "ringattn %s: %v\n", c.name, oneLine(err))
			return exitReach
		default:
			fmt.Fprintf(stderr, "ringattn %s: %v\n", c.name, oneLine(err))
			return exitJob
		}
	}
	names := make([]string, 0, len(commands()))
	for _, c := range commands() {
		names = append(names, c.name)
	}
	hint := "run 'ringattn help'"
	if s := nearest(args[0], names); s != "" {
		hint = fmt.Sprintf("did you mean %q?", s)
	}
	fmt.Fprintf(stderr, "ringattn: unknown command %q (%s)\n", args[0], hint)
	return exitUsage
}

// internalPrefix matches the package prefixes and error classes of the
// libraries ("kernels: invalid argument: "), which mean nothing to a user.
var internalPrefix = regexp.MustCompile(`\b(?:kernels|shard|ringattn|client|transport|tensor|coordinator|worker|devcluster|localcluster|nats): |\b(?:invalid argument|invalid request|invalid config): `)

// oneLine is err as the one line a user sees: newlines joined and the
// libraries' internal prefixes removed.
func oneLine(err error) string {
	return internalPrefix.ReplaceAllString(strings.ReplaceAll(err.Error(), "\n", "; "), "")
}

// newFlags returns a FlagSet whose errors are returned, not printed twice;
// its --help groups the flags (see help.go).
func newFlags(env *cliEnv, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() { printUsage(fs.Output(), fs, name, synopsis) }
	return fs
}

// parse parses flags; a flag error is a usage error (an unknown flag with
// the nearest known one suggested), --help prints to stdout.
func parse(env *cliEnv, fs *flag.FlagSet, args []string) error {
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// parseFlags is parse allowing arguments after the flags.
func parseFlags(env *cliEnv, fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(env.stdout)
		fs.Usage()
		return flag.ErrHelp
	}
	if err != nil {
		return usageError{flagError(fs, err)}
	}
	return nil
}
