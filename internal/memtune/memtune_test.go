package memtune_test

import (
	"runtime/debug"
	"testing"

	"github.com/ringattn/ringattn/internal/memtune"
)

func TestMemtuneApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	if got := memtune.Apply(); got != memtune.DefaultGCPercent {
		t.Fatalf("Apply() = %d without GOGC, expected %d", got, memtune.DefaultGCPercent)
	}
	if got := debug.SetGCPercent(100); got != memtune.DefaultGCPercent {
		t.Fatalf("GC percent %d after Apply, expected %d", got, memtune.DefaultGCPercent)
	}
	// GOGC set: Apply keeps the runtime's value (read from the
	// environment at start; here the one in effect).
	t.Setenv("GOGC", "300")
	debug.SetGCPercent(300)
	if got := memtune.Apply(); got != 300 {
		t.Fatalf("Apply() = %d with GOGC=300, expected 300", got)
	}
	if got := debug.SetGCPercent(100); got != 300 {
		t.Fatalf("GC percent %d after Apply with GOGC=300, expected 300", got)
	}
}
