package client

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// ErrBusy: the coordinator refused a request because it was handling as
// many as it allows (ERROR_CODE_BUSY); nothing was done. It is a kind of
// ErrUnavailable: calls retry it with jittered exponential backoff, waiting
// at least the reply's retry-after.
var ErrBusy = fmt.Errorf("%w: busy", ErrUnavailable)

// Backoff between retries of an API call.
const (
	retryFirst = 50 * time.Millisecond
	retryMax   = 2 * time.Second
)

// retryAfter is the least wait an error asks for (0: none).
func retryAfter(err error) time.Duration {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.RetryAfter
	}
	return 0
}

// retryWait is the wait before retry attempt+1 after err: exponential from
// retryFirst, capped at retryMax, with full jitter over its upper half so
// that clients refused together do not return together; never below the
// retry-after the coordinator named (plus up to a fifth more, jittered).
func retryWait(attempt int, err error) time.Duration {
	d := retryFirst
	for i := 1; i < attempt && d < retryMax; i++ {
		d *= 2
	}
	d = min(d, retryMax)
	d = d/2 + rand.N(d/2+1)
	if ra := retryAfter(err); ra > 0 && d < ra {
		d = ra + rand.N(ra/5+1)
	}
	return d
}
