package validate

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

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
