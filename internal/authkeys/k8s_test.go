package authkeys

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/ringattn/ringattn/pkg/transport"
)

// k8sNATSDir is the Kubernetes base's NATS configuration directory.
const k8sNATSDir = "../../deploy/k8s/base/nats"

// TestAuthkeysK8sPermissionsFresh fails while the committed
// deploy/k8s/base/nats/permissions.conf differs from what the roles of
// pkg/transport and the tenants file generate: run go generate
// ./internal/authkeys.
func TestAuthkeysK8sPermissionsFresh(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(k8sNATSDir, "tenants"))
	if err != nil {
		t.Fatal(err)
	}
	tenants, err := ParseTenants(b)
	if err != nil {
		t.Fatal(err)
	}
	want, err := K8sPermissionsConf(tenants)
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(filepath.Join(k8sNATSDir, "permissions.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if string(have) != want {
		t.Fatalf("%s/permissions.conf is stale: run go generate ./internal/authkeys", k8sNATSDir)
	}
}

// TestAuthkeysK8sPermissionsLoad: nats-server loads the generated
// variables as users' permissions, each exactly its role's; the committed
// nats.conf gives every RINGATTN user one of them, and every variable is
// used.
func TestAuthkeysK8sPermissionsLoad(t *testing.T) {
	tenants := []string{"team-a", "Team_B"}
	conf, err := K8sPermissionsConf(tenants)
	if err != nil {
		t.Fatal(err)
	}
	users, err := K8sUsers(tenants)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var list []string
	for i, u := range users {
		list = append(list, "{ user: u"+string(rune('0'+i))+", password: pw, permissions: $"+u.Var+" }")
	}
	main := "listen: \"127.0.0.1:-1\"\ninclude \"permissions.conf\"\nauthorization { users: [\n" + strings.Join(list, "\n") + "\n] }\n"
	for name, text := range map[string]string{"permissions.conf": conf, "nats.conf": main} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatalf("nats-server does not load the generated permissions: %v", err)
	}
	if len(opts.Users) != len(users) {
		t.Fatalf("%d users loaded, want %d", len(opts.Users), len(users))
	}
	subj := transport.NewSubjects(transport.DefaultPrefix)
	for i, u := range opts.Users {
		want := subj.BucketPermissions(users[i].Role, users[i].ID, "")
		p := u.Permissions
		if p == nil || p.Publish == nil || p.Subscribe == nil ||
			!slices.Equal(p.Publish.Allow, want.Publish.Allow) || !slices.Equal(p.Publish.Deny, want.Publish.Deny) ||
			!slices.Equal(p.Subscribe.Allow, want.Subscribe.Allow) || (p.Response != nil) != want.AllowResponses {
			t.Errorf("%s ($%s): loaded %+v, want %+v", users[i].Who, users[i].Var, p, want)
		}
	}
	if users[1].ID != transport.AnyWorker || !slices.Contains(opts.Users[1].Permissions.Subscribe.Allow, "ringattn.worker.*.assign") {
		t.Errorf("worker: %+v, want any worker's assignments (one password for the Deployment)", opts.Users[1].Permissions)
	}

	// The committed nats.conf: each RINGATTN user names a variable, and
	// every variable of the committed permissions.conf is named.
	b, err := os.ReadFile(filepath.Join(k8sNATSDir, "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	pb, err := os.ReadFile(filepath.Join(k8sNATSDir, "permissions.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "{ user:") && !strings.Contains(line, "user: sys") && !strings.Contains(line, "permissions: $") {
			t.Errorf("nats.conf: user without permissions: %s", strings.TrimSpace(line))
		}
	}
	for _, line := range strings.Split(string(pb), "\n") {
		if v, _, ok := strings.Cut(line, " = {"); ok && !strings.Contains(string(b), "permissions: $"+v+" }") {
			t.Errorf("permissions.conf defines %s, which no user of nats.conf uses", v)
		}
	}

	for _, bad := range [][]string{{"default"}, {"_admin"}, {"a b"}, {"team-a", "team_a"}} {
		if _, err := K8sPermissionsConf(bad); err == nil {
			t.Errorf("K8sPermissionsConf(%q) succeeded", bad)
		}
	}
	if got, err := ParseTenants([]byte("# c\n\nteam-a\n  team-b  \n")); err != nil || !slices.Equal(got, []string{"team-a", "team-b"}) {
		t.Errorf("ParseTenants = %q, %v", got, err)
	}
	if _, err := ParseTenants([]byte("ok\n_bad\n")); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("ParseTenants(_bad) = %v, want an error naming line 2", err)
	}
}
