//go:build linux

package memtune

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const (
	hugePage   = 2 << 20  // x86-64 and arm64 (4 KiB base pages) transparent huge page
	arenaBytes = 64 << 20 // the Go heap's arena size and alignment on 64-bit Linux

	// maxPremap bounds the heap region mapped up front: address space
	// only (pages are faulted in when used), but the runtime's page
	// metadata for it is about 1 MiB per GiB.
	maxPremap = 8 << 30
	// slack is how far past the heap's mapped size the watcher advises,
	// to catch growth into the arenas above.
	slack = 1 << 30

	madvHugePage = 14 // MADV_HUGEPAGE
)

// watchInterval is how often the heap's size is checked for growth to
// advise after EnableHugePages.
const watchInterval = 10 * time.Millisecond

var (
	hugeOnce   sync.Once
	hugeStatus string
	heapBase   uintptr // the first arena of the premapped region
)

// EnableHugePages asks the kernel for transparent huge pages on the Go heap
// and reports what it did. It acts only where the system's THP mode is
// "madvise" ("always" needs nothing; "never" refuses). It
//
//   - maps a heap region of up to min(memory/2, 8 GiB) up front, by
//     allocating and freeing one untouched buffer: address space and no
//     resident memory, which later allocations reuse lowest address first;
//   - advises that region MADV_HUGEPAGE before any of it is touched;
//   - watches the heap's mapped size every watchInterval (10 ms) and advises any
//     growth past it (the runtime maps new heap memory afresh, without
//     the advice).
//
// It does not premap where the kernel may refuse the address space
// (overcommit_memory=2, a finite RLIMIT_AS); the watcher still advises.
// Later calls return the first call's report.
func EnableHugePages() string {
	hugeOnce.Do(func() { hugeStatus = enableHugePages() })
	return hugeStatus
}

func enableHugePages() string {
	mode, err := thpMode()
	if err != nil {
		return "unavailable (" + err.Error() + ")"
	}
	if mode != "madvise" {
		return "system mode " + mode + ", heap not advised"
	}
	size, why := premapSize()
	if size < arenaBytes {
		size = arenaBytes // still learn where the heap is
	}
	ballast := make([]byte, size)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(ballast)))
	heapBase = p &^ (arenaBytes - 1)
	advise(heapBase, p+uintptr(size)-heapBase)
	runtime.KeepAlive(ballast)
	// Collect the ballast and release it now, so the background scavenger
	// does not spend time on it later.
	debug.FreeOSMemory()
	go watch()
	if why != "" {
		return "madvise: heap advised (" + why + ")"
	}
	return fmt.Sprintf("madvise: heap advised, %d MiB premapped", size>>20)
}

// watch advises the heap whenever its mapped size changes.
func watch() {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	var last uint64
	t := time.NewTicker(watchInterval)
	for range t.C {
		metrics.Read(s)
		if v := s[0].Value.Uint64(); v != last {
			last = v
			advise(heapBase, uintptr(v)+slack)
		}
	}
}

// advise marks [addr, addr+n) MADV_HUGEPAGE. Unmapped holes in the range
// make madvise return ENOMEM after it has advised every mapping there.
func advise(addr, n uintptr) {
	n = (n + hugePage - 1) &^ (hugePage - 1)
	syscall.Syscall(syscall.SYS_MADVISE, addr, n, madvHugePage)
}

// thpMode reads the system's transparent huge page mode.
func thpMode() (string, error) {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil {
		return "", err
	}
	return parseTHPMode(string(b))
}

// parseTHPMode returns the bracketed word of "always [madvise] never".
func parseTHPMode(s string) (string, error) {
	i := strings.IndexByte(s, '[')
	j := strings.IndexByte(s, ']')
	if i < 0 || j < i+2 {
		return "", fmt.Errorf("transparent_hugepage/enabled = %q: want one [mode]", strings.TrimSpace(s))
	}
	return s[i+1 : j], nil
}

// premapSize is how much heap to map up front, or 0 and why not.
func premapSize() (int, string) {
	if b, err := os.ReadFile("/proc/sys/vm/overcommit_memory"); err == nil && strings.TrimSpace(string(b)) == "2" {
		return 0, "no premap: vm.overcommit_memory=2"
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_AS, &lim); err == nil && lim.Cur != ^uint64(0) {
		return 0, "no premap: RLIMIT_AS is set"
	}
	size := int64(maxPremap)
	if m := memTotal(); m > 0 {
		size = min(size, m/2)
	}
	if l := debug.SetMemoryLimit(-1); l > 0 {
		size = min(size, l/2)
	}
	return int(size &^ (arenaBytes - 1)), ""
}

// memTotal is the machine's memory, or its cgroup's limit when lower.
func memTotal() int64 {
	var total int64
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total = kb << 10
			}
		}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		if l, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && l > 0 && (total == 0 || l < total) {
			total = l
		}
	}
	return total
}
