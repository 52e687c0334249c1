package main

import (
	"bytes"
	"strings"
	"testing"
)

func noEnv(string) (string, bool) { return "", false }

func TestCoordinatorCmdFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--version"}, &out, &errb, noEnv); code != 0 || !strings.HasPrefix(out.String(), "coordinator ") {
		t.Fatalf("--version: code %d, out %q, err %q", code, out.String(), errb.String())
	}
	errb.Reset()
	if code := run([]string{"--help"}, &out, &errb, noEnv); code != 0 || !strings.Contains(errb.String(), "--peers") && !strings.Contains(errb.String(), "-peers") {
		t.Fatalf("--help: code %d, err %q", code, errb.String())
	}
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "NodeID"},
		{[]string{"--node-id", "a", "--peers", "a=nohost"}, nil, "peers"},
		{[]string{"--node-id", "a", "--log-format", "xml"}, nil, "log format"},
		{[]string{"--node-id", "a", "extra"}, nil, "unexpected argument"},
		{[]string{"--node-id", "a"}, map[string]string{"RINGATTN_JOB_TTL": "soon"}, "RINGATTN_JOB_TTL"},
		{nil, map[string]string{"RINGATTN_NODE_ID": "a", "RINGATTN_HEARTBEAT_TIMEOUT": "0s"}, "HeartbeatTimeout"},
		{[]string{"--heartbeat-timeout", "0s"}, map[string]string{"RINGATTN_NODE_ID": "a", "RINGATTN_HEARTBEAT_TIMEOUT": "5s"}, "HeartbeatTimeout"},
	} {
		errb.Reset()
		lookup := func(k string) (string, bool) { v, ok := c.env[k]; return v, ok }
		if code := run(c.args, &out, &errb, lookup); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("%v %v: code %d, stderr %q, want 2 and %q", c.args, c.env, code, errb.String(), c.want)
		}
	}
}
