package validate

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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
	checkTLS(inv, add)
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
