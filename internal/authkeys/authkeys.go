// Package authkeys creates the per-identity credentials of a local
// cluster started with auth on (`ringattn dev --auth`, `ringattn cluster
// --auth`): one nkey seed file per identity, and the NATS users (public
// nkey plus the permissions of its role, transport.Subjects) a server
// admits them as.
package authkeys

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ringattn/ringattn/pkg/transport"
)

// Credentials are the nkey seed files of a cluster's identities, in Dir
// (mode 0700; each file 0600). They are kept across restarts on the same
// directory.
type Credentials struct {
	Dir         string
	Coordinator string
	Admin       string
	// Workers maps a worker id to its seed file; Clients a tenant.
	Workers map[string]string
	Clients map[string]string
}

// Tenants returns the tenants with client credentials, sorted.
func (c *Credentials) Tenants() []string {
	var out []string
	for t := range c.Clients {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Setup creates (or loads) the credentials of every identity under dir
// — the coordinator(s), the admin, each worker id and each tenant's
// client — and returns them with the server's users: each identity's
// public nkey and the permissions of its role for tensor bucket bucket.
func Setup(dir string, subj transport.Subjects, bucket string, workers, tenants []string) (*Credentials, []transport.EmbeddedUser, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("credentials dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("credentials dir: %w", err)
	}
	creds := &Credentials{Dir: dir, Workers: map[string]string{}, Clients: map[string]string{}}
	var users []transport.EmbeddedUser
	add := func(file string, role transport.Role, id string) (string, error) {
		path := filepath.Join(dir, file)
		pub, err := transport.EnsureNKeySeed(path)
		if err != nil {
			return "", err
		}
		users = append(users, transport.EmbeddedUser{NKey: pub, Permissions: subj.BucketPermissions(role, id, bucket)})
		return path, nil
	}
	var err error
	if creds.Coordinator, err = add("coordinator.nk", transport.RoleCoordinator, ""); err != nil {
		return nil, nil, err
	}
	if creds.Admin, err = add("admin.nk", transport.RoleAdmin, ""); err != nil {
		return nil, nil, err
	}
	for _, w := range workers {
		if err := transport.ValidateName("worker id", w); err != nil {
			return nil, nil, fmt.Errorf("worker id %q: want 1..128 characters of [A-Za-z0-9_-]", w)
		}
		if creds.Workers[w], err = add(w+".nk", transport.RoleWorker, w); err != nil {
			return nil, nil, err
		}
	}
	for _, t := range tenants {
		if err := transport.ValidateJobTenant(t); err != nil || t == "" {
			return nil, nil, fmt.Errorf("tenant %q: want 1..128 characters of [A-Za-z0-9_-], not starting with \"_\"", t)
		}
		if creds.Clients[t], err = add("client-"+t+".nk", transport.RoleClient, t); err != nil {
			return nil, nil, err
		}
	}
	return creds, users, nil
}

// NATSConf renders users as a nats-server configuration authorization
// block: each admitted by its nkey, with its role's permissions
// (transport.Permissions.Conf).
func NATSConf(users []transport.EmbeddedUser) string {
	var b strings.Builder
	b.WriteString("authorization {\n  users = [\n")
	for _, u := range users {
		perm := strings.ReplaceAll(u.Permissions.Conf(), "\n", "\n    ")
		b.WriteString("    { nkey: " + strconv.Quote(u.NKey) + ", permissions: " + perm + " }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}
