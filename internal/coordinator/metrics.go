package coordinator

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	imetrics "github.com/ringattn/ringattn/internal/metrics"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// metrics are the coordinator's Prometheus series (DESIGN §7).
type metrics struct {
	reg         prometheus.Registerer
	cs          []prometheus.Collector
	workersLive prometheus.Gauge
	replans     prometheus.Counter
	jobDuration *prometheus.HistogramVec
	apiRequests *prometheus.CounterVec
	reports     *prometheus.CounterVec
	assignments *prometheus.CounterVec
	// panics counts recovered panics by where they happened (contain.go).
	panics *prometheus.CounterVec
	// reportsRefused counts reports refused as untrustworthy, by reason.
	reportsRefused *prometheus.CounterVec
	// stalls counts ranks re-planned by the progress watchdog.
	stalls prometheus.Counter
	// swept counts upload namespaces deleted by the sweeper.
	swept prometheus.Counter
	// verifyFailures counts output blocks the store did not hold as
	// reported when a job was about to succeed, by problem.
	verifyFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, c *Coordinator) (*metrics, error) {
	ns := imetrics.Namespace
	m := &metrics{
		reg: reg,
		workersLive: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "workers_live",
			Help: "Workers heard from within the heartbeat timeout (leader only; 0 elsewhere)."}),
		replans: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replans_total",
			Help: "Epochs started to re-plan unfinished blocks after a worker failed or left."}),
		jobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "job_duration_seconds",
			Help: "Submit-to-finish time of jobs finished by this leader, by final state.", Buckets: imetrics.DurationBuckets}, []string{"state"}),
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "api_requests_total",
			Help: "Client API requests answered, by endpoint and result code."}, []string{"endpoint", "code"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reports_total",
			Help: "Worker shard reports, by acknowledgement status."}, []string{"status"}),
		assignments: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "assignments_total",
			Help: "Assignments sent to workers, by result."}, []string{"result"}),
	}
	m.panics = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "coordinator_panics_total",
		Help: "Panics recovered in the leader, by where (planning, scheduling, report, heartbeat, api_<endpoint>, ...)."}, []string{"where"})
	m.reportsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reports_refused_total",
		Help: "Worker reports refused as untrustworthy (malformed, not_owner, bad_checksums, ...)."}, []string{"reason"})
	m.stalls = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "rank_stalls_total",
		Help: "Ranks re-planned because their steps_done stopped growing while their worker heartbeat."})
	m.swept = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "namespaces_swept_total",
		Help: "Upload namespaces no job referenced, deleted by the leader's sweeper after the grace period."})
	m.verifyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "output_verify_failures_total",
		Help: "Output blocks found missing or with another checksum than reported, before a job could succeed."}, []string{"problem"})
	m.cs = []prometheus.Collector{m.workersLive, m.replans, m.jobDuration, m.apiRequests, m.reports, m.assignments,
		m.panics, m.reportsRefused, m.stalls, m.swept, m.verifyFailures}
	for st := pb.JobState_JOB_STATE_QUEUED; st <= pb.JobState_JOB_STATE_EXPIRED; st++ {
		st := st
		m.cs = append(m.cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "jobs",
			Help: "Jobs in the replicated state, by state.", ConstLabels: prometheus.Labels{"state": stateName(st)}},
			func() float64 {
				var n int
				c.fsm.view(func(s *State) { n = s.Counts()[st] })
				return float64(n)
			}))
	}
	raftStates := map[raft.RaftState]float64{raft.Follower: 0, raft.Candidate: 1, raft.Leader: 2, raft.Shutdown: 3}
	m.cs = append(m.cs,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "queue_depth", Help: "Jobs QUEUED."},
			func() float64 {
				var n int
				c.fsm.view(func(s *State) { n = s.Counts()[pb.JobState_JOB_STATE_QUEUED] })
				return float64(n)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "raft_state",
			Help: "Raft state: 0 follower, 1 candidate, 2 leader, 3 shutdown."},
			func() float64 { return raftStates[c.raft.State()] }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "raft_term", Help: "Current Raft term."},
			func() float64 { return float64(c.raft.CurrentTerm()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "raft_commit_index", Help: "Raft commit index."},
			func() float64 { return float64(c.raft.CommitIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "raft_applied_index", Help: "Last log index applied to the state."},
			func() float64 { return float64(c.raft.AppliedIndex()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "raft_last_contact_seconds",
			Help: "Seconds since this follower last heard from the leader (0 on the leader)."},
			func() float64 {
				if c.raft.State() == raft.Leader {
					return 0
				}
				d, err := time.ParseDuration(c.raft.Stats()["last_contact"])
				if err != nil {
					return 0
				}
				return d.Seconds()
			}),
	)
	for i, col := range m.cs {
		if err := reg.Register(col); err != nil {
			for _, done := range m.cs[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) unregister() {
	for _, col := range m.cs {
		m.reg.Unregister(col)
	}
}
