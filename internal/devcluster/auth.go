package devcluster

import (
	"context"
	"fmt"
	"slices"

	"github.com/ringattn/ringattn/internal/authkeys"
	"github.com/ringattn/ringattn/pkg/transport"
)

// Credentials are the nkey seed files of a dev cluster started with
// Config.Auth, one per identity, in DataDir/auth (see authkeys).
type Credentials = authkeys.Credentials

// authSetup creates (or loads) the credentials of every identity of the
// cluster under dir and returns them with the server's users.
func authSetup(dir string, subj transport.Subjects, bucket string, workers, tenants []string) (*Credentials, []transport.EmbeddedUser, error) {
	creds, users, err := authkeys.Setup(dir, subj, bucket, workers, tenants)
	if err != nil {
		return nil, nil, fmt.Errorf("devcluster: %w", err)
	}
	return creds, users, nil
}

// withCreds returns cfg authenticating with the seed file seed as
// identity id of role.
func withCreds(cfg transport.Config, seed string, role transport.Role, id string) transport.Config {
	cfg = cfg.ForRole(role, id)
	cfg.NKeySeedFile = seed
	return cfg
}

// tenantsOf is cfg.Tenants, deduplicated, with the default tenant first.
func tenantsOf(cfg Config) []string {
	out := []string{transport.DefaultTenant}
	for _, t := range cfg.Tenants {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// provision creates each tenant's tensor bucket (with cfg.TenantQuota)
// as the coordinator: clients may not create or resize theirs.
func (c *Cluster) provision(ctx context.Context, cfg Config) error {
	if c.creds == nil {
		return nil
	}
	nc, err := transport.Connect(c.roleConfig(transport.RoleCoordinator, ""), nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	for _, t := range c.creds.Tenants() {
		b := transport.TenantBucket(c.cfg.Bucket, t)
		if _, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: b, MaxBytes: cfg.TenantQuota}, nil); err != nil {
			return fmt.Errorf("devcluster: tensor bucket of tenant %s: %w", t, err)
		}
	}
	return nil
}

// roleConfig is how identity id of role in this process reaches the
// cluster: its credentials when Auth is on.
func (c *Cluster) roleConfig(role transport.Role, id string) transport.Config {
	cfg := c.cfg
	if c.creds == nil {
		if role == transport.RoleClient {
			cfg.Tenant = id
		}
		return cfg
	}
	seed := ""
	switch role {
	case transport.RoleCoordinator:
		seed = c.creds.Coordinator
	case transport.RoleAdmin:
		seed = c.creds.Admin
	case transport.RoleWorker:
		seed = c.creds.Workers[id]
	case transport.RoleClient:
		seed = c.creds.Clients[id]
	}
	return withCreds(cfg, seed, role, id)
}

// Credentials are the cluster's credentials (nil without Config.Auth).
func (c *Cluster) Credentials() *Credentials { return c.creds }

// ClientConfig is how a client of tenant in this process reaches the
// cluster (over in-memory pipes; with Auth, as that tenant's identity).
func (c *Cluster) ClientConfig(tenant string) transport.Config {
	return c.roleConfig(transport.RoleClient, tenant)
}

// AdminConfig is how the admin in this process reaches the cluster.
func (c *Cluster) AdminConfig() transport.Config {
	return c.roleConfig(transport.RoleAdmin, "")
}

// WorkerConfig is how worker id (one of the cluster's) in this process
// reaches the cluster (with Auth, as that worker's identity).
func (c *Cluster) WorkerConfig(id string) transport.Config {
	return c.roleConfig(transport.RoleWorker, id)
}
