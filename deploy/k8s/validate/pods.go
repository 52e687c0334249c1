package validate

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

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
	keys, ok := secretKeys(inv, name) // declared external, or written by a cert-manager Certificate
	if !ok {
		add(o, "%s: Secret %q is neither rendered, declared external nor issued by a Certificate", where, name)
		return
	}
	if key != "" && !slices.Contains(keys, key) {
		add(o, "%s: key %q of the Secret %q is not declared (declared: %v)", where, key, name, keys)
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
