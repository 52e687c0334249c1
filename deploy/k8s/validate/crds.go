package validate

import (
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The CRDs are not in k8s.io/api. These structs hold the fields that their
// operators document (prometheus-operator's monitoring.coreos.com/v1 API
// reference, KEDA's ScaledObject specification); strict decoding rejects any
// other field. Sub-objects that ringattn does not use (TLS, auth, proxies)
// are accepted as opaque JSON under their documented names only.

// ServiceMonitor is monitoring.coreos.com/v1 ServiceMonitor.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ServiceMonitorSpec `json:"spec"`
}

// ServiceMonitorSpec is the documented spec of a ServiceMonitor.
type ServiceMonitorSpec struct {
	JobLabel              string               `json:"jobLabel,omitempty"`
	TargetLabels          []string             `json:"targetLabels,omitempty"`
	PodTargetLabels       []string             `json:"podTargetLabels,omitempty"`
	Endpoints             []Endpoint           `json:"endpoints"`
	Selector              metav1.LabelSelector `json:"selector"`
	SelectorMechanism     string               `json:"selectorMechanism,omitempty"`
	NamespaceSelector     *NamespaceSelector   `json:"namespaceSelector,omitempty"`
	SampleLimit           *uint64              `json:"sampleLimit,omitempty"`
	ScrapeProtocols       []string             `json:"scrapeProtocols,omitempty"`
	FallbackScrapeProto   string               `json:"fallbackScrapeProtocol,omitempty"`
	TargetLimit           *uint64              `json:"targetLimit,omitempty"`
	LabelLimit            *uint64              `json:"labelLimit,omitempty"`
	LabelNameLengthLimit  *uint64              `json:"labelNameLengthLimit,omitempty"`
	LabelValueLengthLimit *uint64              `json:"labelValueLengthLimit,omitempty"`
	NativeHistBucketLimit *uint64              `json:"nativeHistogramBucketLimit,omitempty"`
	NativeHistMinFactor   json.RawMessage      `json:"nativeHistogramMinBucketFactor,omitempty"`
	ConvertClassicToNHCB  *bool                `json:"convertClassicHistogramsToNHCB,omitempty"`
	ScrapeClassicHist     *bool                `json:"scrapeClassicHistograms,omitempty"`
	KeepDroppedTargets    *uint64              `json:"keepDroppedTargets,omitempty"`
	AttachMetadata        *struct {
		Node *bool `json:"node,omitempty"`
	} `json:"attachMetadata,omitempty"`
	ScrapeClass          string `json:"scrapeClass,omitempty"`
	BodySizeLimit        string `json:"bodySizeLimit,omitempty"`
	ServiceDiscoveryRole string `json:"serviceDiscoveryRole,omitempty"`
}

// NamespaceSelector selects the namespaces of the Services.
type NamespaceSelector struct {
	Any        bool     `json:"any,omitempty"`
	MatchNames []string `json:"matchNames,omitempty"`
}

// Endpoint is one scrape endpoint of a ServiceMonitor.
type Endpoint struct {
	Port                     string              `json:"port,omitempty"`
	TargetPort               *intstr.IntOrString `json:"targetPort,omitempty"`
	Path                     string              `json:"path,omitempty"`
	Scheme                   string              `json:"scheme,omitempty"`
	Params                   map[string][]string `json:"params,omitempty"`
	Interval                 string              `json:"interval,omitempty"`
	ScrapeTimeout            string              `json:"scrapeTimeout,omitempty"`
	HonorLabels              bool                `json:"honorLabels,omitempty"`
	HonorTimestamps          *bool               `json:"honorTimestamps,omitempty"`
	TrackTimestampsStaleness *bool               `json:"trackTimestampsStaleness,omitempty"`
	MetricRelabelings        []RelabelConfig     `json:"metricRelabelings,omitempty"`
	Relabelings              []RelabelConfig     `json:"relabelings,omitempty"`
	FollowRedirects          *bool               `json:"followRedirects,omitempty"`
	EnableHTTP2              *bool               `json:"enableHttp2,omitempty"`
	FilterRunning            *bool               `json:"filterRunning,omitempty"`
	// Opaque: documented, not used by ringattn.
	TLSConfig            json.RawMessage `json:"tlsConfig,omitempty"`
	BearerTokenFile      string          `json:"bearerTokenFile,omitempty"`
	BearerTokenSecret    json.RawMessage `json:"bearerTokenSecret,omitempty"`
	Authorization        json.RawMessage `json:"authorization,omitempty"`
	BasicAuth            json.RawMessage `json:"basicAuth,omitempty"`
	OAuth2               json.RawMessage `json:"oauth2,omitempty"`
	ProxyURL             string          `json:"proxyUrl,omitempty"`
	NoProxy              string          `json:"noProxy,omitempty"`
	ProxyFromEnvironment *bool           `json:"proxyFromEnvironment,omitempty"`
	ProxyConnectHeader   json.RawMessage `json:"proxyConnectHeader,omitempty"`
}

// RelabelConfig is a Prometheus relabeling rule.
type RelabelConfig struct {
	SourceLabels []string `json:"sourceLabels,omitempty"`
	Separator    *string  `json:"separator,omitempty"`
	TargetLabel  string   `json:"targetLabel,omitempty"`
	Regex        string   `json:"regex,omitempty"`
	Modulus      uint64   `json:"modulus,omitempty"`
	Replacement  *string  `json:"replacement,omitempty"`
	Action       string   `json:"action,omitempty"`
}

// promDuration is the CRD's pattern for Prometheus durations.
var promDuration = regexp.MustCompile(`^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$`)

func (s *ServiceMonitor) validate() error {
	if len(s.Spec.Endpoints) == 0 {
		return fmt.Errorf("spec.endpoints: want at least one endpoint")
	}
	if len(s.Spec.Selector.MatchLabels) == 0 && len(s.Spec.Selector.MatchExpressions) == 0 {
		return fmt.Errorf("spec.selector: empty, want the labels of the Services to scrape")
	}
	for i, e := range s.Spec.Endpoints {
		if (e.Port == "") == (e.TargetPort == nil) {
			return fmt.Errorf("spec.endpoints[%d]: want exactly one of port (a Service port name) and targetPort", i)
		}
		for name, d := range map[string]string{"interval": e.Interval, "scrapeTimeout": e.ScrapeTimeout} {
			if d != "" && !promDuration.MatchString(d) {
				return fmt.Errorf("spec.endpoints[%d].%s = %q: want a Prometheus duration like 30s", i, name, d)
			}
		}
		switch e.Scheme {
		case "", "http", "https", "HTTP", "HTTPS":
		default:
			return fmt.Errorf("spec.endpoints[%d].scheme = %q: want http or https", i, e.Scheme)
		}
		if e.Path != "" && e.Path[0] != '/' {
			return fmt.Errorf("spec.endpoints[%d].path = %q: want an absolute path", i, e.Path)
		}
		for j, r := range append(append([]RelabelConfig{}, e.Relabelings...), e.MetricRelabelings...) {
			if r.Regex != "" {
				if _, err := regexp.Compile(r.Regex); err != nil {
					return fmt.Errorf("spec.endpoints[%d] relabeling %d: regex %q: %w", i, j, r.Regex, err)
				}
			}
		}
	}
	return nil
}

// ScaledObject is keda.sh/v1alpha1 ScaledObject.
type ScaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ScaledObjectSpec `json:"spec"`
}

// ScaledObjectSpec is the documented spec of a ScaledObject.
type ScaledObjectSpec struct {
	ScaleTargetRef        ScaleTarget    `json:"scaleTargetRef"`
	PollingInterval       *int32         `json:"pollingInterval,omitempty"`
	InitialCooldownPeriod *int32         `json:"initialCooldownPeriod,omitempty"`
	CooldownPeriod        *int32         `json:"cooldownPeriod,omitempty"`
	IdleReplicaCount      *int32         `json:"idleReplicaCount,omitempty"`
	MinReplicaCount       *int32         `json:"minReplicaCount,omitempty"`
	MaxReplicaCount       *int32         `json:"maxReplicaCount,omitempty"`
	Advanced              *KEDAAdvanced  `json:"advanced,omitempty"`
	Triggers              []ScaleTrigger `json:"triggers"`
	Fallback              *KEDAFallback  `json:"fallback,omitempty"`
}

// ScaleTarget is the workload a ScaledObject scales.
type ScaleTarget struct {
	APIVersion             string `json:"apiVersion,omitempty"`
	Kind                   string `json:"kind,omitempty"`
	Name                   string `json:"name"`
	EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
}

// KEDAAdvanced is spec.advanced.
type KEDAAdvanced struct {
	RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
	HorizontalPodAutoscalerConfig *struct {
		Name     string                                         `json:"name,omitempty"`
		Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
	} `json:"horizontalPodAutoscalerConfig,omitempty"`
	ScalingModifiers *struct {
		Formula          string `json:"formula,omitempty"`
		Target           string `json:"target,omitempty"`
		ActivationTarget string `json:"activationTarget,omitempty"`
		MetricType       string `json:"metricType,omitempty"`
	} `json:"scalingModifiers,omitempty"`
}

// KEDAFallback is spec.fallback.
type KEDAFallback struct {
	FailureThreshold int32  `json:"failureThreshold"`
	Replicas         int32  `json:"replicas"`
	Behavior         string `json:"behavior,omitempty"`
}

// ScaleTrigger is one entry of spec.triggers.
type ScaleTrigger struct {
	Type              string            `json:"type"`
	Name              string            `json:"name,omitempty"`
	UseCachedMetrics  bool              `json:"useCachedMetrics,omitempty"`
	Metadata          map[string]string `json:"metadata"`
	AuthenticationRef *struct {
		Name string `json:"name"`
		Kind string `json:"kind,omitempty"`
	} `json:"authenticationRef,omitempty"`
	MetricType string `json:"metricType,omitempty"`
}

// prometheusTriggerKeys are the documented metadata keys of KEDA's
// prometheus scaler; required ones map to true.
var prometheusTriggerKeys = map[string]bool{
	"serverAddress": true, "query": true, "threshold": true,
	"activationThreshold": false, "namespace": false, "queryParameters": false,
	"customHeaders": false, "ignoreNullValues": false, "unsafeSsl": false,
	"authModes": false, "timeout": false,
}

func (s *ScaledObject) validate() error {
	sp := s.Spec
	if sp.ScaleTargetRef.Name == "" {
		return fmt.Errorf("spec.scaleTargetRef.name: empty, want the workload to scale")
	}
	if sp.MinReplicaCount != nil && sp.MaxReplicaCount != nil && *sp.MinReplicaCount > *sp.MaxReplicaCount {
		return fmt.Errorf("spec.minReplicaCount = %d > spec.maxReplicaCount = %d", *sp.MinReplicaCount, *sp.MaxReplicaCount)
	}
	if len(sp.Triggers) == 0 {
		return fmt.Errorf("spec.triggers: want at least one trigger")
	}
	for i, t := range sp.Triggers {
		switch t.MetricType {
		case "", "AverageValue", "Value", "Utilization":
		default:
			return fmt.Errorf("spec.triggers[%d].metricType = %q: want AverageValue, Value or Utilization", i, t.MetricType)
		}
		if t.Type != "prometheus" {
			continue // ringattn uses only the prometheus scaler; others are not checked deeper
		}
		for k := range t.Metadata {
			if _, ok := prometheusTriggerKeys[k]; !ok {
				return fmt.Errorf("spec.triggers[%d].metadata.%s: not a key of the prometheus scaler", i, k)
			}
		}
		for k, required := range prometheusTriggerKeys {
			if required && t.Metadata[k] == "" {
				return fmt.Errorf("spec.triggers[%d].metadata.%s: required by the prometheus scaler", i, k)
			}
		}
		if u, err := url.Parse(t.Metadata["serverAddress"]); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("spec.triggers[%d].metadata.serverAddress = %q: want an http(s) URL", i, t.Metadata["serverAddress"])
		}
		for _, k := range []string{"threshold", "activationThreshold"} {
			if v, ok := t.Metadata[k]; ok {
				if _, err := strconv.ParseFloat(v, 64); err != nil {
					return fmt.Errorf("spec.triggers[%d].metadata.%s = %q: want a number", i, k, v)
				}
			}
		}
		for _, k := range []string{"ignoreNullValues", "unsafeSsl"} {
			if v, ok := t.Metadata[k]; ok {
				if _, err := strconv.ParseBool(v); err != nil {
					return fmt.Errorf("spec.triggers[%d].metadata.%s = %q: want true or false", i, k, v)
				}
			}
		}
	}
	return nil
}

// AdapterConfig is prometheus-adapter's configuration file (the rules that
// turn Prometheus series into custom and external metrics).
type AdapterConfig struct {
	Rules         []AdapterRule   `json:"rules,omitempty"`
	ExternalRules []AdapterRule   `json:"externalRules,omitempty"`
	ResourceRules json.RawMessage `json:"resourceRules,omitempty"`
}

// AdapterRule is one discovery rule of prometheus-adapter.
type AdapterRule struct {
	SeriesQuery   string `json:"seriesQuery"`
	SeriesFilters []struct {
		Is    string `json:"is,omitempty"`
		IsNot string `json:"isNot,omitempty"`
	} `json:"seriesFilters,omitempty"`
	Resources struct {
		Overrides map[string]struct {
			Group    string `json:"group,omitempty"`
			Resource string `json:"resource"`
		} `json:"overrides,omitempty"`
		Template   string `json:"template,omitempty"`
		Namespaced *bool  `json:"namespaced,omitempty"`
	} `json:"resources"`
	Name struct {
		Matches string `json:"matches"`
		As      string `json:"as,omitempty"`
	} `json:"name"`
	MetricsQuery string `json:"metricsQuery"`
}
