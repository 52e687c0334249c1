package ringattn

import (
	"math"
	"sync"
	"time"
)

// Gradient buffers are recycled on in-process rings.
//
// A ring backward computes every rank's contribution to the dK/dV of the
// blocks it holds into a fresh buffer at every step (DESIGN.md §6): at
// R=4, N=16384, H=8, D=128 that is ~490 MiB per call besides the 192 MiB
// of gradients themselves. Fresh memory is expensive — the operating
// system maps and zeroes every page and, on a VM, the host backs it — and
// it was most of the in-process ring's remaining cost over the local
// backward kernel (docs/BENCHMARKS.md, "2026-12-06, later"). So, as a GPU
// framework's caching allocator does for ring-flash-attention, the ranks
// hand finished buffers back: on a MemNet the ledger (gradLedger) knows
// which set buffer a travelling view belongs to, and a set whose views are
// all consumed goes to gradBufs, from which the next contributions are
// taken.
//
// Reuse never changes a result: a buffer is cleared when it is taken, and
// the kernel adds into it exactly as into fresh zeros.

// gradBufs is the process's cache of gradient buffers.
var gradBufs = newBufCache(gradCacheLimit, gradCacheIdle)

const (
	// gradCacheLimit bounds the values the cache keeps (1 GiB): at most
	// what a ring had live at once is ever returned to it, and beyond
	// this buffers are left to the garbage collector.
	gradCacheLimit = 1 << 28
	// gradCacheIdle is how long the cache keeps buffers nobody asked for
	// or returned: a training loop's passes come back long before; an idle
	// process gives the memory back.
	gradCacheIdle = 30 * time.Second
)

// bufCache keeps float32 buffers by length, up to limit values in all,
// and drops them all after idle without a get or put.
type bufCache struct {
	limit int
	idle  time.Duration
	// poison fills buffers given back with NaN (tests: a use after the
	// give-back then shows in the result).
	poison bool

	mu    sync.Mutex
	free  map[int][][]float32
	held  int // values in free
	timer *time.Timer
}

func newBufCache(limit int, idle time.Duration) *bufCache {
	return &bufCache{limit: limit, idle: idle, free: map[int][][]float32{}}
}

// get returns a zeroed buffer of n values, cached or new.
func (c *bufCache) get(n int) []float32 {
	c.mu.Lock()
	l := c.free[n]
	if len(l) == 0 {
		c.mu.Unlock()
		return make([]float32, n)
	}
	x := l[len(l)-1]
	l[len(l)-1] = nil
	if len(l) == 1 {
		delete(c.free, n)
	} else {
		c.free[n] = l[:len(l)-1]
	}
	c.held -= n
	c.touch()
	c.mu.Unlock()
	clear(x)
	return x
}

// put gives x back; the caller must not use it any more. Buffers that
// would take the cache past its limit are dropped (left to the GC).
func (c *bufCache) put(x []float32) {
	n := len(x)
	if n == 0 || n != cap(x) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held+n > c.limit {
		return
	}
	if c.poison {
		nan := float32(math.NaN())
		for i := range x {
			x[i] = nan
		}
	}
	c.free[n] = append(c.free[n], x)
	c.held += n
	c.touch()
}

// touch restarts the idle timer; c.mu must be held.
func (c *bufCache) touch() {
	if c.timer == nil {
		c.timer = time.AfterFunc(c.idle, c.trim)
		return
	}
	c.timer.Reset(c.idle)
}

// trim drops every cached buffer.
func (c *bufCache) trim() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.free)
	c.held = 0
}

// cached returns the number of values the cache holds.
func (c *bufCache) cached() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held
}

// gradLedger tracks the gradient buffers lent out as views between the
// ranks of one in-process ring (a MemNet): each view, by its first dK
// value, maps to its set buffer and the set counts its views still out.
// When the last is given back the buffers return to gradBufs. A view that
// is never given back (a dropped or stale frame, a rank that failed)
// keeps its set out of the cache; the ledger and the set go with the net.
type gradLedger struct {
	cache *bufCache // nil: gradBufs

	mu    sync.Mutex
	views map[*float32]*lentSet
}

// lentSet is a set buffer whose views are out.
type lentSet struct {
	dk, dv []float32
	out    int
}

// lend records that views (of n dK/dV values each, at least one) are
// parts of the set buffers dk, dv taken from gradBufs.
func (l *gradLedger) lend(dk, dv []float32, views []gradPair) {
	s := &lentSet{dk: dk, dv: dv}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.views == nil {
		l.views = map[*float32]*lentSet{}
	}
	for _, g := range views {
		if len(g.dk) > 0 {
			l.views[&g.dk[0]] = s
			s.out++
		}
	}
}

// giveBack records that view g is consumed (added into another
// accumulator, or written to the sink) and returns its set to gradBufs
// when it was the last one out. Views the ledger did not lend are ignored;
// each lent view must be given back at most once.
func (l *gradLedger) giveBack(g gradPair) {
	if l == nil || len(g.dk) == 0 {
		return
	}
	l.mu.Lock()
	s, ok := l.views[&g.dk[0]]
	if ok {
		delete(l.views, &g.dk[0])
		s.out--
	}
	last := ok && s.out == 0
	l.mu.Unlock()
	if last {
		c := l.cache
		if c == nil {
			c = gradBufs
		}
		c.put(s.dk)
		c.put(s.dv)
	}
}

// lent returns the number of views out.
func (l *gradLedger) lent() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.views)
}

// ledgered is implemented by rings whose frames pass by reference within
// one process and which keep a gradLedger (MemNet's endpoints).
type ledgered interface {
	gradLedger() *gradLedger
}
