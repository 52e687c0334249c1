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

// buildBinary builds ./cmd/<name> of the product module into a temporary
// directory. It uses the default build flags, not the Dockerfile's static
// ones, so that it reuses what CI's earlier `go build ./...` and `go test
// ./...` compiled (the flags change no behaviour the test looks at).
func buildBinary(t *testing.T, name string) string {
	t.Helper()
	root := repoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "cmd", name)); err != nil {
		t.Fatalf("cmd/%s: %v", name, err)
	}
	out := filepath.Join(t.TempDir(), "ringattn-"+name) // the name the Dockerfile installs it under
	cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=-buildvcs=false")
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
	}
	t.Logf("built ./cmd/%s in %v", name, time.Since(start).Round(time.Millisecond))
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
		mounts[m.MountPath] = t.TempDir()
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
			return fmt.Sprintf("nats://%s:%d", s.Name, s.Spec.Ports[0].Port)
		}
	}
	t.Fatal("no NATS client Service")
	return ""
}

var leaderRE = regexp.MustCompile(`leader (\S+)`)

// TestManifestsCoordinatorStartsAsTheStatefulSetSays builds cmd/coordinator and
// starts it exactly as the prod overlay's StatefulSet does: three processes
// with the ordinal peer list, against a nats-server running the rendered
// NATS configuration. Only the addresses are mapped (each pod DNS name to
// its own loopback port, volumes to temporary directories). The
// coordinators must elect one leader, report ready on the readiness probe's
// path, serve the liveness path and export the metric the autoscalers use,
// and exit 0 on SIGTERM within their termination grace period.
func TestManifestsCoordinatorStartsAsTheStatefulSetSays(t *testing.T) {
	ov := overlays[1] // prod: three coordinators
	inv := load(t, ov)
	coordBin := buildBinary(t, "coordinator")
	ns := startNATS(t, inv)

	w, _ := inv.BinaryWorkload("ringattn-coordinator")
	c := &w.Template.Spec.Containers[0]
	replicas := int(*w.Replicas)
	ports := containerPorts(w)
	raft, httpPorts := make([]int, replicas), make([]int, replicas)
	for i := range replicas {
		raft[i], httpPorts[i] = freePort(t), freePort(t)
	}
	procs := make([]*process, replicas)
	argvs, envs := make([][]string, replicas), make([][]string, replicas)
	for i := range replicas {
		pod := Pod{Name: fmt.Sprintf("%s-%d", w.Obj.Name, i), Namespace: ov.namespace, IP: "127.0.0.1"}
		addrs := map[string]string{
			natsServiceURL(t, inv):                     ns.ClientURL(),
			fmt.Sprintf("0.0.0.0:%d", ports["raft"]):   fmt.Sprintf("127.0.0.1:%d", raft[i]),
			fmt.Sprintf("127.0.0.1:%d", ports["raft"]): fmt.Sprintf("127.0.0.1:%d", raft[i]),
			fmt.Sprintf("0.0.0.0:%d", ports["http"]):   fmt.Sprintf("127.0.0.1:%d", httpPorts[i]),
		}
		for j := range replicas {
			dns := fmt.Sprintf("%s-%d.%s.%s.svc.cluster.local:%d", w.Obj.Name, j, w.STS.Spec.ServiceName, ov.namespace, ports["raft"])
			addrs[dns] = fmt.Sprintf("127.0.0.1:%d", raft[j])
		}
		argv, env := podProcess(t, c, pod, secretsOf(inv), coordBin, addrs)
		if i == 0 {
			t.Logf("coordinator-0: %s", strings.Join(argv[1:], " "))
		}
		argvs[i], envs[i] = argv, env
		procs[i] = startProcess(t, pod.Name, argv, env)
	}

	ready := c.ReadinessProbe.HTTPGet.Path
	live := c.LivenessProbe.HTTPGet.Path
	leaders := make([]string, replicas)
	start := time.Now()
	allReady := func() error {
		for i, p := range procs {
			select {
			case err := <-p.done:
				p.done <- err
				return fmt.Errorf("%s exited: %v\n%s", p.name, err, tail(p.logs(), 30))
			default:
			}
			code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d%s", httpPorts[i], ready))
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%s %s: %d %q %v", p.name, ready, code, body, err)
			}
			m := leaderRE.FindStringSubmatch(body)
			if m == nil {
				return fmt.Errorf("%s %s: body %q does not name the leader", p.name, ready, body)
			}
			leaders[i] = m[1]
		}
		for i := 1; i < replicas; i++ {
			if leaders[i] != leaders[0] {
				return fmt.Errorf("coordinators disagree on the leader: %v", leaders)
			}
		}
		return nil
	}
	checkFor(t, 60*time.Second, 100*time.Millisecond, allReady)
	t.Logf("all %d coordinators ready (%s) in %v; leader: %v", replicas, ready, time.Since(start).Round(time.Millisecond), leaders)
	if !strings.HasPrefix(leaders[0], w.Obj.Name+"-") {
		t.Errorf("leader %q is not one of the pod names (raft ids must be pod names)", leaders[0])
	}
	// The metric the HPA scales on, as the rendered HPA names it.
	hpas := Typed[*autoscalingv2.HorizontalPodAutoscaler](inv)
	if len(hpas) != 1 || hpas[0].Spec.Metrics[0].External == nil {
		t.Fatalf("prod: want one HPA on an external metric")
	}
	metric := hpas[0].Spec.Metrics[0].External.Metric.Name
	for i := range replicas {
		if code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d%s", httpPorts[i], live)); err != nil || code != http.StatusOK {
			t.Errorf("coordinator-%d liveness %s: %d %q %v", i, live, code, body, err)
		}
		code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPorts[i]))
		if err != nil || code != http.StatusOK || !regexp.MustCompile(`(?m)^`+metric+`\b`).MatchString(body) {
			t.Errorf("coordinator-%d /metrics (%d, %v) lacks %s, which the HPA and KEDA scale on", i, code, err, metric)
		}
	}

	// The leader's pod restarted on its volume (eviction, node drain,
	// rollout) comes back with the same command line: the others elect a
	// new leader, and it rejoins from its raft state instead of
	// bootstrapping a second cluster.
	cgrace := time.Duration(*w.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	li := slices.IndexFunc(procs, func(p *process) bool { return p.name == leaders[0] })
	if li < 0 {
		t.Fatalf("leader %q is not one of the started pods", leaders[0])
	}
	if _, err := procs[li].stop(cgrace); err != nil {
		t.Fatalf("%s on SIGTERM: %v", procs[li].name, err)
	}
	old := leaders[0]
	procs[li] = startProcess(t, procs[li].name+"-restarted", argvs[li], envs[li])
	start = time.Now()
	checkFor(t, 60*time.Second, 100*time.Millisecond, allReady)
	t.Logf("leader %s restarted on its data dir and rejoined in %v; leader now: %v", old, time.Since(start).Round(time.Millisecond), leaders[0])

	for _, p := range procs {
		took, err := p.stop(cgrace)
		if err != nil {
			t.Errorf("%s on SIGTERM: %v (want exit 0 within %v)", p.name, err, cgrace)
		}
		t.Logf("%s stopped in %v", p.name, took.Round(time.Millisecond))
	}
}

// TestManifestsWorkerStartsAsTheDeploymentSays builds cmd/worker and starts it
// exactly as the prod Deployment does, against a nats-server running the
// rendered NATS configuration: it must log in with the Secret's password,
// pass its readiness and liveness probes, serve /metrics, and on SIGTERM
// drain and exit 0 within terminationGracePeriodSeconds.
func TestManifestsWorkerStartsAsTheDeploymentSays(t *testing.T) {
	ov := overlays[1]
	inv := load(t, ov)
	workerBin := buildBinary(t, "worker")
	ns := startNATS(t, inv)

	ww, _ := inv.BinaryWorkload("ringattn-worker")
	wc := &ww.Template.Spec.Containers[0]
	wports := containerPorts(ww)
	metricsPort := freePort(t)
	pod := Pod{Name: ww.Obj.Name + "-7d9f8b6c5d-x2x4q", Namespace: ov.namespace, IP: "127.0.0.1"}
	argv, env := podProcess(t, wc, pod, secretsOf(inv), workerBin, map[string]string{
		natsServiceURL(t, inv):                       ns.ClientURL(),
		fmt.Sprintf("0.0.0.0:%d", wports["metrics"]): fmt.Sprintf("127.0.0.1:%d", metricsPort),
	})
	t.Logf("worker: %s", strings.Join(argv[1:], " "))
	wp := startProcess(t, "worker", argv, env)
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
	grace := time.Duration(*ww.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	took, err := wp.stop(grace)
	if err != nil {
		t.Errorf("worker on SIGTERM: %v (want exit 0 within the grace period %v)", err, grace)
	}
	t.Logf("idle worker drained and exited in %v (grace period %v)", took.Round(time.Millisecond), grace)

}
