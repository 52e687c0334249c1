package coordinator

import "time"

// Load shedding (DESIGN.md, "Bounded concurrency"). Each API request and
// each worker report runs on its own goroutine, at most
// Limits.MaxConcurrentRequests and Limits.MaxConcurrentReports at once; one
// more is answered at once by transport's serve, without touching the
// state: BUSY with a retry-after for the API, RETRY for a report (workers
// retry reports anyway). Heartbeats are handled inline on their
// subscription and need no bound.

const (
	// busyRetryAfter is the retry-after a BUSY reply names.
	busyRetryAfter = 200 * time.Millisecond
	// queueRetryAfter is the retry-after a full-queue refusal names.
	queueRetryAfter = time.Second
)

// slots is a counting semaphore that never blocks.
type slots chan struct{}

func newSlots(n int) slots { return make(slots, max(n, 1)) }

// try takes a slot; false when all are taken.
func (g slots) try() bool {
	select {
	case g <- struct{}{}:
		return true
	default:
		return false
	}
}

// done returns a slot taken by try.
func (g slots) done() { <-g }

// dispatch is a transport.ServeConfig.Dispatch that runs each request on
// its own goroutine while gate has a slot, and refuses it (transport
// answers busy) when not, calling refused first when set. Once the
// session stops a request is dropped unanswered (the requester retries
// with the next leader).
func (l *leader) dispatch(gate slots, refused func()) func(run func()) bool {
	return func(run func()) bool {
		if !gate.try() {
			if refused != nil {
				refused()
			}
			return false
		}
		if !l.enter() {
			gate.done()
			return true
		}
		go func() {
			defer l.wg.Done()
			defer gate.done()
			run()
		}()
		return true
	}
}

// onServePanic counts a panic transport contained in a serve handler (the
// leader's handlers contain their own; this sees what escapes them).
func (l *leader) onServePanic(handler string, _ any) {
	l.c.met.panics.WithLabelValues(handler).Inc()
}
