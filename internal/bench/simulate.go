package bench

import (
	"errors"

	"github.com/ringattn/ringattn/internal/simulate"
)

// benchSimulate runs `ringattn bench simulate`: the scaling model of
// package simulate (its own flags and --help).
func benchSimulate(env *Env, args []string) error {
	ctx, stop := signalContext()
	defer stop()
	err := simulate.Run(ctx, args, env.Stdout, env.Stderr)
	if u := (simulate.UsageError{}); errors.As(err, &u) {
		return UsageError{u.Err}
	}
	return err
}
