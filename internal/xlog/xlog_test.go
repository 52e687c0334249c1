package xlog

import (
	"bytes"
	"encoding/json"
	"errors"
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
