package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringattn/ringattn/internal/metrics"
)

// workerMetrics are the worker's Prometheus metrics (DESIGN §7), all named
// ringattn_worker_*.
type workerMetrics struct {
	flops          prometheus.Counter
	gflops         prometheus.Gauge
	stepSeconds    prometheus.Histogram
	ringBytes      *prometheus.CounterVec // direction = sent|received
	storeBytes     *prometheus.CounterVec // direction = read|written
	fallbacks      prometheus.Counter
	shardsRunning  prometheus.Gauge
	shards         *prometheus.CounterVec // result = done|failed|aborted|abandoned
	reports        *prometheus.CounterVec // status = accepted|duplicate|stale|rejected|retry|error
	assignments    *prometheus.CounterVec // result = accepted|repeated (re-issued, already held)|rejected
	heartbeats     *prometheus.CounterVec // result = acked|unanswered
	leaving        prometheus.Gauge
	lastShardGFLOP prometheus.Gauge
	panics         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*workerMetrics, error) {
	const ns, sub = metrics.Namespace, "worker"
	m := &workerMetrics{
		flops: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "flops_total", Help: "Attention FLOPs done (4·D per visible query/key pair, per head and batch)."}),
		gflops: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "kernel_gflops", Help: "Kernel speed measured at start, in GFLOP/s."}),
		stepSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "ring_step_seconds", Help: "Wall time of one ring step of a rank.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14)}),
		ringBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "ring_bytes_total", Help: "Key/value bytes moved over the ring."}, []string{"direction"}),
		storeBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "store_bytes_total", Help: "Tensor bytes read from and written to the store."}, []string{"direction"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "store_fallbacks_total", Help: "Ring frames that did not arrive in time and were fetched from the store."}),
		shardsRunning: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "shards_running", Help: "Shards (ranks) computing now."}),
		shards: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "shards_total", Help: "Shards ended, by result."}, []string{"result"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "reports_total", Help: "Report attempts, by the leader's answer."}, []string{"status"}),
		assignments: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "assignments_total", Help: "Assignments received, by outcome."}, []string{"result"}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "heartbeats_total", Help: "Heartbeats sent, by whether a leader answered."}, []string{"result"}),
		leaving: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "leaving", Help: "1 while the worker drains."}),
		lastShardGFLOP: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "last_shard_gflops", Help: "GFLOP/s of the last finished shard (visible FLOPs over its compute time)."}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "panics_total", Help: "Panics recovered in NATS handlers and rank computations (each logged with its stack)."}),
	}
	for _, c := range []prometheus.Collector{m.flops, m.gflops, m.stepSeconds, m.ringBytes, m.storeBytes,
		m.fallbacks, m.shardsRunning, m.shards, m.reports, m.assignments, m.heartbeats, m.leaving, m.lastShardGFLOP, m.panics} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Make the labelled series visible at zero.
	for _, d := range []string{"sent", "received"} {
		m.ringBytes.WithLabelValues(d)
	}
	for _, d := range []string{"read", "written"} {
		m.storeBytes.WithLabelValues(d)
	}
	for _, r := range []string{"done", "failed", "aborted", "abandoned"} {
		m.shards.WithLabelValues(r)
	}
	return m, nil
}
