package validate

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Transport security (docs/SECURITY.md, "Transport security"): the base
// turns TLS on for NATS clients, NATS routes and the coordinators' Raft
// traffic, with certificates from Secrets. CheckTLS fails an overlay that
// turns any of it off or references a Secret or key that is not there.

// TLSSecrets are the Secrets the TLS configuration mounts, with their keys
// (made by deploy/k8s/gen-certs.sh, by overlays/cert-manager, or rendered
// by overlays/dev).
var TLSSecrets = map[string][]string{
	"ringattn-nats-tls": {"tls.crt", "tls.key", "ca.crt"},
	"ringattn-nats-ca":  {"ca.crt"},
	"ringattn-raft-tls": {"tls.crt", "tls.key", "ca.crt"},
}

// RaftTLSServerName is the name every coordinator's Raft certificate
// carries and the coordinators verify each other by.
const RaftTLSServerName = "ringattn-coordinator-raft"

// MinCertValidity: a rendered certificate must stay valid this long.
const MinCertValidity = 30 * 24 * time.Hour

// certificateKeys are the keys of a Secret that cert-manager writes for a
// Certificate.
var certificateKeys = []string{"tls.crt", "tls.key", "ca.crt"}

// CheckTLS runs the transport-security rules on decoded objects.
func CheckTLS(objs []Object, opts CheckOptions) error {
	inv := &Inventory{Objects: objs, opts: opts}
	var errs []error
	add := func(o Object, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrCheck, o.ID(), fmt.Sprintf(format, args...)))
	}
	checkTLS(inv, add)
	return joinErrors(errs)
}

func checkTLS(inv *Inventory, add addFunc) {
	checkNATSServerTLS(inv, add)
	for _, w := range inv.Workloads() {
		for i := range w.Template.Spec.Containers {
			c := &w.Template.Spec.Containers[i]
			if len(c.Command) == 0 || !strings.HasPrefix(path.Base(c.Command[0]), "ringattn") {
				continue
			}
			checkNATSClientTLS(inv, w, c, add)
			if path.Base(c.Command[0]) == "ringattn-coordinator" {
				checkRaftTLS(inv, w, c, add)
			}
		}
	}
	checkCertificates(inv, add)
	checkRenderedCerts(inv, add)
}

// setting returns a ringattn flag's value: --name=value in the args, else
// the RINGATTN_<NAME> environment variable.
func setting(c *corev1.Container, name string) (string, bool) {
	if v, ok := Args(c)[name]; ok {
		return v, true
	}
	v, ok := Env(c)["RINGATTN_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))]
	return v, ok
}

// secretKeys returns the keys a Secret will have: rendered, declared
// external, or written by a rendered cert-manager Certificate.
func secretKeys(inv *Inventory, name string) ([]string, bool) {
	if o, ok := inv.find("Secret", name); ok {
		s := o.Typed.(*corev1.Secret)
		var keys []string
		for k := range s.Data {
			keys = append(keys, k)
		}
		for k := range s.StringData {
			keys = append(keys, k)
		}
		return keys, true
	}
	if keys, ok := inv.opts.ExternalSecrets[name]; ok {
		return keys, true
	}
	for _, c := range Typed[*Certificate](inv) {
		if c.Spec.SecretName == name {
			return certificateKeys, true
		}
	}
	return nil, false
}

// secretFile resolves a file path in container c to the Secret key behind
// it. The error says why it is not one.
func secretFile(inv *Inventory, spec *corev1.PodSpec, c *corev1.Container, file string) (secret, key string, err error) {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		var vol *corev1.Volume
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == m.Name {
				vol = &spec.Volumes[i]
			}
		}
		if vol == nil || vol.Secret == nil {
			return "", "", fmt.Errorf("%s is on volume %q, which is not a Secret", file, m.Name)
		}
		secret, key = vol.Secret.SecretName, rel
		if len(vol.Secret.Items) > 0 {
			key = ""
			for _, it := range vol.Secret.Items {
				if it.Path == rel {
					key = it.Key
				}
			}
			if key == "" {
				return secret, "", fmt.Errorf("%s: volume %q projects no item at %q", file, m.Name, rel)
			}
		}
		keys, ok := secretKeys(inv, secret)
		if !ok {
			return secret, key, fmt.Errorf("%s: Secret %q is neither rendered, declared external nor written by a Certificate", file, secret)
		}
		if !slices.Contains(keys, key) {
			return secret, key, fmt.Errorf("%s: Secret %q has no key %q (has %v)", file, secret, key, keys)
		}
		return secret, key, nil
	}
	return "", "", fmt.Errorf("%s is on no volume mount (the image has no certificates)", file)
}

var natsConfFile = regexp.MustCompile(`(?m)^\s*(cert_file|key_file|ca_file)\s*[:=]\s*"?([^"\s]+)"?`)

// blockStart matches the line opening a NATS configuration block.
func blockStart(name string) *regexp.Regexp {
	return regexp.MustCompile(`^` + name + `\s*[:=]?\s*\{$`)
}

// tlsBlock returns the body of the first `tls { ... }` block of a NATS
// configuration at the given nesting (0: top level, 1: inside cluster {}),
// or "" if there is none.
func tlsBlock(conf string, inCluster bool) string {
	lines := strings.Split(conf, "\n")
	depth, start, clusterDepth := 0, -1, -1
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if j := strings.Index(t, "#"); j >= 0 {
			t = strings.TrimSpace(t[:j])
		}
		if blockStart("cluster").MatchString(t) {
			clusterDepth = depth
		}
		want := 0
		if inCluster {
			want = clusterDepth + 1
		}
		if start < 0 && (!inCluster || clusterDepth >= 0) && depth == want && blockStart("tls").MatchString(t) {
			start = i
		}
		depth += strings.Count(t, "{") - strings.Count(t, "}")
		if start >= 0 && i > start && depth == want {
			return strings.Join(lines[start+1:i], "\n")
		}
	}
	return ""
}

func checkNATSServerTLS(inv *Inventory, add addFunc) {
	w, ok := inv.BinaryWorkload("nats-server")
	if !ok {
		return
	}
	o, spec, c := w.Obj, &w.Template.Spec, &w.Template.Spec.Containers[0]
	var cm *corev1.ConfigMap
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil {
				if x, ok := inv.find("ConfigMap", v.ConfigMap.Name); ok {
					cm = x.Typed.(*corev1.ConfigMap)
				}
			}
		}
	}
	if cm == nil {
		add(o, "no rendered NATS ConfigMap mounted: cannot check TLS")
		return
	}
	blocks := map[string]string{"client port (nats.conf)": tlsBlock(cm.Data["nats.conf"], false)}
	if w.Replicas != nil && *w.Replicas > 1 {
		blocks["routes (cluster.conf)"] = tlsBlock(cm.Data["cluster.conf"], true)
	}
	for where, b := range blocks {
		if b == "" {
			add(o, "NATS %s: no tls { } block: TLS is off", where)
			continue
		}
		files := map[string]string{}
		for _, m := range natsConfFile.FindAllStringSubmatch(b, -1) {
			files[m[1]] = m[2]
		}
		for _, k := range []string{"cert_file", "key_file", "ca_file"} {
			f, ok := files[k]
			if !ok {
				add(o, "NATS %s: tls.%s missing", where, k)
				continue
			}
			if _, _, err := secretFile(inv, spec, c, f); err != nil {
				add(o, "NATS %s: tls.%s: %v", where, k, err)
			}
		}
		if strings.HasPrefix(where, "routes") && !regexp.MustCompile(`(?m)^\s*verify\s*[:=]\s*true`).MatchString(b) {
			add(o, "NATS %s: tls.verify: want true (routes authenticate each other by certificate)", where)
		}
		if regexp.MustCompile(`(?m)^\s*insecure\s*[:=]\s*true`).MatchString(b) {
			add(o, "NATS %s: tls.insecure: want it unset", where)
		}
	}
}

func checkNATSClientTLS(inv *Inventory, w Workload, c *corev1.Container, add addFunc) {
	o, at := w.Obj, "container "+c.Name
	urls, ok := setting(c, "nats")
	if !ok {
		urls, ok = setting(c, "nats-url")
	}
	if !ok || urls == "" {
		add(o, "%s: no --nats URL: cannot check TLS", at)
		return
	}
	for _, s := range strings.Split(urls, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Scheme != "tls" {
			add(o, "%s: NATS URL %q: want scheme tls:// (TLS on)", at, s)
		}
	}
	ca, ok := setting(c, "nats-tls-ca")
	if !ok || ca == "" {
		add(o, "%s: RINGATTN_NATS_TLS_CA (or --nats-tls-ca): missing, want the CA file from the Secret ringattn-nats-ca", at)
	} else if _, _, err := secretFile(inv, &w.Template.Spec, c, ca); err != nil {
		add(o, "%s: NATS TLS CA: %v", at, err)
	}
	if v, ok := setting(c, "nats-tls-insecure"); ok && v != "" && v != "false" && v != "0" {
		add(o, "%s: NATS TLS verification turned off (nats-tls-insecure=%s)", at, v)
	}
}

func checkRaftTLS(inv *Inventory, w Workload, c *corev1.Container, add addFunc) {
	o, at := w.Obj, "container "+c.Name
	for _, name := range []string{"raft-tls-ca", "raft-tls-cert", "raft-tls-key"} {
		env := "RINGATTN_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		f, ok := setting(c, name)
		if !ok || f == "" {
			add(o, "%s: %s (or --%s): missing, want a file from the Secret ringattn-raft-tls (Raft mutual TLS is off)", at, env, name)
			continue
		}
		if _, _, err := secretFile(inv, &w.Template.Spec, c, f); err != nil {
			add(o, "%s: %s: %v", at, env, err)
		}
	}
	if v, _ := setting(c, "raft-tls-server-name"); v != RaftTLSServerName {
		add(o, "%s: RINGATTN_RAFT_TLS_SERVER_NAME = %q, want %q (the name in every coordinator's Raft certificate)", at, v, RaftTLSServerName)
	}
}

// tlsUse says what a Secret's certificate must be valid for.
type tlsUse struct {
	names []string // DNS names a peer verifies it as
}

// certUses returns, per TLS Secret, the names its certificate must carry.
func certUses(inv *Inventory) map[string]tlsUse {
	uses := map[string]tlsUse{"ringattn-raft-tls": {names: []string{RaftTLSServerName}}}
	if w, ok := inv.BinaryWorkload("nats-server"); ok {
		var names []string
		for _, s := range Typed[*corev1.Service](inv) {
			if s.Spec.ClusterIP != corev1.ClusterIPNone && selects(w.Selector, s.Spec.Selector) {
				names = append(names, s.Name)
			}
		}
		if w.STS != nil && w.STS.Spec.ServiceName != "" {
			names = append(names, w.Obj.Name+"-0."+w.STS.Spec.ServiceName)
		}
		sort.Strings(names)
		uses["ringattn-nats-tls"] = tlsUse{names: names}
	}
	return uses
}

func checkCertificates(inv *Inventory, add addFunc) {
	uses := certUses(inv)
	for _, o := range inv.Objects {
		c, ok := o.Typed.(*Certificate)
		if !ok {
			continue
		}
		if k := c.Spec.IssuerRef.Kind; k == "" || k == "Issuer" {
			if _, ok := inv.find("Issuer", c.Spec.IssuerRef.Name); !ok {
				add(o, "spec.issuerRef: Issuer %q is not rendered", c.Spec.IssuerRef.Name)
			}
		}
		use, ok := uses[c.Spec.SecretName]
		if !ok {
			continue
		}
		for _, u := range []string{"server auth", "client auth"} {
			if !slices.Contains(c.Spec.Usages, u) {
				add(o, "spec.usages %v: want %q (Secret %s is used both ways)", c.Spec.Usages, u, c.Spec.SecretName)
			}
		}
		for _, n := range use.names {
			if !slices.ContainsFunc(c.Spec.DNSNames, func(d string) bool { return dnsMatch(d, n) }) {
				add(o, "spec.dnsNames %v: none matches %q, which peers verify it as", c.Spec.DNSNames, n)
			}
		}
	}
	for _, o := range inv.Objects {
		is, ok := o.Typed.(*Issuer)
		if !ok || is.Spec.CA == nil {
			continue
		}
		if _, ok := secretKeys(inv, is.Spec.CA.SecretName); !ok {
			add(o, "spec.ca.secretName %q: no Certificate writes it and it is not declared external", is.Spec.CA.SecretName)
		}
	}
}

// dnsMatch reports whether the SAN pattern (possibly *.x) covers name.
func dnsMatch(pattern, name string) bool {
	if pattern == name {
		return true
	}
	rest, ok := strings.CutPrefix(pattern, "*.")
	if !ok {
		return false
	}
	_, after, ok := strings.Cut(name, ".")
	return ok && after == rest
}

// checkRenderedCerts verifies the certificates in rendered Secrets (dev's
// example ones): chain to ca.crt, names, usages, validity.
func checkRenderedCerts(inv *Inventory, add addFunc) {
	uses := certUses(inv)
	for name, use := range uses {
		o, ok := inv.find("Secret", name)
		if !ok {
			continue
		}
		s := o.Typed.(*corev1.Secret)
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(s.Data["ca.crt"]) {
			add(o, "ca.crt: no PEM certificate")
			continue
		}
		b, _ := pem.Decode(s.Data["tls.crt"])
		if b == nil {
			add(o, "tls.crt: no PEM certificate")
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			add(o, "tls.crt: %v", err)
			continue
		}
		if left := time.Until(cert.NotAfter); left < MinCertValidity {
			add(o, "tls.crt expires %s (in %v): renew it", cert.NotAfter.Format(time.DateOnly), left.Round(time.Hour))
		}
		for _, n := range use.names {
			_, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: n,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}})
			if err != nil {
				add(o, "tls.crt does not verify as %q against ca.crt: %v", n, err)
			}
		}
	}
	// The CA handed to NATS clients must be the one that signed the
	// NATS server's certificate.
	srv, ok1 := inv.find("Secret", "ringattn-nats-tls")
	ca, ok2 := inv.find("Secret", "ringattn-nats-ca")
	if ok1 && ok2 {
		a, b := srv.Typed.(*corev1.Secret).Data["ca.crt"], ca.Typed.(*corev1.Secret).Data["ca.crt"]
		if string(a) != string(b) {
			add(ca, "ca.crt differs from ringattn-nats-tls's ca.crt: clients would not trust the server")
		}
	}
}
