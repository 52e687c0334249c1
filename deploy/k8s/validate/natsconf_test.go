package validate

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	corev1 "k8s.io/api/core/v1"
)

// testSecrets stands in for the Secret ringattn-nats-auth that prod expects
// the operator to create: every key gets a distinct value, so a password
// read from the wrong key fails to log in.
func testSecrets(name, key string) (string, bool) {
	if _, ok := TLSSecrets[name]; ok {
		return testTLSSecret(name, key)
	}
	if name != "ringattn-nats-auth" || !slices.Contains(natsAuthKeys, key) {
		return "", false
	}
	return "test-" + strings.TrimSuffix(key, "-password") + "-pw", true
}

// secretsOf returns the Secrets as the pods of inv would see them: the
// rendered ones (dev's example Secret) by their rendered name, the others
// from testSecrets.
func secretsOf(inv *Inventory) SecretLookup {
	return func(name, key string) (string, bool) {
		if o, ok := inv.find("Secret", name); ok {
			v, ok := o.Typed.(*corev1.Secret).Data[key]
			return string(v), ok
		}
		return testSecrets(name, key)
	}
}

// natsConfig writes the rendered NATS ConfigMap of inv to a directory laid
// out as the pod mounts it and returns the nats.conf path, the NATS
// container and its environment as the kubelet would build it for pod 0.
func natsConfig(t *testing.T, inv *Inventory) (string, *corev1.Container, map[string]string) {
	t.Helper()
	w, ok := inv.BinaryWorkload("nats-server")
	if !ok {
		t.Fatal("no workload runs nats-server")
	}
	c := &w.Template.Spec.Containers[0]
	cmd := c.Command
	i := slices.Index(cmd, "--config")
	if i < 0 || i+1 >= len(cmd) {
		t.Fatalf("nats command %v: want --config <file>", cmd)
	}
	confPath := cmd[i+1]
	var cmName string
	for _, m := range c.VolumeMounts {
		if m.MountPath == filepath.Dir(confPath) {
			for _, v := range w.Template.Spec.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil {
					cmName = v.ConfigMap.Name
				}
			}
		}
	}
	cmObj, ok := inv.find("ConfigMap", cmName)
	if !ok {
		t.Fatalf("the ConfigMap mounted at %s (%q) is not rendered", filepath.Dir(confPath), cmName)
	}
	dir := t.TempDir()
	for k, v := range cmObj.Typed.(*corev1.ConfigMap).Data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mountSecrets(t, c, dir, secretsOf(inv))
	_, env, err := ContainerEnv(c, Pod{Name: w.Obj.Name + "-0", Namespace: w.Obj.Namespace, IP: "127.0.0.1"}, secretsOf(inv))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, filepath.Base(confPath)), c, env
}

// parseNATS parses the configuration with the nats-server release the image
// runs, with the container's environment (NATS resolves $VARS from it).
func parseNATS(t *testing.T, conf string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server rejects the rendered configuration: %v", err)
	}
	return opts
}

// natsServerVersion is the version of the nats-server module this test
// parses with (go.mod of this module); the image tag must name the same
// release.
func natsServerVersion(t *testing.T) string {
	b, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "github.com/nats-io/nats-server/v2" {
			return f[1]
		}
	}
	t.Fatal("go.mod does not require github.com/nats-io/nats-server/v2")
	return ""
}

// TestManifestsNATSConfigParses parses each overlay's NATS configuration
// with nats-server's own parser (unknown keys, bad includes and unset
// variables fail) and checks it against the StatefulSet around it.
func TestManifestsNATSConfigParses(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			conf, c, env := natsConfig(t, inv)
			opts := parseNATS(t, conf, env)
			w, _ := inv.BinaryWorkload("nats-server")
			replicas := int(*w.Replicas)
			ports := containerPorts(w)

			if want := "nats:" + strings.TrimPrefix(natsServerVersion(t), "v") + "-alpine"; c.Image != want {
				t.Errorf("NATS image %q: want %q, the release whose parser validated this configuration", c.Image, want)
			}
			if opts.ServerName != env["POD_NAME"] {
				t.Errorf("server_name = %q, want the pod name %q", opts.ServerName, env["POD_NAME"])
			}
			if opts.Port != int(ports["client"]) || opts.HTTPPort != int(ports["monitor"]) {
				t.Errorf("listen %d / http %d: want the container ports client %d / monitor %d", opts.Port, opts.HTTPPort, ports["client"], ports["monitor"])
			}
			if opts.MaxPayload != 8<<20 {
				t.Errorf("max_payload = %d, want 8 MiB", opts.MaxPayload)
			}
			if !opts.JetStream {
				t.Fatal("JetStream is off: the tensor object store needs it")
			}
			mounts := map[string]string{}
			for _, m := range c.VolumeMounts {
				mounts[m.Name] = m.MountPath
			}
			if !strings.HasPrefix(opts.StoreDir, mounts["data"]+"/") {
				t.Errorf("JetStream store_dir %q is not on the data PVC (mounted at %q)", opts.StoreDir, mounts["data"])
			}
			pvc := w.STS.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]
			if opts.JetStreamMaxStore <= 0 || opts.JetStreamMaxStore >= pvc.Value() {
				t.Errorf("max_file_store = %d: want > 0 and below the PVC size %s", opts.JetStreamMaxStore, pvc.String())
			}
			if filepath.Dir(opts.PidFile) != mounts["pid"] {
				t.Errorf("pid_file %q is not on the pid volume %q that preStop reads", opts.PidFile, mounts["pid"])
			}
			pre := c.Lifecycle.PreStop.Exec.Command
			if !slices.Contains(pre, "ldm="+opts.PidFile) {
				t.Errorf("preStop %v does not signal lame duck mode to %s", pre, opts.PidFile)
			}
			if opts.LameDuckDuration <= 0 || int64(opts.LameDuckDuration.Seconds()) >= *w.Template.Spec.TerminationGracePeriodSeconds {
				t.Errorf("lame_duck_duration %v: want below terminationGracePeriodSeconds %d", opts.LameDuckDuration, *w.Template.Spec.TerminationGracePeriodSeconds)
			}
			exporter := w.Template.Spec.Containers[1]
			if u := exporter.Args[len(exporter.Args)-1]; u != fmt.Sprintf("http://localhost:%d/", opts.HTTPPort) {
				t.Errorf("exporter scrapes %q, want the monitoring port %d", u, opts.HTTPPort)
			}

			// Users: one per role and tenant, each password from its own
			// Secret key, each held to permissions (TestManifestsNATSPermissions
			// checks what they allow).
			users := map[string]*server.User{}
			for _, u := range opts.Users {
				users[u.Username] = u
				if u.Account != nil && u.Account.GetName() == "RINGATTN" && (u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil) {
					t.Errorf("user %s of RINGATTN has no publish and subscribe permissions: it could speak for any role", u.Username)
				}
			}
			for _, nu := range natsUsers {
				who := nu.name
				u, ok := users[who]
				if !ok {
					t.Errorf("no NATS user %q", who)
					continue
				}
				envName := "NATS_" + strings.ToUpper(strings.ReplaceAll(who, "-", "_")) + "_PASSWORD"
				if want := env[envName]; u.Password != want || want == "" {
					t.Errorf("user %s password %q: want the Secret key %s-password", who, u.Password, who)
				}
				if u.Account == nil || u.Account.GetName() != "RINGATTN" {
					t.Errorf("user %s: want account RINGATTN", who)
				}
			}
			if len(users) != len(natsUsers)+1 {
				t.Errorf("%d NATS users, want sys and %d (natsUsers)", len(users), len(natsUsers))
			}
			if opts.SystemAccount != "SYS" {
				t.Errorf("system_account = %q, want SYS", opts.SystemAccount)
			}
			// The binaries log in as those users.
			for _, bin := range []string{"ringattn-coordinator", "ringattn-worker"} {
				bw, _ := inv.BinaryWorkload(bin)
				_, benv, err := ContainerEnv(&bw.Template.Spec.Containers[0], Pod{Name: bw.Obj.Name + "-0", Namespace: ov.namespace}, secretsOf(inv))
				if err != nil {
					t.Fatal(err)
				}
				u, ok := users[benv["RINGATTN_NATS_USER"]]
				if !ok || u.Password != benv["RINGATTN_NATS_PASSWORD"] {
					t.Errorf("%s logs in as %q with a password that NATS does not have for that user", bin, benv["RINGATTN_NATS_USER"])
				}
			}

			// Cluster: routes to every ordinal DNS name, or none at all.
			if replicas == 1 {
				if opts.Cluster.Port != 0 || len(opts.Routes) != 0 {
					t.Errorf("one server but a cluster block (port %d, %d routes)", opts.Cluster.Port, len(opts.Routes))
				}
				return
			}
			if opts.Cluster.Name == "" || opts.Cluster.Port != int(ports["cluster"]) {
				t.Errorf("cluster name %q port %d: want a name and the container port %d", opts.Cluster.Name, opts.Cluster.Port, ports["cluster"])
			}
			var got, want []string
			for _, r := range opts.Routes {
				got = append(got, r.String())
			}
			for i := range replicas {
				u := url.URL{Scheme: "nats", Host: fmt.Sprintf("%s-%d.%s:%d", w.Obj.Name, i, w.STS.Spec.ServiceName, ports["cluster"])}
				want = append(want, u.String())
			}
			if !slices.Equal(got, want) {
				t.Errorf("routes %v, want one per replica %v", got, want)
			}
		})
	}
}

// TestManifestsNATSConfigTypoFails: a misspelled NATS option is caught by
// the same parser, so the configuration cannot rot silently.
func TestManifestsNATSConfigTypoFails(t *testing.T) {
	root := copyTree(t)
	breakFile(t, root, "base/nats/nats.conf", "max_payload: 8MB", "max_paylaod: 8MB")
	objs, err := Load(filepath.Join(root, "overlays", "dev"))
	if err != nil {
		t.Fatal(err)
	}
	conf, _, env := natsConfig(t, &Inventory{Objects: objs})
	for k, v := range env {
		t.Setenv(k, v)
	}
	_, err = server.ProcessConfigFile(conf)
	if err == nil || !strings.Contains(err.Error(), "max_paylaod") {
		t.Fatalf("misspelled max_payload: want an error naming it, got %v", err)
	}
	t.Logf("caught: %v", err)
}
