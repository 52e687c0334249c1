// Package memtune sets the garbage collector's goal for ringattn processes,
// whose heaps are mostly large pointer-free tensor buffers.
//
// With Go's default GOGC=100 the heap grows to twice the live set before a
// collection. For these processes a collection is cheap (the collector
// marks pointers, and float32 buffers hold none), while heap growth is
// not: every fresh page is faulted in by the kernel, at about 10 µs per
// 4 KiB page on the virtual machines measured (docs/BENCHMARKS.md). A
// tighter goal keeps the resident set near the live set and reuses freed
// buffers instead of faulting in new ones: a 4-worker N=65536 job in one
// process went from 1.84 M to 1.02 M page faults and from +77 % to +66 %
// CPU over the local kernel.
package memtune

import (
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the GOGC that Apply sets.
const DefaultGCPercent = 25

// Apply sets GOGC to DefaultGCPercent unless the GOGC environment
// variable says otherwise, and returns the value in effect.
func Apply() int {
	if v, ok := os.LookupEnv("GOGC"); ok && v != "" {
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old) // the environment's value, unchanged
		return old
	}
	debug.SetGCPercent(DefaultGCPercent)
	return DefaultGCPercent
}
