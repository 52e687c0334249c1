package memtune

import (
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

func TestMemtuneParseTHPMode(t *testing.T) {
	for in, want := range map[string]string{
		"always [madvise] never\n": "madvise",
		"[always] madvise never":   "always",
		"always madvise [never]":   "never",
	} {
		if got, err := parseTHPMode(in); err != nil || got != want {
			t.Errorf("parseTHPMode(%q) = %q, %v; expected %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "always madvise never", "[]", "]x["} {
		if got, err := parseTHPMode(in); err == nil {
			t.Errorf("parseTHPMode(%q) = %q, expected an error", in, got)
		}
	}
}

func minorFaults(t *testing.T) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_THREAD, &ru); err != nil {
		t.Fatal(err)
	}
	return ru.Minflt
}

// smapsHuge returns the AnonHugePages (bytes) of the mapping holding addr.
func smapsHuge(t *testing.T, addr uintptr) int64 {
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && len(f) >= 5 && !strings.HasSuffix(f[0], ":") {
			l, _ := parseHex(lo)
			h, _ := parseHex(hi)
			in = addr >= l && addr < h
			continue
		}
		if in && f[0] == "AnonHugePages:" {
			var kb int64
			for _, c := range f[1] {
				kb = kb*10 + int64(c-'0')
			}
			return kb << 10
		}
	}
	t.Fatalf("no mapping holds %#x in /proc/self/smaps", addr)
	return 0
}

func parseHex(s string) (uintptr, bool) {
	var v uintptr
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uintptr(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uintptr(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// TestMemtuneHugePages checks that a heap buffer allocated after
// EnableHugePages is faulted in 2 MiB at a time where the system allows it.
func TestMemtuneHugePages(t *testing.T) {
	status := EnableHugePages()
	t.Logf("EnableHugePages: %s", status)
	mode, err := thpMode()
	if err != nil || mode == "never" {
		t.Skipf("transparent huge pages unavailable here (mode %q, %v): nothing to check", mode, err)
	}
	if mode == "madvise" && !strings.HasPrefix(status, "madvise: heap advised") {
		t.Fatalf("EnableHugePages() = %q in madvise mode, expected the heap advised", status)
	}
	if again := EnableHugePages(); again != status {
		t.Fatalf("second EnableHugePages() = %q, expected the first report %q", again, status)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const size = 64 << 20
	buf := make([]byte, size)
	before := minorFaults(t)
	for i := 0; i < size; i += 4096 {
		buf[i] = 1
	}
	faults := minorFaults(t) - before
	huge := smapsHuge(t, uintptr(unsafe.Pointer(&buf[size/2])))
	runtime.KeepAlive(buf)
	t.Logf("touching %d MiB: %d minor faults, mapping has %d MiB in huge pages", size>>20, faults, huge>>20)
	// 4 KiB pages would be 16384 faults; 2 MiB pages 32. Leave room for
	// huge pages the kernel could not find at once.
	if faults > size/4096/4 {
		t.Errorf("touching %d MiB took %d minor faults, expected under %d with huge pages", size>>20, faults, size/4096/4)
	}
	if huge < size/2 {
		t.Errorf("the buffer's mapping has %d MiB in huge pages, expected at least %d", huge>>20, size>>21)
	}
}
