package validate

import (
	"maps"
	"regexp"
	"slices"
	"strings"
	"text/template"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

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
