package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
)

// errShortWait is the cause of a receive cut short by failFastRing.
var errShortWait = errors.New("worker: short wait on a stalled peer")

// failFastRing wraps a rank's ring: after a receive from a peer timed out,
// further receives from that peer wait only `short` before the rank falls
// back to the store, until a frame from it arrives again. A rank whose
// neighbour died (or whose frames a NATS restart dropped) thus pays the
// full receive timeout once per peer, not once per block.
type failFastRing struct {
	ringattn.Ring
	short time.Duration

	mu      sync.Mutex
	stalled map[int]bool
}

func newFailFastRing(r ringattn.Ring, short time.Duration) *failFastRing {
	return &failFastRing{Ring: r, short: short, stalled: map[int]bool{}}
}

func (r *failFastRing) Recv(ctx context.Context, from int, key ringattn.Key) (ringattn.Frame, error) {
	r.mu.Lock()
	stalled := r.stalled[from]
	r.mu.Unlock()
	rctx := ctx
	if stalled {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeoutCause(ctx, r.short, errShortWait)
		defer cancel()
	}
	f, err := r.Ring.Recv(rctx, from, key)
	switch {
	case err == nil:
		r.mark(from, false)
	case errors.Is(err, transport.ErrAbandoned):
		// Its sender gave up on this one frame (this rank was slow to
		// take it) and said so: the peer is alive, do not cut later
		// receives short.
	case errors.Is(err, ringattn.ErrTimeout):
		r.mark(from, true)
	case stalled && ctx.Err() == nil && errors.Is(context.Cause(rctx), errShortWait):
		return ringattn.Frame{}, fmt.Errorf("%w: rank %d stalled, waited %v for %+v", ringattn.ErrTimeout, from, r.short, key)
	}
	return f, err
}

func (r *failFastRing) mark(from int, stalled bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if stalled {
		r.stalled[from] = true
	} else {
		delete(r.stalled, from)
	}
}
