package ringattn

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRecvTimeout is the in-memory ring's receive timeout when
// MemOptions.RecvTimeout is 0. It is generous: a receive waits for the
// previous rank to finish its step, and a timeout only costs a Source fetch.
const DefaultRecvTimeout = time.Minute

// DefaultBuffer is the number of frames a link of the in-memory ring holds
// before Send blocks, when MemOptions.Buffer is 0.
const DefaultBuffer = 64

// Fault is what the in-memory ring does to one frame. The zero value
// delivers it normally.
type Fault struct {
	Drop      bool          // never deliver it
	Delay     time.Duration // deliver it this much later (Send returns at once)
	Duplicate bool          // deliver it twice
	// Reorder holds the frame back and delivers it right after the next
	// frame on the same link (never, if no other frame follows).
	Reorder bool
}

// FaultFunc decides the fault for each frame sent from rank `from` to rank
// `to`. It is called on the sender's goroutine and may call MemNet.Kill.
type FaultFunc func(from, to int, key Key) Fault

// MemOptions configure a MemNet.
type MemOptions struct {
	RecvTimeout time.Duration // 0 means DefaultRecvTimeout
	Buffer      int           // frames per link; 0 means DefaultBuffer
	Fault       FaultFunc     // nil means no faults
}

// MemStats counts what a MemNet did.
type MemStats struct {
	Sent, Delivered, Dropped, Delayed, Duplicated, Reordered, Stale, Timeouts int64
}

// MemNet is an in-memory network of Size ranks; MemNet.Rank(r) is rank r's
// Ring. Any rank can send to any other (the ring uses neighbours, the
// split-KV reduction uses tree edges). Frames are passed by reference: a
// sender must not modify a frame's tensors after sending it.
//
// Fault hooks drop, delay, duplicate or reorder frames; Kill makes a rank
// dead: its own Send and Recv return ErrKilled, and peers sending to it or
// waiting on it get ErrPeerGone. Close stops delayed deliveries still
// pending; call it when the net is no longer used.
type MemNet struct {
	size    int
	timeout time.Duration
	buffer  int
	fault   FaultFunc
	links   [][]*memLink // [from][to]
	dead    []chan struct{}
	killMu  sync.Mutex
	timerMu sync.Mutex
	timers  map[*time.Timer]struct{}
	closed  bool
	ledger  gradLedger // gradient buffers lent between ranks (gradbufs.go)

	sent, delivered, dropped, delayed, duplicated, reordered, stale, timeouts atomic.Int64
}

// memLink is the queue of frames from one rank to another.
type memLink struct {
	mu      sync.Mutex
	frames  []Frame
	changed chan struct{} // closed and replaced on every change
	held    *Frame        // a reordered frame waiting for the next one
	minStep map[Kind]int  // frames of a kind below this step are stale
}

// NewMemNet returns an in-memory network of size ranks.
func NewMemNet(size int, opts MemOptions) (*MemNet, error) {
	switch {
	case size < 1:
		return nil, invalid("in-memory ring size %d, expected >= 1", size)
	case opts.RecvTimeout < 0:
		return nil, invalid("MemOptions.RecvTimeout = %v, expected >= 0", opts.RecvTimeout)
	case opts.Buffer < 0:
		return nil, invalid("MemOptions.Buffer = %d, expected >= 0", opts.Buffer)
	}
	n := &MemNet{
		size:    size,
		timeout: opts.RecvTimeout,
		buffer:  opts.Buffer,
		fault:   opts.Fault,
		timers:  map[*time.Timer]struct{}{},
	}
	if n.timeout <= 0 {
		n.timeout = DefaultRecvTimeout
	}
	if n.buffer <= 0 {
		n.buffer = DefaultBuffer
	}
	n.links = make([][]*memLink, size)
	n.dead = make([]chan struct{}, size)
	for i := range size {
		n.dead[i] = make(chan struct{})
		n.links[i] = make([]*memLink, size)
		for j := range size {
			n.links[i][j] = &memLink{changed: make(chan struct{}), minStep: map[Kind]int{}}
		}
	}
	return n, nil
}

// Size is the number of ranks.
func (n *MemNet) Size() int { return n.size }

// Rank returns rank r's endpoint.
func (n *MemNet) Rank(r int) Ring { return &memEnd{net: n, rank: r} }

// SharesFrames reports true: frames, views included, pass by reference.
func (e *memEnd) SharesFrames() bool { return true }

func (e *memEnd) gradLedger() *gradLedger { return &e.net.ledger }

// Kill marks rank r dead (idempotent; ranks out of range are ignored).
func (n *MemNet) Kill(r int) {
	n.killMu.Lock()
	defer n.killMu.Unlock()
	if r >= 0 && r < n.size && !n.Killed(r) {
		close(n.dead[r])
	}
}

// Killed reports whether rank r was killed.
func (n *MemNet) Killed(r int) bool {
	if r < 0 || r >= n.size {
		return false
	}
	select {
	case <-n.dead[r]:
		return true
	default:
		return false
	}
}

// Close cancels pending delayed deliveries; later delays are dropped.
func (n *MemNet) Close() {
	n.timerMu.Lock()
	defer n.timerMu.Unlock()
	n.closed = true
	for t := range n.timers {
		t.Stop()
	}
	clear(n.timers)
}

// Stats returns the counters.
func (n *MemNet) Stats() MemStats {
	return MemStats{
		Sent: n.sent.Load(), Delivered: n.delivered.Load(), Dropped: n.dropped.Load(),
		Delayed: n.delayed.Load(), Duplicated: n.duplicated.Load(), Reordered: n.reordered.Load(),
		Stale: n.stale.Load(), Timeouts: n.timeouts.Load(),
	}
}

// notify wakes everyone waiting on the link; l.mu must be held.
func (l *memLink) notify() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// put appends f unless it is stale; l.mu must be held.
func (n *MemNet) put(l *memLink, f Frame) {
	if f.Step < l.minStep[f.Kind] {
		n.stale.Add(1)
		return
	}
	l.frames = append(l.frames, f)
	n.delivered.Add(1)
}

type memEnd struct {
	net  *MemNet
	rank int
}

func (e *memEnd) Rank() int { return e.rank }
func (e *memEnd) Size() int { return e.net.size }

func (e *memEnd) check(peer int) error {
	n := e.net
	if e.rank < 0 || e.rank >= n.size {
		return fmt.Errorf("%w: rank %d, expected 0..%d", ErrInvalid, e.rank, n.size-1)
	}
	if peer < 0 || peer >= n.size || peer == e.rank {
		return fmt.Errorf("%w: peer rank %d, expected 0..%d other than %d", ErrInvalid, peer, n.size-1, e.rank)
	}
	if n.Killed(e.rank) {
		return fmt.Errorf("rank %d: %w", e.rank, ErrKilled)
	}
	return nil
}

// Send delivers f to rank `to`, subject to the fault hook; it blocks while
// the link holds Buffer frames.
func (e *memEnd) Send(ctx context.Context, to int, f Frame) error {
	if err := e.check(to); err != nil {
		return err
	}
	n := e.net
	if n.Killed(to) {
		return fmt.Errorf("rank %d: %w", to, ErrPeerGone)
	}
	n.sent.Add(1)
	var fault Fault
	if n.fault != nil {
		fault = n.fault(e.rank, to, f.Key)
		if n.Killed(e.rank) { // the hook killed us
			return fmt.Errorf("rank %d: %w", e.rank, ErrKilled)
		}
	}
	l := n.links[e.rank][to]
	switch {
	case fault.Drop:
		n.dropped.Add(1)
		return nil
	case fault.Delay > 0:
		n.delayed.Add(1)
		copies := 1
		if fault.Duplicate {
			copies = 2
		}
		n.timerMu.Lock()
		defer n.timerMu.Unlock()
		if n.closed {
			return nil
		}
		var t *time.Timer
		t = time.AfterFunc(fault.Delay, func() {
			n.timerMu.Lock()
			delete(n.timers, t)
			n.timerMu.Unlock()
			l.mu.Lock()
			for range copies {
				n.put(l, f)
			}
			l.notify()
			l.mu.Unlock()
		})
		n.timers[t] = struct{}{}
		return nil
	}
	copies := 1
	if fault.Duplicate {
		n.duplicated.Add(1)
		copies = 2
	}
	for {
		l.mu.Lock()
		if fault.Reorder && l.held == nil {
			n.reordered.Add(1)
			l.held = &f
			l.mu.Unlock()
			return nil
		}
		if len(l.frames) < n.buffer {
			for range copies {
				n.put(l, f)
			}
			if l.held != nil {
				n.put(l, *l.held)
				l.held = nil
			}
			l.notify()
			l.mu.Unlock()
			return nil
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.dead[to]:
			return fmt.Errorf("rank %d: %w", to, ErrPeerGone)
		case <-n.dead[e.rank]:
			return fmt.Errorf("rank %d: %w", e.rank, ErrKilled)
		}
	}
}

// Recv returns the frame with key from rank `from`. Frames of the same kind
// with a lower step are discarded as stale (they were replaced by a Source
// fetch); others stay queued.
func (e *memEnd) Recv(ctx context.Context, from int, key Key) (Frame, error) {
	if err := e.check(from); err != nil {
		return Frame{}, err
	}
	n := e.net
	l := n.links[from][e.rank]
	timer := time.NewTimer(n.timeout)
	defer timer.Stop()
	for {
		l.mu.Lock()
		if key.Step > l.minStep[key.Kind] {
			l.minStep[key.Kind] = key.Step
		}
		kept := l.frames[:0]
		var got *Frame
		for i := range l.frames {
			f := l.frames[i]
			switch {
			case got == nil && f.Key == key:
				got = &f
			case f.Kind == key.Kind && f.Step < key.Step:
				n.stale.Add(1)
			default:
				kept = append(kept, f)
			}
		}
		changed := len(kept) != len(l.frames)
		clear(l.frames[len(kept):])
		l.frames = kept
		if changed {
			l.notify()
		}
		ch := l.changed
		l.mu.Unlock()
		if got != nil {
			return *got, nil
		}
		if n.Killed(from) {
			return Frame{}, fmt.Errorf("rank %d: %w", from, ErrPeerGone)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Frame{}, ctx.Err()
		case <-timer.C:
			n.timeouts.Add(1)
			return Frame{}, fmt.Errorf("rank %d from rank %d, %+v after %v: %w", e.rank, from, key, n.timeout, ErrTimeout)
		case <-n.dead[from]:
		case <-n.dead[e.rank]:
			return Frame{}, fmt.Errorf("rank %d: %w", e.rank, ErrKilled)
		}
	}
}
