package xlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestXlogFormats(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(&buf, "json", "debug")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hello", "k", 1)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("json output %q: %v", buf.String(), err)
	}
	if m["msg"] != "hello" || m["k"] != float64(1) {
		t.Fatalf("json record = %v", m)
	}
	buf.Reset()
	l, err = New(&buf, "", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("dropped")
	l.Warn("kept")
	if got := buf.String(); strings.Contains(got, "dropped") || !strings.Contains(got, "msg=kept") {
		t.Fatalf("text output = %q", got)
	}
	if _, err := New(&buf, "xml", ""); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "xml") {
		t.Fatalf("bad format error = %v", err)
	}
	if _, err := New(&buf, "text", "loud"); !errors.Is(err, ErrFormat) {
		t.Fatalf("bad level error = %v", err)
	}
	Test(t).Info("through t.Log")
	Discard().Error("nowhere")
}

// recordTB is a TB that keeps what is logged and the cleanups registered.
type recordTB struct {
	lines    []string
	cleanups []func()
	helpers  int
}

func (r *recordTB) Helper() { r.helpers++ }
func (r *recordTB) Log(args ...any) {
	r.lines = append(r.lines, strings.TrimSpace(fmt.Sprint(args...)))
}
func (r *recordTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recordTB) runCleanups() {
	for _, f := range r.cleanups {
		f()
	}
}

// TestXlogTestLogger: Test writes each record as one Log line at debug
// level, through any TB (not only *testing.T), and drops records once the
// test's cleanups ran (a goroutine outliving its test must not call Log).
func TestXlogTestLogger(t *testing.T) {
	var tb recordTB
	l := Test(&tb)
	l.Debug("first", "k", 1)
	l.Info("second")
	if len(tb.lines) != 2 || !strings.Contains(tb.lines[0], "level=DEBUG msg=first k=1") ||
		!strings.Contains(tb.lines[1], "msg=second") || strings.HasSuffix(tb.lines[0], "\n") {
		t.Fatalf("lines = %q", tb.lines)
	}
	if tb.helpers == 0 {
		t.Error("Test's writer never called Helper")
	}
	if len(tb.cleanups) != 1 {
		t.Fatalf("%d cleanups registered, want 1", len(tb.cleanups))
	}
	tb.runCleanups()
	l.Error("after the test")
	if len(tb.lines) != 2 {
		t.Fatalf("logged after the test ended: %q", tb.lines[2:])
	}
}
