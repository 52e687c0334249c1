package validate

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// certManagerOptions: with overlays/cert-manager the TLS Secrets are
// written by its Certificates; only the passwords are the operator's.
func certManagerOptions() CheckOptions {
	return CheckOptions{ExternalSecrets: map[string][]string{"ringattn-nats-auth": natsAuthKeys, "ringattn-gateway": {"token"}}}
}

// TestTLSOverlays: every overlay, and overlays/cert-manager, has TLS on
// for NATS clients, NATS routes (when clustered) and Raft, with every
// certificate file coming from a Secret that exists with that key.
func TestTLSOverlays(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			if err := CheckTLS(inv.Objects, ov.options()); err != nil {
				t.Fatalf("overlay %s:\n%v", ov.name, err)
			}
		})
	}
	t.Run("cert-manager", func(t *testing.T) {
		objs, err := Load(filepath.Join("..", "overlays", "cert-manager"))
		if err != nil {
			t.Fatal(err)
		}
		// The Secrets the Certificates write count as present.
		if err := Check(objs, certManagerOptions()); err != nil {
			t.Fatalf("cert-manager:\n%v", err)
		}
		if err := CheckTLS(objs, certManagerOptions()); err != nil {
			t.Fatalf("cert-manager:\n%v", err)
		}
		issued := map[string]bool{}
		for _, o := range objs {
			if c, ok := o.Typed.(*Certificate); ok {
				issued[c.Spec.SecretName] = true
			}
		}
		for s := range TLSSecrets {
			if !issued[s] {
				t.Errorf("no Certificate writes the Secret %s", s)
			}
		}
	})
}

// TestTLSVolumeNames pins the TLS volume names the local stand-ins use
// (tlsVolumeSecrets) to the Secrets the manifests mount under them.
func TestTLSVolumeNames(t *testing.T) {
	for _, ov := range overlays {
		inv := load(t, ov)
		seen := map[string]bool{}
		for _, w := range inv.Workloads() {
			for _, v := range w.Template.Spec.Volumes {
				want, ok := tlsVolumeSecrets[v.Name]
				if v.Secret == nil {
					continue
				}
				if _, tlsSecret := TLSSecrets[v.Secret.SecretName]; tlsSecret && (!ok || want.secret != v.Secret.SecretName) {
					t.Errorf("%s %s: volume %q mounts %s; the tests expect it under the name that maps to it in tlsVolumeSecrets", ov.name, w.Obj.ID(), v.Name, v.Secret.SecretName)
				}
				seen[v.Secret.SecretName] = true
			}
		}
		for s := range TLSSecrets {
			if !seen[s] {
				t.Errorf("%s: no workload mounts the Secret %s", ov.name, s)
			}
		}
	}
}

// TestTLSCheckCatches: each way of turning TLS off or losing a Secret
// reference is reported by CheckTLS, naming what is wrong.
func TestTLSCheckCatches(t *testing.T) {
	cases := []struct {
		name, overlay, file, old, new, want string
	}{
		{"client TLS off", "dev", "base/nats/nats.conf", "tls {\n  cert_file", "tls_off {\n  cert_file", "client port (nats.conf): no tls { } block"},
		{"route TLS off", "prod", "components/ha/cluster.conf", "  tls {", "  tls_off {", "routes (cluster.conf): no tls { } block"},
		{"routes not verified", "prod", "components/ha/cluster.conf", "verify: true", "verify: false", "tls.verify: want true"},
		{"NATS key not from a Secret", "dev", "base/nats/nats.conf", `key_file: "/etc/nats-tls/tls.key"`, `key_file: "/etc/nats/tls.key"`, "not a Secret"},
		{"NATS Secret missing", "prod", "base/nats/statefulset.yaml", "secretName: ringattn-nats-tls", "secretName: ringattn-nats-tlz", `Secret "ringattn-nats-tlz" is neither rendered`},
		{"worker plain URL", "dev", "base/worker/deployment.yaml", "--nats=tls://", "--nats=nats://", "want scheme tls://"},
		{"gateway without CA", "prod", "base/gateway/deployment.yaml", "name: RINGATTN_NATS_TLS_CA", "name: RINGATTN_NATS_TLS_CA_OFF", "RINGATTN_NATS_TLS_CA (or --nats-tls-ca): missing"},
		{"CA item missing", "prod", "base/worker/deployment.yaml", "path: ca.crt", "path: ca.pem", "projects no item"},
		{"raft key missing", "prod", "base/coordinator/statefulset.yaml", "name: RINGATTN_RAFT_TLS_KEY", "name: RINGATTN_RAFT_TLS_KEY_OFF", "RINGATTN_RAFT_TLS_KEY (or --raft-tls-key): missing"},
		{"raft Secret key wrong", "dev", "base/coordinator/statefulset.yaml", "value: /etc/ringattn/raft-tls/tls.key", "value: /etc/ringattn/raft-tls/key.pem", `has no key "key.pem"`},
		{"raft server name", "prod", "base/coordinator/statefulset.yaml", "value: ringattn-coordinator-raft", "value: raft", "RINGATTN_RAFT_TLS_SERVER_NAME"},
		{"raft on no mount", "prod", "base/coordinator/statefulset.yaml", "mountPath: /etc/ringattn/raft-tls", "mountPath: /etc/ringattn/raft", "on no volume mount"},
		{"dev CA mismatch", "dev", "overlays/dev/kustomization.yaml", "- ca.crt=dev-only-tls/ca.crt\n- name: ringattn-raft-tls", "- ca.crt=dev-only-tls/raft.crt\n- name: ringattn-raft-tls", "ca.crt differs"},
		{"dev cert for the wrong name", "dev", "overlays/dev/kustomization.yaml", "tls.crt=dev-only-tls/raft.crt", "tls.crt=dev-only-tls/nats.crt", `does not verify as "ringattn-coordinator-raft"`},
		{"cert-manager raft name", "cert-manager", "components/cert-manager/certificates.yaml", "  - ringattn-coordinator-raft\n", "", `none matches "ringattn-coordinator-raft"`},
		{"cert-manager usage", "cert-manager", "components/cert-manager/certificates.yaml", "  - client auth\n  duration: 2160h # 90 days", "  duration: 2160h # 90 days", `want "client auth"`},
		{"cert-manager issuer", "cert-manager", "components/cert-manager/certificates.yaml", "secretName: ringattn-ca\n---\n# NATS", "secretName: ringattn-ca-gone\n---\n# NATS", `spec.ca.secretName "ringattn-ca-gone"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := copyTree(t)
			breakFile(t, root, c.file, c.old, c.new)
			objs, err := Load(filepath.Join(root, "overlays", c.overlay))
			if err != nil {
				t.Fatal(err)
			}
			opts := certManagerOptions()
			if c.overlay != "cert-manager" {
				for _, ov := range overlays {
					if ov.name == c.overlay {
						opts = ov.options()
					}
				}
			}
			err = CheckTLS(objs, opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want an error containing %q, got:\n%v", c.want, err)
			}
			if !errors.Is(err, ErrCheck) {
				t.Errorf("error does not wrap ErrCheck: %v", err)
			}
		})
	}
}

// TestTLSNATSConfig parses each overlay's NATS configuration with
// nats-server (its certificates in place) and checks what it turned on:
// TLS 1.3 on the client port, verified mutual TLS on the routes.
func TestTLSNATSConfig(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			conf, _, env := natsConfig(t, inv)
			opts := parseNATS(t, conf, env)
			if opts.TLSConfig == nil {
				t.Fatal("client port: TLS off")
			}
			if opts.TLSConfig.MinVersion != tls.VersionTLS13 {
				t.Errorf("client port: min TLS version %x, want 1.3", opts.TLSConfig.MinVersion)
			}
			if opts.AllowNonTLS {
				t.Error("client port: allow_non_tls is on")
			}
			if ov.nats > 1 {
				ct := opts.Cluster.TLSConfig
				if ct == nil {
					t.Fatal("routes: TLS off")
				}
				if ct.ClientAuth != tls.RequireAndVerifyClientCert {
					t.Errorf("routes: client auth %v, want RequireAndVerifyClientCert", ct.ClientAuth)
				}
			}
		})
	}
}

// TestTLSNATSRefusesPlaintext: nats-server from the rendered configuration
// refuses a client without TLS and one that does not trust its CA, and
// accepts one with the CA the pods mount.
func TestTLSNATSRefusesPlaintext(t *testing.T) {
	inv := load(t, overlays[0])
	s := startNATS(t, inv)
	pw, _ := secretsOf(inv)("ringattn-nats-auth", "client-password")
	user := nats.UserInfo("client", pw)
	if nc, err := nats.Connect(s.ClientURL(), user, nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a plaintext client connected")
	}
	other := &tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
	if nc, err := nats.Connect(s.ClientURL(), user, nats.Secure(other), nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a client not trusting the CA connected")
	}
	old := &tls.Config{MaxVersion: tls.VersionTLS12, MinVersion: tls.VersionTLS12}
	if nc, err := nats.Connect(s.ClientURL(), user, nats.Secure(old), nats.RootCAs(natsCAFile(t, inv)), nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Fatal("a TLS 1.2 client connected")
	}
	nc, err := nats.Connect(s.ClientURL(), user, nats.RootCAs(natsCAFile(t, inv)), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("client with the mounted CA: %v", err)
	}
	if !nc.TLSRequired() {
		t.Error("server does not require TLS")
	}
	cs, err := nc.TLSConnectionState()
	if err != nil || cs.Version != tls.VersionTLS13 {
		t.Errorf("connection state %v %x, want TLS 1.3", err, cs.Version)
	}
	nc.Close()
}

// TestTLSGenCerts runs gen-certs.sh and verifies what it made with Go's
// own x509: the names peers verify, both usages, key permissions, and that
// a second run reuses the CA and renews the leaves.
func TestTLSGenCerts(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed: gen-certs.sh needs it")
	}
	dir := filepath.Join(t.TempDir(), "pki")
	run := func(args ...string) (string, error) {
		cmd := exec.Command("bash", append([]string{"../gen-certs.sh"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("-n", "team-a", "--out", dir, "--days", "30"); err != nil {
		t.Fatalf("gen-certs.sh: %v\n%s", err, out)
	}
	read := func(name string) *x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		p, _ := pem.Decode(b)
		if p == nil {
			t.Fatalf("%s: no PEM", name)
		}
		c, err := x509.ParseCertificate(p.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return c
	}
	ca := read("ca.crt")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for file, names := range map[string][]string{
		"nats.crt": {"ringattn-nats", "ringattn-nats.team-a.svc.cluster.local", "ringattn-nats-2.ringattn-nats-headless", "localhost", "127.0.0.1"},
		"raft.crt": {RaftTLSServerName, "ringattn-coordinator-1.ringattn-coordinator-headless.team-a.svc.cluster.local"},
	} {
		c := read(file)
		for _, n := range names {
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: n, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
					t.Errorf("%s as %s (usage %v): %v", file, n, u, err)
				}
			}
		}
		if d := c.NotAfter.Sub(c.NotBefore); d < 29*24*time.Hour || d > 31*24*time.Hour {
			t.Errorf("%s valid for %v, want 30 days", file, d)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: "elsewhere.example"}); err == nil {
			t.Errorf("%s verifies for a name it was not issued for", file)
		}
		if _, err := tls.LoadX509KeyPair(filepath.Join(dir, file), filepath.Join(dir, strings.TrimSuffix(file, ".crt")+".key")); err != nil {
			t.Errorf("%s: key pair: %v", file, err)
		}
	}
	for _, k := range []string{"ca.key", "nats.key", "raft.key"} {
		st, err := os.Stat(filepath.Join(dir, k))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", k, st.Mode().Perm())
		}
	}
	if !ca.IsCA || !ca.MaxPathLenZero {
		t.Errorf("CA: IsCA %v, path length zero %v", ca.IsCA, ca.MaxPathLenZero)
	}

	// Rotation: the CA stays, the leaves are new.
	oldRaft := read("raft.crt")
	if out, err := run("-n", "team-a", "--out", dir); err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if !read("ca.crt").Equal(ca) {
		t.Error("second run replaced the CA")
	}
	if read("raft.crt").SerialNumber.Cmp(oldRaft.SerialNumber) == 0 {
		t.Error("second run kept the raft certificate")
	}
	for _, bad := range [][]string{{}, {"--out", dir, "--days", "x"}, {"--out", dir, "-n", "Bad_NS"}, {"--bogus"}} {
		if out, err := run(bad...); err == nil {
			t.Errorf("gen-certs.sh %v succeeded:\n%s", bad, out)
		} else if !strings.Contains(out, "gen-certs.sh:") {
			t.Errorf("gen-certs.sh %v: message %q does not say who complains", bad, out)
		}
	}
}

// TestTLSCoordinatorHasRaftTLSFlags: the coordinator binary understands
// the Raft TLS settings the StatefulSet passes (RINGATTN_RAFT_TLS_* are
// the environment forms of these flags); without them the manifests would
// ask for mutual TLS and silently get plain TCP.
func TestTLSCoordinatorHasRaftTLSFlags(t *testing.T) {
	bin := buildBinary(t, "coordinator")
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	for _, f := range []string{"-raft-tls-ca", "-raft-tls-cert", "-raft-tls-key", "-raft-tls-server-name"} {
		if !strings.Contains(string(out), f+" ") && !strings.Contains(string(out), f+"\n") {
			t.Errorf("ringattn-coordinator --help does not list %s", f)
		}
	}
}
