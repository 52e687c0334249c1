package validate

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

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
