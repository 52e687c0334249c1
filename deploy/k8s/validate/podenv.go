package validate

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Pod is what the kubelet knows of a pod when it builds a container's
// environment: the downward API fields ringattn's manifests use.
type Pod struct {
	Name, Namespace, IP string
}

// SecretLookup returns the value of a Secret key (the kubelet reads it from
// the API server; tests supply their own).
type SecretLookup func(name, key string) (string, bool)

// ContainerEnv builds a container's environment as the kubelet does: in
// order, literal values with $(VAR) references to earlier variables
// expanded, downward API fields, resource fields and Secret keys. An
// unsupported source is an error naming the variable.
func ContainerEnv(c *corev1.Container, pod Pod, secrets SecretLookup) ([]string, map[string]string, error) {
	env := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, Expand(e.Value, env))
			continue
		}
		switch vf := e.ValueFrom; {
		case vf.FieldRef != nil:
			switch vf.FieldRef.FieldPath {
			case "metadata.name":
				set(e.Name, pod.Name)
			case "metadata.namespace":
				set(e.Name, pod.Namespace)
			case "status.podIP":
				set(e.Name, pod.IP)
			default:
				return nil, nil, fmt.Errorf("env %s: fieldRef %q: not supported here", e.Name, vf.FieldRef.FieldPath)
			}
		case vf.ResourceFieldRef != nil:
			v, err := resourceField(c, vf.ResourceFieldRef)
			if err != nil {
				return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			set(e.Name, v)
		case vf.SecretKeyRef != nil:
			v, ok := secrets(vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			if !ok {
				return nil, nil, fmt.Errorf("env %s: Secret %s key %s: not found", e.Name, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key)
			}
			set(e.Name, v)
		default:
			return nil, nil, fmt.Errorf("env %s: unsupported valueFrom", e.Name)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out, env, nil
}

func resourceField(c *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	var list corev1.ResourceList
	name, ok := strings.CutPrefix(ref.Resource, "limits.")
	if ok {
		list = c.Resources.Limits
	} else if name, ok = strings.CutPrefix(ref.Resource, "requests."); ok {
		list = c.Resources.Requests
	} else {
		return "", fmt.Errorf("resourceFieldRef %q: want limits.* or requests.*", ref.Resource)
	}
	q, ok := list[corev1.ResourceName(name)]
	if !ok {
		return "", fmt.Errorf("resourceFieldRef %q: not set on the container", ref.Resource)
	}
	div := 1.0
	if !ref.Divisor.IsZero() {
		div = ref.Divisor.AsApproximateFloat64()
	}
	return strconv.FormatInt(int64(math.Ceil(q.AsApproximateFloat64()/div)), 10), nil
}

// Expand replaces $(VAR) by env[VAR] with the kubelet's rules: $$ is a
// literal $, and a reference to an unknown variable is left as it is.
func Expand(s string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// CommandLine returns a container's command and args with $(VAR)
// references expanded from env, as the kubelet passes them to the runtime.
func CommandLine(c *corev1.Container, env map[string]string) []string {
	var out []string
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		out = append(out, Expand(a, env))
	}
	return out
}
