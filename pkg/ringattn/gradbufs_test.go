package ringattn

import (
	"math"
	"sync"
	"testing"
	"time"
)

// TestBufCache: a buffer given back is handed out again, zeroed; the cache
// keeps up to its limit and not a value more; slices it cannot own whole
// are refused; an idle cache empties itself.
func TestBufCache(t *testing.T) {
	c := newBufCache(10, time.Hour)
	x := c.get(4)
	if len(x) != 4 || cap(x) != 4 {
		t.Fatalf("get(4): len %d cap %d", len(x), cap(x))
	}
	for i := range x {
		x[i] = float32(math.NaN())
	}
	c.put(x)
	if c.cached() != 4 {
		t.Fatalf("cached %d after putting 4 values", c.cached())
	}
	y := c.get(4)
	if &y[0] != &x[0] {
		t.Fatal("a cached buffer of the right length was not reused")
	}
	for i, v := range y {
		if v != 0 {
			t.Fatalf("reused buffer not zeroed: [%d] = %g", i, v)
		}
	}
	if c.cached() != 0 {
		t.Fatalf("cached %d after taking the buffer back", c.cached())
	}
	if z := c.get(3); &z[0] == &y[0] {
		t.Fatal("a buffer handed out twice")
	}

	// The limit: 10 values fit exactly, one more does not.
	c.put(make([]float32, 6))
	c.put(make([]float32, 4))
	if c.cached() != 10 {
		t.Fatalf("cached %d at the limit, expected 10", c.cached())
	}
	c.put(make([]float32, 1))
	if c.cached() != 10 {
		t.Fatalf("cached %d: a buffer past the limit was kept", c.cached())
	}

	// Slices that are not whole buffers, and empty ones, are not kept.
	d := newBufCache(100, time.Hour)
	d.put(make([]float32, 4, 8))
	d.put(nil)
	if d.cached() != 0 {
		t.Fatalf("cached %d values of partial or empty slices", d.cached())
	}

	// Idle: dropped after the idle time, and kept while in use.
	e := newBufCache(100, 50*time.Millisecond)
	e.put(make([]float32, 5))
	deadline := time.Now().Add(5 * time.Second)
	for e.cached() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("an idle cache still holds %d values", e.cached())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := e.get(5); len(got) != 5 {
		t.Fatalf("get(5) after a trim: %d values", len(got))
	}
}

// TestGradLedger: a set returns to the cache when its last view is given
// back, once, whatever the order and however many goroutines give views
// back; views the ledger never lent, or gives back twice, change nothing.
func TestGradLedger(t *testing.T) {
	c := newBufCache(1<<20, time.Hour)
	l := &gradLedger{cache: c}
	set := func(views, n int) ([]float32, []float32, []gradPair) {
		dk, dv := make([]float32, views*n), make([]float32, views*n)
		var out []gradPair
		for i := range views {
			out = append(out, gradPair{dk: dk[i*n:], dv: dv[i*n:], stride: views * n})
		}
		l.lend(dk, dv, out)
		return dk, dv, out
	}
	dk, _, views := set(3, 4)
	if l.lent() != 3 {
		t.Fatalf("%d views out, expected 3", l.lent())
	}
	l.giveBack(views[2])
	l.giveBack(views[2]) // twice: ignored
	l.giveBack(gradPair{dk: make([]float32, 4)})
	l.giveBack(gradPair{})
	l.giveBack(views[0])
	if c.cached() != 0 || l.lent() != 1 {
		t.Fatalf("set returned with a view still out: cached %d, lent %d", c.cached(), l.lent())
	}
	l.giveBack(views[1])
	if c.cached() != 24 || l.lent() != 0 {
		t.Fatalf("after the last view: cached %d (expected 24), lent %d", c.cached(), l.lent())
	}
	if got := c.get(12); &got[0] != &dk[0] && &got[0] != &views[0].dv[0] {
		t.Fatal("the returned set's buffers are not the ones handed out")
	}
	c.trim()

	// Concurrent give-backs: every set goes back exactly once.
	const sets, per = 50, 4
	var all []gradPair
	for range sets {
		_, _, v := set(per, 2)
		all = append(all, v...)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(all); i += 4 {
				l.giveBack(all[i])
			}
		})
	}
	wg.Wait()
	if want := sets * 2 * per * 2; c.cached() != want || l.lent() != 0 {
		t.Fatalf("cached %d values (expected %d), %d views still out", c.cached(), want, l.lent())
	}
}
