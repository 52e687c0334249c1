package authkeys

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/ringattn/ringattn/pkg/transport"
)

// TestAuthkeysSetupAndConf: Setup makes a seed (0600) per identity in a
// 0700 directory, keeps them across calls, refuses bad names, and
// NATSConf renders a configuration nats-server loads with one nkey user
// per identity carrying its role's permissions.
func TestAuthkeysSetupAndConf(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	subj := transport.DefaultConfig().Subjects()
	creds, users, err := Setup(dir, subj, "", []string{"worker-0", "worker-1"}, []string{"default", "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(users) != 6 {
		t.Fatalf("%d users, want 6 (coordinator, admin, 2 workers, 2 clients)", len(users))
	}
	if got := creds.Tenants(); !slices.Equal(got, []string{"default", "team-a"}) {
		t.Errorf("Tenants() = %v", got)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode: %v %v, want 0700", fi.Mode(), err)
	}
	if fi, err := os.Stat(creds.Workers["worker-1"]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("seed mode: %v %v, want 0600", fi.Mode(), err)
	}
	again, users2, err := Setup(dir, subj, "", []string{"worker-0", "worker-1"}, []string{"default", "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Clients["team-a"] != creds.Clients["team-a"] || users2[5].NKey != users[5].NKey {
		t.Errorf("a second Setup on the same directory made new identities")
	}
	for _, bad := range [][2][]string{{{"worker 0"}, nil}, {nil, {"_admin"}}, {nil, {""}}} {
		if _, _, err := Setup(dir, subj, "", bad[0], bad[1]); err == nil {
			t.Errorf("Setup(workers %q, tenants %q) succeeded", bad[0], bad[1])
		}
	}

	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("listen: \"127.0.0.1:-1\"\n"+NATSConf(users)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server does not load the configuration: %v\n%s", err, NATSConf(users))
	}
	if len(opts.Nkeys) != len(users) {
		t.Fatalf("%d nkey users loaded, want %d", len(opts.Nkeys), len(users))
	}
	for i, u := range opts.Nkeys {
		if u.Nkey != users[i].NKey {
			t.Errorf("user %d: nkey %s, want %s", i, u.Nkey, users[i].NKey)
		}
		want := users[i].Permissions
		if u.Permissions == nil || u.Permissions.Publish == nil || !slices.Equal(u.Permissions.Publish.Allow, want.Publish.Allow) ||
			!slices.Equal(u.Permissions.Publish.Deny, want.Publish.Deny) {
			t.Errorf("user %d: publish permissions %+v, want %+v", i, u.Permissions, want.Publish)
		}
		if (u.Permissions.Response != nil) != want.AllowResponses {
			t.Errorf("user %d: allow_responses %v, want %v", i, u.Permissions.Response, want.AllowResponses)
		}
	}
}
