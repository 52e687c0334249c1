// Package metrics holds the small Prometheus helpers shared by ringattn
// binaries: a per-process registry (never the global default) with the Go
// and process collectors, the metric namespace, and the /metrics handler.
// Each service defines its own metrics against an injected
// prometheus.Registerer.
package metrics
