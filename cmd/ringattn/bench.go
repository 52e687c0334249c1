package main

import (
	"errors"
	"flag"

	"github.com/ringattn/ringattn/internal/bench"
)

// runBench runs `ringattn bench <target>` (internal/bench) with this CLI's
// flag handling, so its --help and errors read like every command's.
func runBench(env *cliEnv, args []string) error {
	err := bench.Run(bench.Env{
		Stdout: env.stdout,
		Stderr: env.stderr,
		NewFlags: func(name, synopsis string) *flag.FlagSet {
			return newFlags(env, name, synopsis)
		},
		Parse: func(fs *flag.FlagSet, args []string) error { return parse(env, fs, args) },
	}, args)
	if errors.As(err, new(bench.UsageError)) {
		return usageError{err}
	}
	return err
}
