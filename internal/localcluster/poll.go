package localcluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// permanentError ends a poll at once.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that a Poll (or a wait of a Cluster) returning
// it ends at once with err, without waiting for the deadline.
func Permanent(err error) error { return permanentError{err} }

// PollInterval is how often waits re-check their condition.
const PollInterval = 20 * time.Millisecond

// poll calls f every PollInterval until it returns nil, returns a
// permanent error, ctx ends or Config.Ready passes; the error names what
// was awaited and f's last error.
func (c *Cluster) poll(ctx context.Context, what string, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Ready)
	defer cancel()
	return Poll(ctx, PollInterval, func() error {
		err := f(ctx)
		if err != nil && ctx.Err() == nil {
			var pe permanentError
			if errors.As(err, &pe) {
				return pe
			}
		}
		return err
	}, what)
}

// Poll calls f every `every` until it returns nil or ctx ends; on timeout
// the error wraps ErrNotReady and names what and f's last error. When
// that last call was cut short by the deadline itself, the error names
// the last one that failed for a reason of its own as well, so a timeout
// says why the condition never held.
func Poll(ctx context.Context, every time.Duration, f func() error, what string) error {
	t := time.NewTicker(every)
	defer t.Stop()
	var cause error // the last error not caused by ctx ending
	for {
		err := f()
		if err == nil {
			return nil
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s: %w", what, pe.err)
		}
		if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
			cause = err
		}
		select {
		case <-ctx.Done():
			if cause != nil && cause != err {
				return fmt.Errorf("%w: %s: %v (last: %v; before that: %v)", ErrNotReady, what, ctx.Err(), err, cause)
			}
			return fmt.Errorf("%w: %s: %v (last: %v)", ErrNotReady, what, ctx.Err(), err)
		case <-t.C:
		}
	}
}
