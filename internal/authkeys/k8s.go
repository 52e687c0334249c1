package authkeys

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"

	"github.com/ringattn/ringattn/pkg/transport"
)

//go:generate go run ./genk8s -dir ../../deploy/k8s/base/nats

// The Kubernetes base (deploy/k8s) configures nats-server by file, with
// passwords: its NATS users' permissions are generated here from the same
// roles (transport.Subjects.BucketPermissions) as `dev --auth` and
// `cluster --auth` use, into deploy/k8s/base/nats/permissions.conf, which
// nats.conf includes. The tenants with their own client user are listed,
// one a line, in deploy/k8s/base/nats/tenants.

// K8sUser is one NATS user of the Kubernetes base: the configuration
// variable holding its permissions, its role and id.
type K8sUser struct {
	// Var is the nats.conf variable of its permissions (without "$").
	Var  string
	Role transport.Role
	// ID is the worker id (transport.AnyWorker: every worker shares one
	// password) or the client's tenant.
	ID string
	// Who describes the user in the generated file.
	Who string
}

// K8sUsers returns the users of the Kubernetes base: the coordinator, the
// workers (one password for the whole Deployment, so transport.AnyWorker),
// the client of tenant "default" (the gateway, `ringattn` with the client
// password), the admin, and one client per entry of tenants.
func K8sUsers(tenants []string) ([]K8sUser, error) {
	users := []K8sUser{
		{"COORDINATOR_PERMISSIONS", transport.RoleCoordinator, "", "user coordinator: the coordinators"},
		{"WORKER_PERMISSIONS", transport.RoleWorker, transport.AnyWorker,
			"user worker: every worker pod (one password, so any worker id)"},
		{"CLIENT_PERMISSIONS", transport.RoleClient, transport.DefaultTenant,
			"user client: tenant \"default\" (the gateway, `ringattn` with the client password)"},
		{"ADMIN_PERMISSIONS", transport.RoleAdmin, "", "user admin: operators (every tenant's jobs and buckets)"},
	}
	seen := map[string]string{}
	for _, t := range tenants {
		if err := transport.ValidateJobTenant(t); err != nil || t == "" || t == transport.DefaultTenant {
			return nil, fmt.Errorf("tenant %q: want 1..128 characters of [A-Za-z0-9_-], not starting with \"_\", and not %q (user client)", t, transport.DefaultTenant)
		}
		v := K8sTenantVar(t)
		if prev, ok := seen[v]; ok {
			return nil, fmt.Errorf("tenants %q and %q: both would be the variable %s", prev, t, v)
		}
		seen[v] = t
		users = append(users, K8sUser{v, transport.RoleClient, t,
			fmt.Sprintf("user %s: tenant %q, bucket %q", t, t, transport.TenantBucket("", t))})
	}
	return users, nil
}

// K8sTenantVar is the nats.conf variable holding tenant t's permissions:
// TENANT_<T>_PERMISSIONS, t upper-cased with "-" as "_".
func K8sTenantVar(t string) string {
	return "TENANT_" + strings.ToUpper(strings.ReplaceAll(t, "-", "_")) + "_PERMISSIONS"
}

// K8sPermissionsConf renders permissions.conf of the Kubernetes base: one
// variable per user of K8sUsers(tenants), each the user's permissions
// block (transport.Permissions.Conf) under the default subject prefix and
// bucket.
func K8sPermissionsConf(tenants []string) (string, error) {
	users, err := K8sUsers(tenants)
	if err != nil {
		return "", err
	}
	subj := transport.NewSubjects(transport.DefaultPrefix)
	var b strings.Builder
	b.WriteString(`# GENERATED from pkg/transport's roles (Subjects.BucketPermissions) by
# internal/authkeys (K8sPermissionsConf): do not edit. Regenerate with
#   go generate ./internal/authkeys
# after changing the roles or the file "tenants"; deploy/k8s/check.sh and
# internal/authkeys's tests fail while this file is stale.
#
# Each variable is one NATS user's permissions, for the subject prefix
# "` + transport.DefaultPrefix + `" and the tensor bucket "` + transport.DefaultBucket + `"; nats.conf includes this
# file and gives each user its variable: permissions: $WORKER_PERMISSIONS.
`)
	for _, u := range users {
		p := subj.BucketPermissions(u.Role, u.ID, transport.DefaultBucket)
		fmt.Fprintf(&b, "\n# %s\n%s = %s\n", u.Who, u.Var, p.Conf())
	}
	return b.String(), nil
}

// ParseTenants reads a tenants file: one tenant a line; blank lines and
// lines starting with "#" are skipped.
func ParseTenants(b []byte) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := transport.ValidateJobTenant(line); err != nil {
			return nil, fmt.Errorf("line %d: tenant %q: want 1..128 characters of [A-Za-z0-9_-], not starting with \"_\"", n, line)
		}
		out = append(out, line)
	}
	return out, sc.Err()
}
