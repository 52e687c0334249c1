package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestWorkerCmdFlagsAndEnv(t *testing.T) {
	t.Setenv("RINGATTN_WORKER_ID", "from-env")
	t.Setenv("RINGATTN_SLOTS", "3")
	t.Setenv("RINGATTN_DRAIN_TIMEOUT", "7s")
	t.Setenv("RINGATTN_NATS_URL", "nats://10.0.0.1:4222")
	var stderr bytes.Buffer
	cfg, ver, format, level, err := config([]string{"--slots", "2", "--log-format", "json", "--heartbeat-interval", "250ms"}, &stderr)
	if err != nil {
		t.Fatalf("config: %v (%s)", err, stderr.String())
	}
	switch {
	case ver:
		t.Error("version set")
	case cfg.ID != "from-env":
		t.Errorf("ID = %q, want from the environment", cfg.ID)
	case cfg.Slots != 2:
		t.Errorf("Slots = %d, want the flag's 2 over the environment's 3", cfg.Slots)
	case cfg.DrainTimeout != 7*time.Second:
		t.Errorf("DrainTimeout = %v, want 7s from the environment", cfg.DrainTimeout)
	case cfg.HeartbeatInterval != 250*time.Millisecond:
		t.Errorf("HeartbeatInterval = %v", cfg.HeartbeatInterval)
	case len(cfg.NATS.URLs) != 1 || cfg.NATS.URLs[0] != "nats://10.0.0.1:4222":
		t.Errorf("NATS URLs = %v", cfg.NATS.URLs)
	case format != "json" || level != "info":
		t.Errorf("log format %q level %q", format, level)
	}
}

func TestWorkerCmdUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "ringattn worker") {
		t.Fatalf("--version: exit %d, %q", code, out.String())
	}
	errb.Reset()
	if code := run([]string{"--help"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "-drain-timeout") ||
		!strings.Contains(errb.String(), "RINGATTN_DRAIN_TIMEOUT") {
		t.Fatalf("--help: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"--slots", "0"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "slots") {
		t.Fatalf("--slots 0: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"--log-format", "xml"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "xml") {
		t.Fatalf("--log-format xml: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	t.Setenv("RINGATTN_SLOTS", "many")
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "RINGATTN_SLOTS") {
		t.Fatalf("bad env: exit %d, %q", code, errb.String())
	}
}
