package validate

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// natsAuthKeys are the keys of the Secret ringattn-nats-auth that prod and
// keda expect the operator to create (README, "Credentials").
var natsAuthKeys = []string{"sys-password", "coordinator-password", "worker-password", "client-password", "admin-password", "team-a-password"}

// overlay is one deployable overlay and what it must render.
type overlay struct {
	name                          string
	namespace                     string
	coordinators, nats            int32
	workers                       int32 // 0: left to an autoscaler
	hpa, keda, monitoring, secret bool
}

var overlays = []overlay{
	{name: "dev", namespace: "ringattn-dev", coordinators: 1, nats: 1, workers: 2, secret: true},
	{name: "prod", namespace: "ringattn", coordinators: 3, nats: 3, hpa: true, monitoring: true},
	{name: "keda", namespace: "ringattn", coordinators: 3, nats: 3, keda: true, monitoring: true},
}

func (ov overlay) dir() string { return filepath.Join("..", "overlays", ov.name) }

func (ov overlay) options() CheckOptions {
	if ov.secret {
		return CheckOptions{}
	}
	ext := map[string][]string{"ringattn-nats-auth": natsAuthKeys, "ringattn-gateway": {"token"}}
	maps.Copy(ext, TLSSecrets)
	return CheckOptions{ExternalSecrets: ext}
}

// load renders, decodes and checks an overlay, failing the test on any
// error.
func load(t *testing.T, ov overlay) *Inventory {
	t.Helper()
	objs, err := Load(ov.dir())
	if err != nil {
		t.Fatalf("overlay %s: %v", ov.name, err)
	}
	if err := Check(objs, ov.options()); err != nil {
		t.Fatalf("overlay %s:\n%v", ov.name, err)
	}
	return &Inventory{Objects: objs}
}

func count[T any](inv *Inventory) int { return len(Typed[T](inv)) }

func TestManifestsOverlaysRenderAndDecodeStrictly(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			kinds := map[string]int{}
			for _, o := range inv.Objects {
				kinds[o.Kind]++
				if o.Namespace != ov.namespace && o.Kind != "Namespace" {
					t.Errorf("%s: namespace %q, want %q", o.ID(), o.Namespace, ov.namespace)
				}
			}
			t.Logf("%s: %d objects: %v", ov.name, len(inv.Objects), kinds)

			replicas := func(binary string) int32 {
				w, ok := inv.BinaryWorkload(binary)
				if !ok {
					t.Fatalf("no workload runs %s", binary)
				}
				if w.Replicas == nil {
					return 0
				}
				return *w.Replicas
			}
			if got := replicas("ringattn-coordinator"); got != ov.coordinators {
				t.Errorf("coordinators = %d, want %d", got, ov.coordinators)
			}
			if got := replicas("nats-server"); got != ov.nats {
				t.Errorf("NATS servers = %d, want %d", got, ov.nats)
			}
			if got := replicas("ringattn-worker"); got != ov.workers {
				t.Errorf("worker replicas = %d, want %d (0: owned by the autoscaler)", got, ov.workers)
			}
			if got, want := count[*autoscalingv2.HorizontalPodAutoscaler](inv), b2i(ov.hpa); got != want {
				t.Errorf("HorizontalPodAutoscalers = %d, want %d", got, want)
			}
			if got, want := count[*ScaledObject](inv), b2i(ov.keda); got != want {
				t.Errorf("ScaledObjects = %d, want %d", got, want)
			}
			if got, want := count[*ServiceMonitor](inv), 3*b2i(ov.monitoring); got != want {
				t.Errorf("ServiceMonitors = %d, want %d", got, want)
			}
			secrets := Typed[*corev1.Secret](inv)
			if !ov.secret && len(secrets) > 0 {
				t.Errorf("overlay %s renders %d Secrets: credentials must not be committed for it", ov.name, len(secrets))
			}
			if ov.secret {
				wantKeys := map[string][]string{"ringattn-nats-auth": natsAuthKeys, "ringattn-gateway": {"token"}}
				maps.Copy(wantKeys, TLSSecrets)
				if len(secrets) != len(wantKeys) {
					t.Fatalf("dev renders %d Secrets, want the examples %v", len(secrets), slices.Sorted(maps.Keys(wantKeys)))
				}
				for _, sec := range secrets {
					var keys []string
					for k := range sec.Data {
						keys = append(keys, k)
					}
					slices.Sort(keys)
					want := slices.Sorted(slices.Values(wantKeys[sec.Name]))
					if !slices.Equal(keys, want) {
						t.Errorf("dev Secret %s keys %v, want %v (the keys prod expects)", sec.Name, keys, want)
					}
					for k, v := range sec.Data {
						if _, tls := TLSSecrets[sec.Name]; tls {
							continue // certificates: CheckTLS verifies them; the directory says dev-only-tls
						}
						if !strings.HasPrefix(string(v), "dev-only-") {
							t.Errorf("dev Secret %s key %s does not say it is a dev-only example", sec.Name, k)
						}
					}
				}
			}
		})
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestManifestsNetworkReachability asks the rendered NetworkPolicies who
// may open which port, as the API server's semantics define it.
func TestManifestsNetworkReachability(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			pols := Typed[*networkingv1.NetworkPolicy](inv)
			pod := func(binary string) map[string]string {
				w, ok := inv.BinaryWorkload(binary)
				if !ok {
					t.Fatalf("no workload runs %s", binary)
				}
				return w.Template.Labels
			}
			ns := ov.namespace
			nsLabels := map[string]string{"kubernetes.io/metadata.name": ns}
			local := func(lbls map[string]string) Peer {
				return Peer{Labels: lbls, Namespace: ns, NamespaceLabels: nsLabels}
			}
			var (
				coord, worker, natsPod = pod("ringattn-coordinator"), pod("ringattn-worker"), pod("nats-server")
				client                 = local(map[string]string{"ringattn.io/nats-client": "true", "app": "notebook"})
				stranger               = local(map[string]string{"app": "something-else"})
				prometheus             = Peer{Labels: map[string]string{"app.kubernetes.io/name": "prometheus"}, Namespace: "monitoring",
					NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}}
				otherNSPrometheus = Peer{Labels: map[string]string{"app.kubernetes.io/name": "prometheus"}, Namespace: "elsewhere",
					NamespaceLabels: map[string]string{"kubernetes.io/metadata.name": "elsewhere"}}
			)
			cases := []struct {
				name   string
				target map[string]string
				port   int
				peer   Peer
				want   bool
			}{
				{"coordinator->nats client port", natsPod, 4222, local(coord), true},
				{"worker->nats client port", natsPod, 4222, local(worker), true},
				{"labelled client->nats client port", natsPod, 4222, client, true},
				{"unlabelled pod->nats client port", natsPod, 4222, stranger, false},
				{"prometheus->nats client port", natsPod, 4222, prometheus, false},
				{"nats->nats cluster port", natsPod, 6222, local(natsPod), true},
				{"worker->nats cluster port", natsPod, 6222, local(worker), false},
				{"client->nats cluster port", natsPod, 6222, client, false},
				{"prometheus->nats exporter", natsPod, 7777, prometheus, true},
				{"prometheus elsewhere->nats exporter", natsPod, 7777, otherNSPrometheus, false},
				{"worker->nats exporter", natsPod, 7777, local(worker), false},
				{"client->nats monitor port", natsPod, 8222, client, false},
				{"coordinator->coordinator raft", coord, 7000, local(coord), true},
				{"worker->coordinator raft", coord, 7000, local(worker), false},
				{"prometheus->coordinator metrics", coord, 8080, prometheus, true},
				{"client->coordinator http", coord, 8080, client, false},
				{"worker->coordinator http", coord, 8080, local(worker), false},
				{"prometheus->worker metrics", worker, 9090, prometheus, true},
				{"coordinator->worker metrics", worker, 9090, local(coord), false},
				{"stranger->worker metrics", worker, 9090, stranger, false},
			}
			for _, c := range cases {
				if got := Reachable(pols, ns, c.target, c.port, c.peer); got != c.want {
					t.Errorf("%s (port %d): reachable = %v, want %v", c.name, c.port, got, c.want)
				}
			}
		})
	}
}

// copyTree copies the kustomize tree (base, components, overlays) into a
// temporary directory so a test can break one file.
func copyTree(t *testing.T) string {
	t.Helper()
	dst := t.TempDir()
	for _, dir := range []string{"base", "components", "overlays"} {
		src := filepath.Join("..", dir)
		err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel("..", p)
			if err != nil {
				return err
			}
			if d.IsDir() {
				return os.MkdirAll(filepath.Join(dst, rel), 0o755)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// breakFile replaces old (which must occur) by new in the copied file.
func breakFile(t *testing.T, root, file, old, new string) {
	t.Helper()
	p := filepath.Join(root, file)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s does not contain %q", file, old)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestManifestsMisspelledFieldFails proves the strict decoding catches what
// a lenient `kubectl apply` would silently drop: each case misspells one
// field in a copy of the tree, renders the overlay and expects a decode
// error naming the field.
func TestManifestsMisspelledFieldFails(t *testing.T) {
	cases := []struct {
		overlay, file, old, new, field string
	}{
		{"dev", "base/coordinator/statefulset.yaml", "        readinessProbe:", "        readynessProbe:", "readynessProbe"},
		{"dev", "base/worker/deployment.yaml", "      terminationGracePeriodSeconds: 90", "      terminationGracePeriodSecond: 90", "terminationGracePeriodSecond"},
		{"dev", "base/networkpolicies.yaml", "      podSelector:\n        matchLabels:\n          app.kubernetes.io/name: prometheus", "      podSelector:\n        matchLabel:\n          app.kubernetes.io/name: prometheus", "matchLabel"},
		{"prod", "components/hpa/hpa.yaml", "        averageValue: \"1\"", "        avgValue: \"1\"", "avgValue"},
		{"prod", "components/monitoring/servicemonitors.yaml", "    scrapeTimeout: 10s", "    scrapeTimout: 10s", "scrapeTimout"},
		{"keda", "components/keda/scaledobject.yaml", "  pollingInterval: 15", "  pollingIntervall: 15", "pollingIntervall"},
		{"keda", "components/keda/scaledobject.yaml", "      serverAddress:", "      serverAdress:", "serverAdress"},
		// A duplicated key is as wrong as a misspelled one.
		{"dev", "base/nats/pdb.yaml", "  maxUnavailable: 1", "  maxUnavailable: 1\n  maxUnavailable: 2", "maxUnavailable"},
	}
	for _, c := range cases {
		t.Run(c.overlay+"/"+c.field, func(t *testing.T) {
			root := copyTree(t)
			breakFile(t, root, c.file, c.old, c.new)
			_, err := Load(filepath.Join(root, "overlays", c.overlay))
			if err == nil {
				t.Fatalf("misspelled %q in %s: no error", c.field, c.file)
			}
			if !errors.Is(err, ErrDecode) && !errors.Is(err, ErrRender) {
				t.Errorf("error does not wrap ErrDecode: %v", err)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error does not name %q: %v", c.field, err)
			}
			t.Logf("caught: %v", err)
		})
	}
}

// TestManifestsBrokenInvariantFails: objects that decode but contradict each
// other are caught by Check, each with a message naming the field.
func TestManifestsBrokenInvariantFails(t *testing.T) {
	cases := []struct {
		name, overlay, file, old, new, want string
	}{
		{"peer list shorter than replicas", "prod", "components/ha/coordinator.yaml",
			",ringattn-coordinator-2=ringattn-coordinator-2.ringattn-coordinator-headless.$(POD_NAMESPACE).svc.cluster.local:7000", "", "raft peers"},
		{"even coordinator count", "prod", "components/ha/coordinator.yaml", "  replicas: 3", "  replicas: 4", "replicas"},
		{"HA store with one replica", "prod", "components/ha/worker.yaml", `value: "3"`, `value: "1"`, "RINGATTN_STORE_REPLICAS"},
		{"store replicas above the NATS servers", "dev", "base/worker/deployment.yaml", "        - --slots=1", "        - --slots=1\n        - --store-replicas=3", "--store-replicas"},
		{"grace period shorter than drain", "dev", "base/worker/deployment.yaml", "terminationGracePeriodSeconds: 90", "terminationGracePeriodSeconds: 70", "terminationGracePeriodSeconds"},
		{"PDB breaks quorum", "prod", "base/coordinator/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: 2", "quorum"},
		{"secret key typo", "dev", "base/coordinator/statefulset.yaml", "key: coordinator-password", "key: coordinator-pasword", "coordinator-pasword"},
		{"HPA metric not served", "prod", "components/hpa/hpa.yaml", "        name: ringattn_queue_depth", "        name: ringattn_queue_length", "external metric"},
		{"KEDA query in another namespace", "keda", "components/keda/scaledobject.yaml", `namespace="ringattn"`, `namespace="default"`, "namespace"},
		{"probe on an unnamed port", "dev", "base/coordinator/statefulset.yaml", "            path: /readyz\n            port: http", "            path: /readyz\n            port: https", "readinessProbe.httpGet.port"},
		{"http addr on loopback", "dev", "base/coordinator/statefulset.yaml", "--http-addr=0.0.0.0:8080", "--http-addr=127.0.0.1:8080", "0.0.0.0"},
		{"writable root filesystem", "dev", "base/worker/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{"GOMEMLIMIT above the limit", "dev", "overlays/dev/small.yaml", "value: 900MiB", "value: 1000MiB", "GOMEMLIMIT"},
		{"ServiceMonitor port missing", "prod", "components/monitoring/servicemonitors.yaml", "  - port: metrics\n    path: /metrics\n    interval: 15s", "  - port: prom\n    path: /metrics\n    interval: 15s", "no port of that name"},
		{"peer list before the namespace variable", "prod", "components/ha/coordinator.yaml",
			"        - name: POD_NAMESPACE\n          valueFrom:\n            fieldRef:\n              fieldPath: metadata.namespace\n", "", "not defined before it"},
		{"argument names an undefined variable", "dev", "base/coordinator/statefulset.yaml", "--node-id=$(POD_NAME)", "--node-id=$(POD_NAM)", "does not define"},
		{"quorum members may share a node", "prod", "components/ha/nats.yaml", "          - topologyKey: kubernetes.io/hostname", "          - topologyKey: topology.kubernetes.io/zone", "podAntiAffinity"},
		{"OrderedReady coordinators", "prod", "base/coordinator/statefulset.yaml", "podManagementPolicy: Parallel", "podManagementPolicy: OrderedReady", "Parallel"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := copyTree(t)
			breakFile(t, root, c.file, c.old, c.new)
			ov := overlays[slices.IndexFunc(overlays, func(o overlay) bool { return o.name == c.overlay })]
			objs, err := Load(filepath.Join(root, "overlays", c.overlay))
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			err = Check(objs, ov.options())
			if err == nil {
				t.Fatalf("%s: Check passed", c.name)
			}
			if !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("want an ErrCheck naming %q, got: %v", c.want, err)
			}
			t.Logf("caught: %v", err)
		})
	}
}
