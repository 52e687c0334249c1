//go:build unix

package kernels_test

import (
	"syscall"
	"time"
)

// processCPU is the user+system CPU time of this process so far, for
// throughput per CPU-second on a machine shared with other work.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
