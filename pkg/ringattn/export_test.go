package ringattn

import "math"

// Buffers given back to the gradient cache are poisoned in tests: a rank
// that read one after giving it back would compute NaN.
func init() { gradBufs.poison = true }

// GradCacheValues returns the values the process's gradient buffer cache
// holds (gradbufs.go).
func GradCacheValues() int { return gradBufs.cached() }

// PoisonGradCache fills every buffer in the gradient cache with NaN: a
// ring that reused one without clearing it would return NaN gradients.
func PoisonGradCache() {
	gradBufs.mu.Lock()
	defer gradBufs.mu.Unlock()
	nan := float32(math.NaN())
	for _, l := range gradBufs.free {
		for _, x := range l {
			for i := range x {
				x[i] = nan
			}
		}
	}
}

// LentViews returns the gradient views the net's ranks lent one another
// and did not give back.
func (n *MemNet) LentViews() int { return n.ledger.lent() }
