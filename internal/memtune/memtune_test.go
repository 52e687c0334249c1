package memtune_test

import (
	"runtime/debug"
	"testing"

	"github.com/ringattn/ringattn/internal/memtune"
)

func TestMemtuneApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	t.Setenv(memtune.HugePagesEnv, "off")
	s := memtune.Apply()
	if s.GCPercent != memtune.DefaultGCPercent {
		t.Fatalf("Apply().GCPercent = %d without GOGC, expected %d", s.GCPercent, memtune.DefaultGCPercent)
	}
	if got := debug.SetGCPercent(100); got != memtune.DefaultGCPercent {
		t.Fatalf("GC percent %d after Apply, expected %d", got, memtune.DefaultGCPercent)
	}
	if s.HugePages != "off ("+memtune.HugePagesEnv+"=off)" {
		t.Fatalf("Apply().HugePages = %q with %s=off", s.HugePages, memtune.HugePagesEnv)
	}
	// GOGC set: Apply keeps the runtime's value (read from the
	// environment at start; here the one in effect).
	t.Setenv("GOGC", "300")
	debug.SetGCPercent(300)
	if s := memtune.Apply(); s.GCPercent != 300 {
		t.Fatalf("Apply().GCPercent = %d with GOGC=300, expected 300", s.GCPercent)
	}
	if got := debug.SetGCPercent(100); got != 300 {
		t.Fatalf("GC percent %d after Apply with GOGC=300, expected 300", got)
	}
}
