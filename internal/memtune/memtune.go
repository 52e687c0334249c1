// Package memtune tunes the Go runtime's memory handling for ringattn
// processes, whose heaps are mostly large pointer-free tensor buffers.
//
// Two settings, both measured on the virtual machines this project is
// benchmarked on (docs/BENCHMARKS.md), where the kernel takes about 13 µs
// to fault in one fresh 4 KiB page — 64 MiB of new buffer costs ~0.2 s of
// CPU before a byte of it is used:
//
//   - GOGC=25 instead of 100. A collection is cheap here (the collector
//     marks pointers, and float32 buffers hold none) while heap growth is
//     not: a tighter goal reuses freed buffers instead of faulting in new
//     ones. A 4-worker N=65536 job in one process went from 1.84 M to
//     1.02 M page faults and from +77 % to +66 % CPU over the local kernel.
//
//   - Transparent huge pages for the heap. Where the system's THP mode is
//     "madvise" (the default of most distributions) the Go runtime does not
//     ask for huge pages, so every heap page is faulted in 4 KiB at a time.
//     EnableHugePages maps a large heap region up front and advises it (and
//     any later growth) MADV_HUGEPAGE, so buffers are faulted in 2 MiB at a
//     time: the same job went from 1.0 M page faults to 7–11 thousand.
//
// Apply does both unless the environment says otherwise (GOGC set, or
// RINGATTN_HUGEPAGES=off).
package memtune

import (
	"fmt"
	"os"
	"runtime/debug"
)

// DefaultGCPercent is the GOGC that Apply sets.
const DefaultGCPercent = 25

// HugePagesEnv names the environment variable that turns the heap's huge
// pages off ("off").
const HugePagesEnv = "RINGATTN_HUGEPAGES"

// Settings is what Apply put in effect.
type Settings struct {
	GCPercent int
	// HugePages says whether the heap asks for transparent huge pages,
	// and why not when it does not.
	HugePages string
}

func (s Settings) String() string {
	return fmt.Sprintf("GOGC=%d, huge pages: %s", s.GCPercent, s.HugePages)
}

// Apply sets GOGC to DefaultGCPercent unless the GOGC environment variable
// says otherwise, enables huge pages for the heap (EnableHugePages) unless
// RINGATTN_HUGEPAGES=off, and returns the settings in effect. Call it once,
// first thing in main.
func Apply() Settings {
	var s Settings
	if v, ok := os.LookupEnv("GOGC"); ok && v != "" {
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old) // the environment's value, unchanged
		s.GCPercent = old
	} else {
		debug.SetGCPercent(DefaultGCPercent)
		s.GCPercent = DefaultGCPercent
	}
	if v := os.Getenv(HugePagesEnv); v == "off" {
		s.HugePages = "off (" + HugePagesEnv + "=off)"
	} else {
		s.HugePages = EnableHugePages()
	}
	return s
}
