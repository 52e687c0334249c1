package validate

import (
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// schemas maps apiVersion/kind to a constructor of its strict schema. A
// kind missing here is an error, never skipped.
var schemas = map[string]func() any{
	"v1/Namespace":                            func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":                       func() any { return new(corev1.ServiceAccount) },
	"v1/Service":                              func() any { return new(corev1.Service) },
	"v1/ConfigMap":                            func() any { return new(corev1.ConfigMap) },
	"v1/Secret":                               func() any { return new(corev1.Secret) },
	"apps/v1/StatefulSet":                     func() any { return new(appsv1.StatefulSet) },
	"apps/v1/Deployment":                      func() any { return new(appsv1.Deployment) },
	"policy/v1/PodDisruptionBudget":           func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return new(networkingv1.NetworkPolicy) },
	"autoscaling/v2/HorizontalPodAutoscaler":  func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return new(ServiceMonitor) },
	"keda.sh/v1alpha1/ScaledObject":           func() any { return new(ScaledObject) },
}

// Decode decodes o.YAML strictly into the schema of its kind and stores it
// in o.Typed: an unknown or misspelled field, a duplicate field or a value
// of the wrong type is an error naming the object and the field. The CRD
// structs then check their documented value constraints.
func Decode(o *Object) error {
	mk, ok := schemas[o.APIVersion+"/"+o.Kind]
	if !ok {
		return fmt.Errorf("%w: %s: apiVersion %q kind %q has no schema here", ErrUnknownKind, o.ID(), o.APIVersion, o.Kind)
	}
	v := mk()
	if err := yaml.UnmarshalStrict(o.YAML, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDecode, o.ID(), err)
	}
	if c, ok := v.(interface{ validate() error }); ok {
		if err := c.validate(); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrDecode, o.ID(), err)
		}
	}
	o.Typed = v
	return nil
}

func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}
