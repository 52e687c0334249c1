package validate

import (
	"fmt"
	"maps"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// CheckOptions says what an overlay may leave to the user.
type CheckOptions struct {
	// ExternalSecrets are Secrets the overlay expects to exist already
	// (created by the operator, not rendered), with the keys it reads.
	ExternalSecrets map[string][]string
}

// Workload is a StatefulSet or Deployment seen through what the checks
// need.
type Workload struct {
	Obj      Object
	Replicas *int32
	Selector *metav1.LabelSelector
	Template *corev1.PodTemplateSpec
	// STS is set for StatefulSets.
	STS *appsv1.StatefulSet
	// Deploy is set for Deployments.
	Deploy *appsv1.Deployment
}

// Inventory indexes decoded objects by kind.
type Inventory struct {
	Objects []Object
	opts    CheckOptions
}

// Workloads returns the StatefulSets and Deployments.
func (inv *Inventory) Workloads() []Workload {
	var out []Workload
	for _, o := range inv.Objects {
		switch t := o.Typed.(type) {
		case *appsv1.StatefulSet:
			out = append(out, Workload{Obj: o, Replicas: t.Spec.Replicas, Selector: t.Spec.Selector, Template: &t.Spec.Template, STS: t})
		case *appsv1.Deployment:
			out = append(out, Workload{Obj: o, Replicas: t.Spec.Replicas, Selector: t.Spec.Selector, Template: &t.Spec.Template, Deploy: t})
		}
	}
	return out
}

// Workload returns the workload of that kind and name.
func (inv *Inventory) Workload(kind, name string) (Workload, bool) {
	for _, w := range inv.Workloads() {
		if w.Obj.Kind == kind && w.Obj.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

// Typed returns the decoded objects of kind as T.
func Typed[T any](inv *Inventory) []T {
	var out []T
	for _, o := range inv.Objects {
		if t, ok := o.Typed.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

func (inv *Inventory) find(kind, name string) (Object, bool) {
	for _, o := range inv.Objects {
		if o.Kind == kind && o.Name == name {
			return o, true
		}
	}
	return Object{}, false
}

// Check runs every cross-object rule on decoded objects and returns all
// violations joined (each wraps ErrCheck and names object and field).
func Check(objs []Object, opts CheckOptions) error {
	inv := &Inventory{Objects: objs, opts: opts}
	var errs []error
	add := func(o Object, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrCheck, o.ID(), fmt.Sprintf(format, args...)))
	}
	for _, o := range objs {
		if o.Typed == nil {
			add(o, "not decoded (call Decode first)")
		}
	}
	if len(errs) > 0 {
		return joinErrors(errs)
	}
	checkNamespaces(inv, add)
	for _, w := range inv.Workloads() {
		checkPods(inv, w, add)
	}
	checkServices(inv, add)
	checkStatefulSets(inv, add)
	checkDisruptionBudgets(inv, add)
	checkCoordinator(inv, add)
	checkWorker(inv, add)
	checkStoreReplicas(inv, add)
	checkAutoscaling(inv, add)
	checkServiceMonitors(inv, add)
	checkNetworkPolicies(inv, add)
	return joinErrors(errs)
}

type addFunc func(o Object, format string, args ...any)

var clusterScoped = map[string]bool{"Namespace": true}

func checkNamespaces(inv *Inventory, add addFunc) {
	var nss []string
	for _, o := range inv.Objects {
		if o.Kind == "Namespace" {
			nss = append(nss, o.Name)
		}
	}
	if len(nss) != 1 {
		if len(inv.Objects) > 0 {
			add(inv.Objects[0], "the overlay renders %d Namespace objects %v: want exactly one", len(nss), nss)
		}
		return
	}
	for _, o := range inv.Objects {
		if !clusterScoped[o.Kind] && o.Namespace != nss[0] {
			add(o, "metadata.namespace = %q: want the overlay's namespace %q", o.Namespace, nss[0])
		}
	}
}

func selects(sel *metav1.LabelSelector, lbls map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		return false
	}
	return s.Matches(labels.Set(lbls))
}

// GoMemLimitFraction is the largest GOMEMLIMIT allowed, as a fraction of
// the container's memory limit (the rest is for stacks, buffers and the OS).
const GoMemLimitFraction = 0.9

func checkPods(inv *Inventory, w Workload, add addFunc) {
	o, spec := w.Obj, &w.Template.Spec
	if w.Selector == nil || !selects(w.Selector, w.Template.Labels) {
		add(o, "spec.selector does not match spec.template.metadata.labels %v", w.Template.Labels)
	}
	if spec.ServiceAccountName == "" {
		add(o, "spec.template.spec.serviceAccountName: empty, want the component's own ServiceAccount")
	} else if _, ok := inv.find("ServiceAccount", spec.ServiceAccountName); !ok {
		add(o, "spec.template.spec.serviceAccountName = %q: no such ServiceAccount rendered", spec.ServiceAccountName)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		add(o, "spec.template.spec.automountServiceAccountToken: want false (nothing here talks to the Kubernetes API)")
	}
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		add(o, "spec.template.spec.securityContext.runAsNonRoot: want true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		add(o, "spec.template.spec.securityContext.seccompProfile.type: want RuntimeDefault")
	}
	spread := false
	for _, c := range spec.TopologySpreadConstraints {
		if c.TopologyKey == corev1.LabelHostname && selects(c.LabelSelector, w.Template.Labels) {
			spread = true
		}
	}
	if !spread {
		add(o, "spec.template.spec.topologySpreadConstraints: want one on %s selecting the workload's own pods", corev1.LabelHostname)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
		if v.ConfigMap != nil {
			if _, ok := inv.find("ConfigMap", v.ConfigMap.Name); !ok {
				add(o, "volume %q: ConfigMap %q is not rendered", v.Name, v.ConfigMap.Name)
			}
		}
		if v.Secret != nil {
			checkSecretRef(inv, o, "volume "+v.Name, v.Secret.SecretName, "", add)
		}
	}
	if w.STS != nil {
		for _, vct := range w.STS.Spec.VolumeClaimTemplates {
			volumes[vct.Name] = corev1.Volume{Name: vct.Name}
		}
	}
	for i := range spec.Containers {
		checkContainer(inv, o, &spec.Containers[i], i == 0, volumes, add)
	}
}

func checkSecretRef(inv *Inventory, o Object, where, name, key string, add addFunc) {
	if s, ok := inv.find("Secret", name); ok {
		sec := s.Typed.(*corev1.Secret)
		if key == "" {
			return
		}
		if _, ok := sec.Data[key]; ok {
			return
		}
		if _, ok := sec.StringData[key]; ok {
			return
		}
		add(o, "%s: Secret %q has no key %q", where, name, key)
		return
	}
	keys, ok := inv.opts.ExternalSecrets[name]
	if !ok {
		add(o, "%s: Secret %q is neither rendered nor declared external", where, name)
		return
	}
	if key != "" && !slices.Contains(keys, key) {
		add(o, "%s: key %q of the external Secret %q is not declared (declared: %v)", where, key, name, keys)
	}
}

func checkContainer(inv *Inventory, o Object, c *corev1.Container, primary bool, volumes map[string]corev1.Volume, add addFunc) {
	at := "container " + c.Name
	if i := strings.LastIndex(c.Image, ":"); i < 0 || strings.Contains(c.Image[i:], "/") || strings.HasSuffix(c.Image, ":latest") {
		add(o, "%s: image %q: want a pinned tag, not latest or none", at, c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		add(o, "%s: securityContext.allowPrivilegeEscalation: want false", at)
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		add(o, "%s: securityContext.readOnlyRootFilesystem: want true", at)
	}
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		add(o, "%s: securityContext.capabilities: want drop [ALL] and nothing added", at)
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := req[r]; !ok {
			add(o, "%s: resources.requests.%s: missing", at, r)
		}
	}
	memLimit, ok := lim[corev1.ResourceMemory]
	if !ok {
		add(o, "%s: resources.limits.memory: missing", at)
	} else if memReq, ok := req[corev1.ResourceMemory]; ok && memReq.Cmp(memLimit) > 0 {
		add(o, "%s: resources.requests.memory %s > limits.memory %s", at, memReq.String(), memLimit.String())
	}
	if cpuLim, ok := lim[corev1.ResourceCPU]; ok {
		if cpuReq, ok := req[corev1.ResourceCPU]; ok && cpuReq.Cmp(cpuLim) > 0 {
			add(o, "%s: resources.requests.cpu %s > limits.cpu %s", at, cpuReq.String(), cpuLim.String())
		}
	}
	for _, e := range c.Env {
		switch {
		case e.Name == "GOMEMLIMIT":
			v, err := parseGoMemLimit(e.Value)
			if err != nil {
				add(o, "%s: env GOMEMLIMIT = %q: %v", at, e.Value, err)
			} else if memLimit.Value() > 0 && float64(v) > GoMemLimitFraction*float64(memLimit.Value()) {
				add(o, "%s: env GOMEMLIMIT = %s is above %.0f%% of limits.memory %s", at, e.Value, GoMemLimitFraction*100, memLimit.String())
			}
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			checkSecretRef(inv, o, at+" env "+e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key, add)
		case e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil:
			if _, ok := inv.find("ConfigMap", e.ValueFrom.ConfigMapKeyRef.Name); !ok {
				add(o, "%s: env %s: ConfigMap %q is not rendered", at, e.Name, e.ValueFrom.ConfigMapKeyRef.Name)
			}
		}
	}
	checkReferences(o, c, add)
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			add(o, "%s: volumeMount %q: no such volume or volumeClaimTemplate", at, m.Name)
		}
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	probes := map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe, "startupProbe": c.StartupProbe}
	for name, p := range probes {
		if p == nil {
			if primary && name != "startupProbe" {
				add(o, "%s: %s: missing", at, name)
			}
			continue
		}
		if p.HTTPGet != nil && p.HTTPGet.Port.StrVal != "" {
			if _, ok := ports[p.HTTPGet.Port.StrVal]; !ok {
				add(o, "%s: %s.httpGet.port %q: no container port of that name", at, name, p.HTTPGet.Port.StrVal)
			}
		}
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// refs returns the $(VAR) references of s that the kubelet would expand
// ($$ escapes one).
func refs(s string) []string {
	var out []string
	for _, m := range varRef.FindAllStringSubmatchIndex(s, -1) {
		dollars := 0
		for i := m[0] - 1; i >= 0 && s[i] == '$'; i-- {
			dollars++
		}
		if dollars%2 == 0 {
			out = append(out, s[m[2]:m[3]])
		}
	}
	return out
}

// checkReferences applies the kubelet's expansion rules: an env value may
// use only variables defined before it, command and args any variable of
// the container; anything else stays a literal "$(VAR)" at run time.
func checkReferences(o Object, c *corev1.Container, add addFunc) {
	at := "container " + c.Name
	defined := map[string]bool{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			for _, r := range refs(e.Value) {
				if !defined[r] {
					add(o, "%s: env %s uses $(%s), which is not defined before it: the kubelet would leave it unexpanded", at, e.Name, r)
				}
			}
		}
		defined[e.Name] = true
	}
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		for _, r := range refs(a) {
			if !defined[r] {
				add(o, "%s: %q uses $(%s), which the container does not define", at, a, r)
			}
		}
	}
}

// parseGoMemLimit parses the runtime's GOMEMLIMIT syntax (bytes with an
// optional B, KiB, MiB, GiB or TiB suffix).
func parseGoMemLimit(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("want an integer with B, KiB, MiB, GiB or TiB")
			}
			return v * u.mult, nil
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("want an integer with B, KiB, MiB, GiB or TiB")
	}
	return v, nil
}

// podsOf returns the workloads whose pods sel selects.
func podsOf(inv *Inventory, sel *metav1.LabelSelector) []Workload {
	var out []Workload
	for _, w := range inv.Workloads() {
		if selects(sel, w.Template.Labels) {
			out = append(out, w)
		}
	}
	return out
}

func containerPorts(w Workload) map[string]int32 {
	ports := map[string]int32{}
	for _, c := range w.Template.Spec.Containers {
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
		}
	}
	return ports
}

func checkServices(inv *Inventory, add addFunc) {
	for _, o := range inv.Objects {
		svc, ok := o.Typed.(*corev1.Service)
		if !ok {
			continue
		}
		ws := podsOf(inv, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
		if len(ws) != 1 {
			add(o, "spec.selector %v selects the pods of %d workloads: want exactly one", svc.Spec.Selector, len(ws))
			continue
		}
		ports := containerPorts(ws[0])
		for _, p := range svc.Spec.Ports {
			if p.TargetPort.StrVal == "" {
				add(o, "port %q: targetPort: want a container port name (numbers drift)", p.Name)
				continue
			}
			cp, ok := ports[p.TargetPort.StrVal]
			if !ok {
				add(o, "port %q: targetPort %q: no such container port in %s", p.Name, p.TargetPort.StrVal, ws[0].Obj.ID())
			} else if cp != p.Port {
				add(o, "port %q: port %d differs from the container port %d: keep them equal", p.Name, p.Port, cp)
			}
		}
	}
}

func checkStatefulSets(inv *Inventory, add addFunc) {
	for _, w := range inv.Workloads() {
		if w.STS == nil {
			continue
		}
		o, sts := w.Obj, w.STS
		svcObj, ok := inv.find("Service", sts.Spec.ServiceName)
		if !ok {
			add(o, "spec.serviceName = %q: no such Service rendered", sts.Spec.ServiceName)
		} else {
			svc := svcObj.Typed.(*corev1.Service)
			if svc.Spec.ClusterIP != corev1.ClusterIPNone {
				add(o, "spec.serviceName %q: want a headless Service (clusterIP: None)", svc.Name)
			}
			if !svc.Spec.PublishNotReadyAddresses {
				add(o, "spec.serviceName %q: want publishNotReadyAddresses: true (peers must resolve before they are ready)", svc.Name)
			}
			if !selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, w.Template.Labels) {
				add(o, "spec.serviceName %q does not select this StatefulSet's pods", svc.Name)
			}
		}
		if w.Replicas != nil && *w.Replicas >= 3 && !hostAntiAffinity(w) {
			add(o, "spec.template.spec.affinity: want a required podAntiAffinity on %s for its own pods (%d quorum members must not share a node)", corev1.LabelHostname, *w.Replicas)
		}
		if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
			add(o, "spec.podManagementPolicy = %q: want Parallel (peers need each other to become ready)", sts.Spec.PodManagementPolicy)
		}
		for _, vct := range sts.Spec.VolumeClaimTemplates {
			mounted := false
			for _, c := range w.Template.Spec.Containers {
				for _, m := range c.VolumeMounts {
					mounted = mounted || m.Name == vct.Name
				}
			}
			if !mounted {
				add(o, "volumeClaimTemplate %q is mounted by no container", vct.Name)
			}
			if _, ok := vct.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
				add(o, "volumeClaimTemplate %q: resources.requests.storage: missing", vct.Name)
			}
		}
	}
}

func hostAntiAffinity(w Workload) bool {
	a := w.Template.Spec.Affinity
	if a == nil || a.PodAntiAffinity == nil {
		return false
	}
	for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
		if term.TopologyKey == corev1.LabelHostname && selects(term.LabelSelector, w.Template.Labels) {
			return true
		}
	}
	return false
}

func checkDisruptionBudgets(inv *Inventory, add addFunc) {
	for _, o := range inv.Objects {
		pdb, ok := o.Typed.(*policyv1.PodDisruptionBudget)
		if !ok {
			continue
		}
		ws := podsOf(inv, pdb.Spec.Selector)
		if len(ws) != 1 {
			add(o, "spec.selector selects the pods of %d workloads: want exactly one", len(ws))
			continue
		}
		w := ws[0]
		if w.STS == nil || w.Replicas == nil {
			continue
		}
		r := int(*w.Replicas)
		if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.StrVal != "" {
			add(o, "spec.maxUnavailable: want an integer")
			continue
		}
		m := pdb.Spec.MaxUnavailable.IntValue()
		if r > 1 && r-m < r/2+1 {
			add(o, "spec.maxUnavailable = %d with %d replicas leaves %d, below the quorum %d", m, r, r-m, r/2+1)
		}
		if m < 1 {
			add(o, "spec.maxUnavailable = %d blocks every node drain: want >= 1", m)
		}
	}
}

// Args returns a container's flags as name -> value ("" for booleans).
func Args(c *corev1.Container) map[string]string {
	out := map[string]string{}
	for _, a := range c.Args {
		a = strings.TrimLeft(a, "-")
		k, v, _ := strings.Cut(a, "=")
		out[k] = v
	}
	return out
}

// Env returns a container's literal env values.
func Env(c *corev1.Container) map[string]string {
	out := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			out[e.Name] = e.Value
		}
	}
	return out
}

// BinaryWorkload returns the workload whose first container runs the named
// binary (the last element of its command).
func (inv *Inventory) BinaryWorkload(binary string) (Workload, bool) {
	for _, w := range inv.Workloads() {
		c := w.Template.Spec.Containers[0]
		if len(c.Command) > 0 && (c.Command[0] == binary || strings.HasSuffix(c.Command[0], "/"+binary)) {
			return w, true
		}
	}
	return Workload{}, false
}

func hasFieldRef(c *corev1.Container, env, path string) bool {
	for _, e := range c.Env {
		if e.Name == env && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == path {
			return true
		}
	}
	return false
}

func checkCoordinator(inv *Inventory, add addFunc) {
	w, ok := inv.BinaryWorkload("ringattn-coordinator")
	if !ok {
		if len(inv.Objects) > 0 {
			add(inv.Objects[0], "no workload runs ringattn-coordinator")
		}
		return
	}
	o := w.Obj
	if w.STS == nil {
		add(o, "the coordinator must be a StatefulSet (stable raft ids and volumes)")
		return
	}
	c := &w.Template.Spec.Containers[0]
	args, env := Args(c), Env(c)
	for _, need := range []struct{ env, path string }{{"POD_NAME", "metadata.name"}, {"POD_NAMESPACE", "metadata.namespace"}} {
		if !hasFieldRef(c, need.env, need.path) {
			add(o, "env %s: want valueFrom.fieldRef %s", need.env, need.path)
		}
	}
	raftPort := containerPorts(w)["raft"]
	if raftPort == 0 {
		add(o, "no container port named raft")
	}
	svc := w.STS.Spec.ServiceName
	dns := func(pod string) string {
		return fmt.Sprintf("%s.%s.$(POD_NAMESPACE).svc.cluster.local:%d", pod, svc, raftPort)
	}
	if args["node-id"] != "$(POD_NAME)" {
		add(o, "--node-id = %q: want $(POD_NAME) (the raft id is the pod name)", args["node-id"])
	}
	if want := fmt.Sprintf("0.0.0.0:%d", raftPort); args["raft-addr"] != want {
		add(o, "--raft-addr = %q: want %q (bind every interface of the pod)", args["raft-addr"], want)
	}
	if want := fmt.Sprintf("$(POD_IP):%d", raftPort); args["raft-advertise"] != want {
		add(o, "--raft-advertise = %q: want %q", args["raft-advertise"], want)
	}
	if !hasFieldRef(c, "POD_IP", "status.podIP") {
		add(o, "env POD_IP: want valueFrom.fieldRef status.podIP")
	}
	replicas := 1
	if w.Replicas != nil {
		replicas = int(*w.Replicas)
	}
	peers := args["peers"]
	if peers == "$(RINGATTN_PEERS)" {
		peers = env["RINGATTN_PEERS"]
	}
	var want []string
	for i := range replicas {
		pod := fmt.Sprintf("%s-%d", o.Name, i)
		want = append(want, pod+"="+dns(pod))
	}
	if got := strings.Split(peers, ","); !slices.Equal(got, want) {
		add(o, "raft peers %q: want one id=address per replica (%d): %q", peers, replicas, strings.Join(want, ","))
	}
	if replicas%2 == 0 {
		add(o, "spec.replicas = %d: want an odd number of raft servers", replicas)
	}
	if _, ok := args["bootstrap"]; !ok {
		add(o, "--bootstrap missing: a fresh cluster would never elect a leader")
	}
	checkDataDir(o, c, w.STS, args["data-dir"], add)
	checkHTTPAddr(o, c, "http-addr", "http", add)
}

func checkDataDir(o Object, c *corev1.Container, sts *appsv1.StatefulSet, dir string, add addFunc) {
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		for _, vct := range sts.Spec.VolumeClaimTemplates {
			if vct.Name == m.Name {
				return
			}
		}
	}
	add(o, "--data-dir = %q: want the mountPath of a volumeClaimTemplate (raft state must survive restarts)", dir)
}

func checkHTTPAddr(o Object, c *corev1.Container, flagName, portName string, add addFunc) {
	addr := Args(c)[flagName]
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		add(o, "--%s = %q: want host:port", flagName, addr)
		return
	}
	if host != "0.0.0.0" {
		add(o, "--%s = %q: want 0.0.0.0 (probes and Prometheus come from outside the pod)", flagName, addr)
	}
	for _, p := range c.Ports {
		if p.Name == portName {
			if strconv.Itoa(int(p.ContainerPort)) != port {
				add(o, "--%s port %s differs from container port %s (%d)", flagName, port, portName, p.ContainerPort)
			}
			return
		}
	}
	add(o, "no container port named %s for --%s", portName, flagName)
}

// DrainMargin is the least time between the worker's drain timeout and the
// kubelet's SIGKILL: what a worker needs after the drain gives up on its
// ranks to cancel them and exit. A canceled tensor store read returns
// within 1s (pkg/transport reads chunks with a context-aware consumer),
// a ring receive at once; the rest is the hand-off report (a request of a
// few seconds at most) and the NATS flush. 20s leaves room for a loaded
// node.
const DrainMargin = 20 * time.Second

func checkWorker(inv *Inventory, add addFunc) {
	w, ok := inv.BinaryWorkload("ringattn-worker")
	if !ok {
		if len(inv.Objects) > 0 {
			add(inv.Objects[0], "no workload runs ringattn-worker")
		}
		return
	}
	o := w.Obj
	c := &w.Template.Spec.Containers[0]
	args := Args(c)
	drain, err := time.ParseDuration(args["drain-timeout"])
	if err != nil {
		add(o, "--drain-timeout = %q: want a duration", args["drain-timeout"])
		return
	}
	grace := w.Template.Spec.TerminationGracePeriodSeconds
	if grace == nil || time.Duration(*grace)*time.Second < drain+DrainMargin {
		add(o, "terminationGracePeriodSeconds: want >= --drain-timeout (%v) + %v", drain, DrainMargin)
	}
	checkHTTPAddr(o, c, "metrics-addr", "metrics", add)
	if w.Deploy != nil {
		if s := w.Deploy.Spec.Strategy.RollingUpdate; s == nil || s.MaxUnavailable == nil || s.MaxUnavailable.IntValue() != 0 {
			add(o, "spec.strategy.rollingUpdate.maxUnavailable: want 0 (surge new workers before old ones drain)")
		}
	}
}

// externalRuleNames returns the external metric names that the rendered
// prometheus-adapter rules serve.
func externalRuleNames(inv *Inventory, add addFunc) map[string]bool {
	names := map[string]bool{}
	for _, o := range inv.Objects {
		cm, ok := o.Typed.(*corev1.ConfigMap)
		if !ok || !strings.Contains(cm.Name, "prometheus-adapter") {
			continue
		}
		var cfg AdapterConfig
		if err := yaml.UnmarshalStrict([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
			add(o, "data.config.yaml: %v", err)
			continue
		}
		if len(cfg.ExternalRules)+len(cfg.Rules) == 0 {
			add(o, "data.config.yaml: no rules")
		}
		for i, r := range cfg.ExternalRules {
			re, err := regexp.Compile(r.Name.Matches)
			if err != nil {
				add(o, "externalRules[%d].name.matches %q: %v", i, r.Name.Matches, err)
				continue
			}
			if _, err := template.New("q").Delims("<<", ">>").Parse(r.MetricsQuery); err != nil {
				add(o, "externalRules[%d].metricsQuery: %v", i, err)
			}
			series := strings.TrimSpace(strings.SplitN(strings.SplitN(r.SeriesQuery, "{", 2)[0], "(", 2)[0])
			if !re.MatchString(series) {
				add(o, "externalRules[%d]: name.matches %q does not match the series %q", i, r.Name.Matches, series)
				continue
			}
			name := series
			if r.Name.As != "" {
				name = re.ReplaceAllString(series, r.Name.As)
			}
			names[name] = true
		}
	}
	return names
}

var promQLNamespace = regexp.MustCompile(`namespace="([^"]*)"`)

func checkAutoscaling(inv *Inventory, add addFunc) {
	served := externalRuleNames(inv, add)
	scaled := map[string]int{}
	check := func(o Object, kind, name string) {
		w, ok := inv.Workload(kind, name)
		if !ok {
			add(o, "scale target %s/%s is not rendered", kind, name)
			return
		}
		scaled[kind+"/"+name]++
		if w.Replicas != nil {
			add(w.Obj, "spec.replicas is set while %s scales it: a re-apply would reset the autoscaler's choice", o.ID())
		}
	}
	for _, o := range inv.Objects {
		switch t := o.Typed.(type) {
		case *autoscalingv2.HorizontalPodAutoscaler:
			check(o, t.Spec.ScaleTargetRef.Kind, t.Spec.ScaleTargetRef.Name)
			if t.Spec.MinReplicas == nil || *t.Spec.MinReplicas < 1 || *t.Spec.MinReplicas > t.Spec.MaxReplicas {
				add(o, "spec.minReplicas: want 1 <= minReplicas <= maxReplicas (%d)", t.Spec.MaxReplicas)
			}
			if len(t.Spec.Metrics) == 0 {
				add(o, "spec.metrics: empty")
			}
			for i, m := range t.Spec.Metrics {
				if m.Type == autoscalingv2.ExternalMetricSourceType {
					if m.External == nil || !served[m.External.Metric.Name] {
						add(o, "spec.metrics[%d]: external metric not served by any rendered prometheus-adapter rule (served: %v)", i, slices.Sorted(maps.Keys(served)))
					}
				}
			}
		case *ScaledObject:
			kind := t.Spec.ScaleTargetRef.Kind
			if kind == "" {
				kind = "Deployment"
			}
			check(o, kind, t.Spec.ScaleTargetRef.Name)
			for i, tr := range t.Spec.Triggers {
				for _, m := range promQLNamespace.FindAllStringSubmatch(tr.Metadata["query"], -1) {
					if m[1] != o.Namespace {
						add(o, "spec.triggers[%d].metadata.query selects namespace %q: want the object's namespace %q", i, m[1], o.Namespace)
					}
				}
				if tr.Type == "prometheus" && !strings.Contains(tr.Metadata["query"], "ringattn_queue_depth") {
					add(o, "spec.triggers[%d].metadata.query: want the coordinator's ringattn_queue_depth", i)
				}
			}
		}
	}
	for target, n := range scaled {
		if n > 1 {
			add(inv.Objects[0], "%s is scaled by %d autoscalers: want one", target, n)
		}
	}
}

func checkServiceMonitors(inv *Inventory, add addFunc) {
	for _, o := range inv.Objects {
		sm, ok := o.Typed.(*ServiceMonitor)
		if !ok {
			continue
		}
		var svcs []*corev1.Service
		for _, s := range Typed[*corev1.Service](inv) {
			if selects(&sm.Spec.Selector, s.Labels) {
				svcs = append(svcs, s)
			}
		}
		if len(svcs) != 1 {
			add(o, "spec.selector selects %d Services: want exactly one (duplicates scrape twice)", len(svcs))
			continue
		}
		for i, e := range sm.Spec.Endpoints {
			found := false
			for _, p := range svcs[0].Spec.Ports {
				found = found || p.Name == e.Port
			}
			if !found {
				add(o, "spec.endpoints[%d].port %q: Service %q has no port of that name", i, e.Port, svcs[0].Name)
			}
		}
	}
}

func checkNetworkPolicies(inv *Inventory, add addFunc) {
	pols := Typed[*networkingv1.NetworkPolicy](inv)
	for _, w := range inv.Workloads() {
		covered := false
		for _, p := range pols {
			s, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
			if err == nil && s.Matches(labels.Set(w.Template.Labels)) && slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				covered = true
			}
		}
		if !covered {
			add(w.Obj, "no Ingress NetworkPolicy selects its pods: all traffic would be allowed")
		}
	}
}

// Peer is a pod that opens a connection, for Reachable.
type Peer struct {
	Labels          map[string]string
	Namespace       string
	NamespaceLabels map[string]string
}

// Reachable reports whether the NetworkPolicies allow peer to open a TCP
// connection to port on a pod with targetLabels in namespace ns, with the
// semantics of the NetworkPolicy API: a pod no Ingress policy selects
// accepts everything; otherwise some rule of a selecting policy must allow
// both the peer and the port.
func Reachable(pols []*networkingv1.NetworkPolicy, ns string, targetLabels map[string]string, port int, peer Peer) bool {
	selected := false
	for _, p := range pols {
		if p.Namespace != ns || !slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			continue
		}
		s, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil || !s.Matches(labels.Set(targetLabels)) {
			continue
		}
		selected = true
		for _, r := range p.Spec.Ingress {
			if ruleAllows(r, ns, port, peer) {
				return true
			}
		}
	}
	return !selected
}

func ruleAllows(r networkingv1.NetworkPolicyIngressRule, ns string, port int, peer Peer) bool {
	portOK := len(r.Ports) == 0
	for _, p := range r.Ports {
		if (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) && p.Port != nil && p.Port.IntValue() == port {
			portOK = true
		}
	}
	if !portOK {
		return false
	}
	if len(r.From) == 0 {
		return true
	}
	match := func(sel *metav1.LabelSelector, lbls map[string]string) bool {
		s, err := metav1.LabelSelectorAsSelector(sel)
		return err == nil && s.Matches(labels.Set(lbls))
	}
	for _, f := range r.From {
		switch {
		case f.IPBlock != nil:
			continue // ringattn uses none; pods are not matched by address here
		case f.NamespaceSelector != nil:
			if match(f.NamespaceSelector, peer.NamespaceLabels) && (f.PodSelector == nil || match(f.PodSelector, peer.Labels)) {
				return true
			}
		case f.PodSelector != nil:
			if peer.Namespace == ns && match(f.PodSelector, peer.Labels) {
				return true
			}
		}
	}
	return false
}

// StoreReplicasEnv sets the tensor store bucket's replicas on the pods
// that may create it (the coordinator and the workers).
const StoreReplicasEnv = "RINGATTN_STORE_REPLICAS"

// storeReplicas returns the store replicas a container asks for: its
// --store-replicas flag, else its RINGATTN_STORE_REPLICAS literal, else 1.
func storeReplicas(c *corev1.Container) (int, string, error) {
	if v, ok := Args(c)["store-replicas"]; ok {
		n, err := strconv.Atoi(v)
		return n, "--store-replicas", err
	}
	for _, e := range c.Env {
		if e.Name == StoreReplicasEnv {
			if e.ValueFrom != nil {
				return 0, "env " + StoreReplicasEnv, fmt.Errorf("want a literal value")
			}
			n, err := strconv.Atoi(e.Value)
			return n, "env " + StoreReplicasEnv, err
		}
	}
	return 1, "env " + StoreReplicasEnv + " (unset)", nil
}

// checkStoreReplicas: the tensor store bucket's replicas fit the NATS
// servers, and a NATS cluster of three or more servers keeps three copies
// of the tensors (with one, a job's inputs and outputs are lost with the
// server holding them). Both the coordinator and the workers ask for the
// same count: whichever opens the store first creates the bucket.
func checkStoreReplicas(inv *Inventory, add addFunc) {
	n, ok := inv.BinaryWorkload("nats-server")
	if !ok || n.Replicas == nil {
		return
	}
	servers := int(*n.Replicas)
	for _, bin := range []string{"ringattn-coordinator", "ringattn-worker"} {
		w, ok := inv.BinaryWorkload(bin)
		if !ok {
			continue
		}
		r, src, err := storeReplicas(&w.Template.Spec.Containers[0])
		switch {
		case err != nil || r < 1 || r > 5:
			add(w.Obj, "%s = %d (%v): want an integer 1..5", src, r, err)
		case r > servers:
			add(w.Obj, "%s = %d: want <= the NATS servers (%d)", src, r, servers)
		case servers >= 3 && r < 3:
			add(w.Obj, "%s = %d with %d NATS servers: want 3 (one copy is lost with its server)", src, r, servers)
		}
	}
}
