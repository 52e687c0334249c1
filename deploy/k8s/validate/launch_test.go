package validate

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
)

// repoRoot is the product module's root: deploy/k8s/validate -> ../../..
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !bytes.Contains(b, []byte("module github.com/ringattn/ringattn\n")) {
		t.Fatalf("%s is not the ringattn module root: %v", root, err)
	}
	return root
}

// built caches the binaries this test process built, by cmd name; binDir
// holds them and TestMain removes it.
var (
	builtMu sync.Mutex
	built   = map[string]string{}
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildBinary builds ./cmd/<name> of the product module once per test run,
// named as the Dockerfile installs it. It uses the default build flags, not
// the Dockerfile's static ones, so that it reuses what CI's earlier `go
// build ./...` and `go test ./...` compiled (the flags change no behaviour
// the tests look at).
func buildBinary(t *testing.T, name string) string {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	root := repoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "cmd", name)); err != nil {
		t.Fatalf("cmd/%s: %v", name, err)
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "ringattn-k8s-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = d
	}
	out := filepath.Join(binDir, "ringattn-"+name)
	if name == "ringattn" {
		out = filepath.Join(binDir, name)
	}
	cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=-buildvcs=false")
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
	}
	t.Logf("built ./cmd/%s in %v", name, time.Since(start).Round(time.Millisecond))
	built[name] = out
	return out
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// checkFor polls f every `every` until it returns nil or total passes.
func checkFor(t *testing.T, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", total, err)
		}
		tick := time.NewTimer(every)
		<-tick.C
	}
}

func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// process is one binary started as a pod's container would be.
type process struct {
	name string
	cmd  *exec.Cmd
	log  *syncWriter
	done chan error
}

func (p *process) logs() string { return p.log.String() }

// syncWriter serializes the child's output copier and the test's reads.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

// startProcess runs argv with exactly env (the pod's environment), like a
// container does, and stops it with SIGTERM at cleanup.
func startProcess(t *testing.T, name string, argv, env []string) *process {
	t.Helper()
	p := &process{name: name, log: &syncWriter{w: new(bytes.Buffer)}, done: make(chan error, 1)}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = env
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, tail(p.logs(), 60))
		}
	})
	return p
}

// stop sends SIGTERM and waits up to grace, then kills; it returns how long
// the process took and its exit error (nil for exit 0).
func (p *process) stop(grace time.Duration) (time.Duration, error) {
	start := time.Now()
	select {
	case err := <-p.done:
		p.done <- err
		return 0, err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case err := <-p.done:
		p.done <- err
		return time.Since(start), err
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		return time.Since(start), fmt.Errorf("still running after SIGTERM + %v (killed): %w", grace, err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// podProcess turns a rendered container into a local command line and
// environment: the kubelet's expansion for the pod, then every in-cluster
// address replaced by its loopback stand-in and every volume mount by a
// temporary directory. Anything left that only resolves in a cluster fails
// the test, so a manifest cannot name something the test did not map.
func podProcess(t *testing.T, c *corev1.Container, pod Pod, secrets SecretLookup, binary string, addrs map[string]string) ([]string, []string) {
	t.Helper()
	envList, env, err := ContainerEnv(c, pod, secrets)
	if err != nil {
		t.Fatalf("%s: %v", pod.Name, err)
	}
	argv := CommandLine(c, env)
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = mountDir(t, m, secrets)
	}
	pairs := []string{}
	for from, to := range addrs {
		pairs = append(pairs, from, to)
	}
	repl := strings.NewReplacer(pairs...)
	mapValue := func(v string) string {
		v = repl.Replace(v)
		for mp, dir := range mounts {
			if v == mp || strings.HasPrefix(v, mp+"/") {
				return dir + strings.TrimPrefix(v, mp)
			}
		}
		return v
	}
	for i, a := range argv {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "-") {
			argv[i] = k + "=" + mapValue(v)
		} else {
			argv[i] = mapValue(a)
		}
	}
	for i, kv := range envList {
		k, v, _ := strings.Cut(kv, "=")
		envList[i] = k + "=" + mapValue(v)
	}
	if filepath.Base(argv[0]) != filepath.Base(binary) {
		t.Fatalf("%s: command %q, want the binary %s", pod.Name, argv[0], filepath.Base(binary))
	}
	argv[0] = binary
	for _, s := range append(slices.Clone(argv), envList...) {
		if strings.Contains(s, "$(") || strings.Contains(s, ".svc.cluster.local") || strings.Contains(s, "0.0.0.0:") {
			t.Fatalf("%s: %q is not expanded or mapped to loopback", pod.Name, s)
		}
	}
	// One local nats-server stands for the overlay's cluster (its routes
	// are dropped): it holds one copy of a stream, not three.
	for i, kv := range envList {
		if strings.HasPrefix(kv, StoreReplicasEnv+"=") {
			envList[i] = StoreReplicasEnv + "=1"
		}
	}
	envList = append(envList, "HOME="+t.TempDir(), "TMPDIR="+t.TempDir())
	return argv, envList
}

// startNATS runs an embedded nats-server from the overlay's own rendered
// configuration (accounts, users, limits, JetStream), with only the
// listeners and the store moved to loopback and a temporary directory.
func startNATS(t *testing.T, inv *Inventory) *server.Server {
	t.Helper()
	conf, _, env := natsConfig(t, inv)
	opts := parseNATS(t, conf, env)
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPPort = 0
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.StoreDir = t.TempDir()
	opts.PidFile = ""
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats-server from the rendered configuration: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s
}

// natsServiceURL is the URL the binaries are given for the NATS client
// Service.
func natsServiceURL(t *testing.T, inv *Inventory) string {
	w, _ := inv.BinaryWorkload("nats-server")
	for _, s := range Typed[*corev1.Service](inv) {
		if s.Spec.ClusterIP != corev1.ClusterIPNone && selects(w.Selector, s.Spec.Selector) {
			return fmt.Sprintf("tls://%s:%d", s.Name, s.Spec.Ports[0].Port)
		}
	}
	t.Fatal("no NATS client Service")
	return ""
}

var leaderRE = regexp.MustCompile(`leader (\S+)`)

// coordinators are the coordinator pods of a StatefulSet, run locally.
type coordinators struct {
	sts       Workload
	procs     []*process
	argv, env [][]string
	httpPorts []int
	ready     string // the readiness probe's path
	leaders   []string
}

// startCoordinators starts every replica of the overlay's coordinator
// StatefulSet as its pod would run, against the NATS server ns: the pod DNS
// names map to per-pod loopback raft ports, 0.0.0.0 listeners to loopback
// ports, volumes to temporary directories.
func startCoordinators(t *testing.T, inv *Inventory, ov overlay, ns *server.Server) *coordinators {
	t.Helper()
	bin := buildBinary(t, "coordinator")
	w, _ := inv.BinaryWorkload("ringattn-coordinator")
	c := &w.Template.Spec.Containers[0]
	replicas := int(*w.Replicas)
	ports := containerPorts(w)
	raft := make([]int, replicas)
	cs := &coordinators{sts: w, ready: c.ReadinessProbe.HTTPGet.Path, leaders: make([]string, replicas)}
	for i := range replicas {
		raft[i] = freePort(t)
		cs.httpPorts = append(cs.httpPorts, freePort(t))
	}
	for i := range replicas {
		pod := Pod{Name: fmt.Sprintf("%s-%d", w.Obj.Name, i), Namespace: ov.namespace, IP: "127.0.0.1"}
		addrs := map[string]string{
			natsServiceURL(t, inv):                     ns.ClientURL(),
			fmt.Sprintf("0.0.0.0:%d", ports["raft"]):   fmt.Sprintf("127.0.0.1:%d", raft[i]),
			fmt.Sprintf("127.0.0.1:%d", ports["raft"]): fmt.Sprintf("127.0.0.1:%d", raft[i]),
			fmt.Sprintf("0.0.0.0:%d", ports["http"]):   fmt.Sprintf("127.0.0.1:%d", cs.httpPorts[i]),
		}
		for j := range replicas {
			dns := fmt.Sprintf("%s-%d.%s.%s.svc.cluster.local:%d", w.Obj.Name, j, w.STS.Spec.ServiceName, ov.namespace, ports["raft"])
			addrs[dns] = fmt.Sprintf("127.0.0.1:%d", raft[j])
		}
		argv, env := podProcess(t, c, pod, secretsOf(inv), bin, addrs)
		if i == 0 {
			t.Logf("%s: %s", pod.Name, strings.Join(argv[1:], " "))
		}
		cs.argv, cs.env = append(cs.argv, argv), append(cs.env, env)
		cs.procs = append(cs.procs, startProcess(t, pod.Name, argv, env))
	}
	return cs
}

// allReady returns nil once every coordinator answers its readiness probe
// and all name the same leader.
func (cs *coordinators) allReady() error {
	for i, p := range cs.procs {
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("%s exited: %v\n%s", p.name, err, tail(p.logs(), 30))
		default:
		}
		code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d%s", cs.httpPorts[i], cs.ready))
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("%s %s: %d %q %v", p.name, cs.ready, code, body, err)
		}
		m := leaderRE.FindStringSubmatch(body)
		if m == nil {
			return fmt.Errorf("%s %s: body %q does not name the leader", p.name, cs.ready, body)
		}
		cs.leaders[i] = m[1]
	}
	for i := 1; i < len(cs.procs); i++ {
		if cs.leaders[i] != cs.leaders[0] {
			return fmt.Errorf("coordinators disagree on the leader: %v", cs.leaders)
		}
	}
	return nil
}

func (cs *coordinators) grace() time.Duration {
	return time.Duration(*cs.sts.Template.Spec.TerminationGracePeriodSeconds) * time.Second
}

// startWorker starts one pod of the overlay's worker Deployment and returns
// it with its metrics port.
func startWorker(t *testing.T, inv *Inventory, ov overlay, ns *server.Server, bin, podName string) (*process, int) {
	t.Helper()
	ww, _ := inv.BinaryWorkload("ringattn-worker")
	wc := &ww.Template.Spec.Containers[0]
	metricsPort := freePort(t)
	pod := Pod{Name: podName, Namespace: ov.namespace, IP: "127.0.0.1"}
	argv, env := podProcess(t, wc, pod, secretsOf(inv), bin, map[string]string{
		natsServiceURL(t, inv): ns.ClientURL(),
		fmt.Sprintf("0.0.0.0:%d", containerPorts(ww)["metrics"]): fmt.Sprintf("127.0.0.1:%d", metricsPort),
	})
	t.Logf("%s: %s", podName, strings.Join(argv[1:], " "))
	return startProcess(t, podName, argv, env), metricsPort
}

// TestManifestsCoordinatorStartsAsTheStatefulSetSays builds cmd/coordinator
// and starts it exactly as the prod overlay's StatefulSet does: three
// processes with the ordinal peer list, against a nats-server running the
// rendered NATS configuration. Only the addresses are mapped (each pod DNS
// name to its own loopback port, volumes to temporary directories). The
// coordinators must elect one leader, report ready on the readiness probe's
// path, serve the liveness path and export the metric the HPA scales on;
// the leader's pod restarted on its volume must rejoin; all exit 0 on
// SIGTERM within their termination grace period.
func TestManifestsCoordinatorStartsAsTheStatefulSetSays(t *testing.T) {
	ov := overlays[1] // prod: three coordinators
	inv := load(t, ov)
	ns := startNATS(t, inv)
	cs := startCoordinators(t, inv, ov, ns)

	start := time.Now()
	checkFor(t, 60*time.Second, 100*time.Millisecond, cs.allReady)
	t.Logf("all %d coordinators ready (%s) in %v; leader: %v", len(cs.procs), cs.ready, time.Since(start).Round(time.Millisecond), cs.leaders[0])
	if !strings.HasPrefix(cs.leaders[0], cs.sts.Obj.Name+"-") {
		t.Errorf("leader %q is not one of the pod names (raft ids must be pod names)", cs.leaders[0])
	}
	// The metric the HPA scales on, as the rendered HPA names it.
	hpas := Typed[*autoscalingv2.HorizontalPodAutoscaler](inv)
	if len(hpas) != 1 || hpas[0].Spec.Metrics[0].External == nil {
		t.Fatalf("prod: want one HPA on an external metric")
	}
	metric := hpas[0].Spec.Metrics[0].External.Metric.Name
	live := cs.sts.Template.Spec.Containers[0].LivenessProbe.HTTPGet.Path
	for i, port := range cs.httpPorts {
		if code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d%s", port, live)); err != nil || code != http.StatusOK {
			t.Errorf("coordinator-%d liveness %s: %d %q %v", i, live, code, body, err)
		}
		code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
		if err != nil || code != http.StatusOK || !regexp.MustCompile(`(?m)^`+metric+`\b`).MatchString(body) {
			t.Errorf("coordinator-%d /metrics (%d, %v) lacks %s, which the HPA and KEDA scale on", i, code, err, metric)
		}
	}

	// The leader's pod restarted on its volume (eviction, node drain,
	// rollout) comes back with the same command line: the others elect a
	// new leader, and it rejoins from its raft state instead of
	// bootstrapping a second cluster.
	li := slices.IndexFunc(cs.procs, func(p *process) bool { return p.name == cs.leaders[0] })
	if li < 0 {
		t.Fatalf("leader %q is not one of the started pods", cs.leaders[0])
	}
	if _, err := cs.procs[li].stop(cs.grace()); err != nil {
		t.Fatalf("%s on SIGTERM: %v", cs.procs[li].name, err)
	}
	old := cs.leaders[0]
	cs.procs[li] = startProcess(t, cs.procs[li].name+"-restarted", cs.argv[li], cs.env[li])
	start = time.Now()
	checkFor(t, 60*time.Second, 100*time.Millisecond, cs.allReady)
	t.Logf("leader %s restarted on its data dir and rejoined in %v; leader now: %v", old, time.Since(start).Round(time.Millisecond), cs.leaders[0])

	for _, p := range cs.procs {
		took, err := p.stop(cs.grace())
		if err != nil {
			t.Errorf("%s on SIGTERM: %v (want exit 0 within %v)", p.name, err, cs.grace())
		}
		t.Logf("%s stopped in %v", p.name, took.Round(time.Millisecond))
	}
}

// TestManifestsWorkerStartsAsTheDeploymentSays builds cmd/worker and starts
// it exactly as the prod Deployment does, against a nats-server running the
// rendered NATS configuration. Kubernetes starts worker pods before (or
// without) the coordinators, and a worker may not create the tensor bucket:
// it must say so and wait (a SIGTERM then ends it at once, exit 0), and
// once the coordinators (started as their StatefulSet says) have created
// the bucket it must pass its readiness and liveness probes, serve
// /metrics, and on SIGTERM drain and exit 0 within
// terminationGracePeriodSeconds.
func TestManifestsWorkerStartsAsTheDeploymentSays(t *testing.T) {
	ov := overlays[1]
	inv := load(t, ov)
	ns := startNATS(t, inv)
	bin := buildBinary(t, "worker")
	ww, _ := inv.BinaryWorkload("ringattn-worker")
	wc := &ww.Template.Spec.Containers[0]
	grace := time.Duration(*ww.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	waiting := func(p *process) func() error {
		return func() error {
			select {
			case err := <-p.done:
				p.done <- err
				return fmt.Errorf("%s exited: %v\n%s", p.name, err, tail(p.logs(), 30))
			default:
			}
			if !strings.Contains(p.logs(), "may not create it") {
				return fmt.Errorf("%s does not say it waits for the tensor bucket:\n%s", p.name, tail(p.logs(), 10))
			}
			return nil
		}
	}

	early, _ := startWorker(t, inv, ov, ns, bin, "ringattn-worker-7d9f8b6c5d-early")
	checkFor(t, 30*time.Second, 50*time.Millisecond, waiting(early))
	took, err := early.stop(grace)
	if err != nil || took > 5*time.Second {
		t.Errorf("worker waiting for the bucket, on SIGTERM: %v after %v, want exit 0 at once", err, took)
	}
	t.Logf("worker waiting for the bucket stopped on SIGTERM in %v", took.Round(time.Millisecond))

	wp, metricsPort := startWorker(t, inv, ov, ns, bin, workerPod)
	checkFor(t, 30*time.Second, 50*time.Millisecond, waiting(wp))
	cs := startCoordinators(t, inv, ov, ns)
	start := time.Now()
	checkFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		select {
		case err := <-wp.done:
			wp.done <- err
			return fmt.Errorf("worker exited: %v\n%s", err, tail(wp.logs(), 30))
		default:
		}
		for _, path := range []string{wc.ReadinessProbe.HTTPGet.Path, wc.LivenessProbe.HTTPGet.Path, "/metrics"} {
			code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d%s", metricsPort, path))
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("worker %s: %d %q %v", path, code, tail(body, 3), err)
			}
		}
		return nil
	})
	t.Logf("worker ready %v after the coordinators started", time.Since(start).Round(time.Millisecond))
	took, err = wp.stop(grace)
	if err != nil {
		t.Errorf("worker on SIGTERM: %v (want exit 0 within the grace period %v)", err, grace)
	}
	t.Logf("idle worker drained and exited in %v (grace period %v)", took.Round(time.Millisecond), grace)
	for _, p := range cs.procs {
		if _, err := p.stop(cs.grace()); err != nil {
			t.Errorf("%s on SIGTERM: %v", p.name, err)
		}
	}
}
