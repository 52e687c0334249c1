package localcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/ringattn/ringattn/internal/authkeys"
	"github.com/ringattn/ringattn/internal/certs"
	"github.com/ringattn/ringattn/pkg/transport"
)

// RaftServerName is the name every coordinator's Raft certificate of a
// cluster with Config.Auth carries, and the one the coordinators verify
// (--raft-tls-server-name).
const RaftServerName = "coordinators.ringattn.local"

// RaftTLS are the Raft mutual TLS files of a cluster with Config.Auth,
// under Dir/tls: the CA every coordinator trusts and each coordinator's
// certificate and key (by name).
type RaftTLS struct {
	CA, CAKey  string
	Cert, Key  map[string]string
	ServerName string
}

// Credentials are the cluster's nkey seed files (nil without
// Config.Auth).
func (c *Cluster) Credentials() *authkeys.Credentials { return c.creds }

// RaftTLS are the cluster's Raft TLS files (nil without Config.Auth).
func (c *Cluster) RaftTLS() *RaftTLS { return c.raftTLS }

// tenants is Config.Tenants, deduplicated, with the default tenant first.
func (c *Cluster) tenants() []string {
	out := []string{transport.DefaultTenant}
	for _, t := range c.cfg.Tenants {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// setupAuth creates (or loads) the credentials of the coordinators, the
// admin, workers 0..n-1 and each tenant's client in Dir/auth, and the
// NATS server's users.
func (c *Cluster) setupAuth(workers []string) error {
	def := transport.DefaultConfig()
	creds, users, err := authkeys.Setup(filepath.Join(c.Dir, "auth"), def.Subjects(), def.Bucket, workers, c.tenants())
	if err != nil {
		return fmt.Errorf("localcluster: %w", err)
	}
	c.creds, c.natsUsers = creds, users
	return nil
}

// setupRaftTLS creates (or loads) a CA and a certificate per coordinator
// in Dir/tls.
func (c *Cluster) setupRaftTLS(lay *layout) error {
	dir := filepath.Join(c.Dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	t := &RaftTLS{CA: filepath.Join(dir, "ca.pem"), CAKey: filepath.Join(dir, "ca-key.pem"),
		Cert: map[string]string{}, Key: map[string]string{}, ServerName: RaftServerName}
	ca, err := certs.LoadCA(t.CA, t.CAKey)
	if err != nil {
		if _, serr := os.Stat(t.CA); !errors.Is(serr, os.ErrNotExist) {
			return fmt.Errorf("localcluster: raft CA: %w", err)
		}
		if ca, err = certs.NewCA(certs.Request{CommonName: "ringattn localcluster raft CA"}); err != nil {
			return err
		}
		if err := ca.WriteFiles(t.CA, t.CAKey); err != nil {
			return err
		}
	}
	for _, lc := range lay.Coordinators {
		cert, key := filepath.Join(dir, lc.Name+".pem"), filepath.Join(dir, lc.Name+"-key.pem")
		t.Cert[lc.Name], t.Key[lc.Name] = cert, key
		if _, err := os.Stat(cert); err == nil {
			continue
		}
		leaf, err := IssueRaftCert(ca, lc.Name)
		if err != nil {
			return err
		}
		if err := leaf.WriteFiles(cert, key); err != nil {
			return err
		}
	}
	c.raftTLS = t
	return nil
}

// IssueRaftCert issues coordinator name's Raft certificate (server and
// client, for RaftServerName and 127.0.0.1) from ca.
func IssueRaftCert(ca *certs.CA, name string) (*certs.Leaf, error) {
	return ca.Issue(certs.Request{CommonName: name, DNSNames: []string{RaftServerName, name},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Client: true})
}

// natsConf is the NATS server's configuration file.
func (c *Cluster) natsConf(port, mon int, dir string) string {
	// The same limits as transport.StartEmbedded: 8 MiB payloads, JetStream
	// on files.
	conf := fmt.Sprintf(`server_name: localcluster-nats
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
max_payload: %d
jetstream {
  store_dir: %q
}
%s
`, port, mon, transport.DefaultMaxPayload, dir, c.cfg.NATSExtraConf)
	if c.cfg.Auth {
		conf += authkeys.NATSConf(c.natsUsers)
	}
	return conf
}

// ensureWorkerIdentity gives worker name an identity of its own (with
// Config.Auth): a new seed, added to the NATS server's users by rewriting
// its configuration and reloading it (SIGHUP), waiting until the server
// reports the reload.
func (c *Cluster) ensureWorkerIdentity(ctx context.Context, name string) error {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if _, ok := c.creds.Workers[name]; ok {
		return nil
	}
	workers := []string{name}
	for w := range c.creds.Workers {
		workers = append(workers, w)
	}
	slices.Sort(workers)
	before, err := c.natsConfigTime(ctx)
	if err != nil {
		return err
	}
	if err := c.setupAuth(workers); err != nil {
		return err
	}
	if err := os.WriteFile(c.natsConfPath, []byte(c.natsConf(c.natsPort, c.natsMonPort, c.NATS.DataDir)), 0o600); err != nil {
		return err
	}
	if err := c.NATS.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("localcluster: reload NATS for %s's identity: %w", name, err)
	}
	return c.poll(ctx, "NATS reloading its users for "+name, func(ctx context.Context) error {
		now, err := c.natsConfigTime(ctx)
		if err != nil {
			return err
		}
		if !now.After(before) {
			return errors.New("configuration not reloaded yet")
		}
		return nil
	})
}

// natsConfigTime is when the NATS server last loaded its configuration
// (/varz config_load_time).
func (c *Cluster) natsConfigTime(ctx context.Context) (time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.natsMon+"/varz", nil)
	if err != nil {
		return time.Time{}, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return time.Time{}, err
	}
	var v struct {
		ConfigLoadTime time.Time `json:"config_load_time"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return time.Time{}, fmt.Errorf("NATS /varz: %w", err)
	}
	return v.ConfigLoadTime, nil
}

// provision creates each tenant's tensor bucket (with TenantQuota) as the
// coordinator: clients may not create or resize theirs.
func (c *Cluster) provision(ctx context.Context) error {
	nc, err := transport.Connect(c.CoordinatorConfig("localcluster-provision"), nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	base := transport.DefaultConfig().Bucket
	for _, t := range c.creds.Tenants() {
		b := transport.TenantBucket(base, t)
		if _, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: b, MaxBytes: c.cfg.TenantQuota}, nil); err != nil {
			return fmt.Errorf("localcluster: tensor bucket of tenant %s: %w", t, err)
		}
	}
	return nil
}

// withSeed returns cfg authenticating as identity id of role with seed
// (without Config.Auth, cfg as a client of tenant id for RoleClient).
func (c *Cluster) withSeed(cfg transport.Config, role transport.Role, id, seed string) transport.Config {
	if c.creds == nil {
		if role == transport.RoleClient {
			cfg.Tenant = id
		}
		return cfg
	}
	cfg = cfg.ForRole(role, id)
	cfg.NKeySeedFile = seed
	return cfg
}

// ClientConfig is how a client of tenant reaches the cluster (with
// Config.Auth, as that tenant's identity), with connection name name.
func (c *Cluster) ClientConfig(tenant, name string) transport.Config {
	seed := ""
	if c.creds != nil {
		seed = c.creds.Clients[tenant]
	}
	return c.withSeed(c.plainConfig(name), transport.RoleClient, tenant, seed)
}

// AdminConfig is how the admin reaches the cluster (with Config.Auth;
// without it, a client of the default tenant).
func (c *Cluster) AdminConfig(name string) transport.Config {
	if c.creds == nil {
		return c.plainConfig(name)
	}
	return c.withSeed(c.plainConfig(name), transport.RoleAdmin, "", c.creds.Admin)
}

// CoordinatorConfig is how the coordinators reach the cluster.
func (c *Cluster) CoordinatorConfig(name string) transport.Config {
	if c.creds == nil {
		return c.plainConfig(name)
	}
	return c.withSeed(c.plainConfig(name), transport.RoleCoordinator, "", c.creds.Coordinator)
}

// WorkerConfig is how worker id reaches the cluster (with Config.Auth,
// as that worker's identity, if it has one).
func (c *Cluster) WorkerConfig(id, name string) transport.Config {
	if c.creds == nil {
		return c.plainConfig(name).ForRole(transport.RoleWorker, id)
	}
	c.authMu.Lock()
	seed := c.creds.Workers[id]
	c.authMu.Unlock()
	return c.withSeed(c.plainConfig(name), transport.RoleWorker, id, seed)
}

// seedArgs are the --nats-nkey arguments of a process using seed.
func seedArgs(seed string) []string {
	if seed == "" {
		return nil
	}
	return []string{"--nats-nkey", seed}
}

// raftTLSArgs are coordinator name's --raft-tls-* arguments.
func (c *Cluster) raftTLSArgs(name string) []string {
	t := c.raftTLS
	if t == nil {
		return nil
	}
	return []string{"--raft-tls-ca", t.CA, "--raft-tls-cert", t.Cert[name], "--raft-tls-key", t.Key[name],
		"--raft-tls-server-name", t.ServerName}
}
