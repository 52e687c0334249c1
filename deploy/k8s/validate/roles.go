package validate

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

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
