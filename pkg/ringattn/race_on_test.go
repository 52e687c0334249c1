//go:build race

package ringattn_test

// raceEnabled: the race detector is on. sync.Pool then drops pooled
// items at random, by design, so the kernels' scratch is allocated anew
// on many calls and allocation counts say nothing about the engine.
const raceEnabled = true
