package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestGenK8sCheck: -check fails on a stale file and writes nothing; a
// run writes the file, after which -check passes; a bad tenants file is
// refused naming its line.
func TestGenK8sCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tenants", "# example\nteam-a\n")
	write("permissions.conf", "# stale\n")
	err := run(dir, true)
	if err == nil || !strings.Contains(err.Error(), "stale") || !strings.Contains(err.Error(), "go generate") {
		t.Fatalf("-check on a stale file: %v, want an error saying how to regenerate", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "permissions.conf")); string(b) != "# stale\n" {
		t.Fatal("-check wrote the file")
	}
	if err := run(dir, false); err != nil {
		t.Fatal(err)
	}
	if err := run(dir, true); err != nil {
		t.Fatalf("-check after generating: %v", err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "permissions.conf"))
	if !strings.Contains(string(b), "TENANT_TEAM_A_PERMISSIONS = {") || !strings.Contains(string(b), "WORKER_PERMISSIONS = {") {
		t.Errorf("generated file lacks the team-a or worker variable:\n%s", b)
	}
	write("tenants", "team-a\n_admin\n")
	if err := run(dir, false); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("tenant _admin: %v, want an error naming line 2", err)
	}
}
