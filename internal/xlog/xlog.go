package xlog

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// ErrFormat is returned for an unknown log format or level.
var ErrFormat = errors.New("xlog: bad logging option")

// Formats accepted by New.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// New returns a logger writing to w in format ("text", "json"; "" means
// text) at level ("debug", "info", "warn", "error"; "" means info).
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	lv, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "", FormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("%w: log format %q, want text or json", ErrFormat, format)
	}
}

// ParseLevel parses a level name ("" means info).
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	default:
		return 0, fmt.Errorf("%w: log level %q, want debug, info, warn or error", ErrFormat, s)
	}
}

// Discard returns a logger that drops everything.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TB is the part of testing.TB that Test uses; *testing.T, *testing.B and
// *testing.F satisfy it. Declaring it here keeps the testing package out of
// every binary that links xlog.
type TB interface {
	Helper()
	Log(args ...any)
	Cleanup(func())
}

// Test returns a debug-level text logger that writes through tb.Log and
// goes quiet when the test ends (goroutines may outlive it briefly).
func Test(tb TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct {
	mu   sync.Mutex
	tb   TB
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Helper()
		w.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tbWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
