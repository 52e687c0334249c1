package coordinator

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func TestCoordinatorAPIValidation(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) {
		c.Limits.MaxQueued = 3
		c.Limits.MaxJobBytes = 1 << 30
	})
	nc := connect(t, tc.url)
	tc.leader()
	cases := []struct {
		name  string
		edit  func(s *pb.JobSpec)
		code  pb.ErrorCode
		field string
		msg   string
	}{
		{"no kind", func(s *pb.JobSpec) { s.Kind = 0 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.kind", "want JOB_KIND_ATTENTION or JOB_KIND_MHA"},
		{"gqa", func(s *pb.JobSpec) { s.Hq, s.Hkv = 6, 4 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.hkv", "hq = 6 is not a multiple of hkv = 4"},
		{"d limit", func(s *pb.JobSpec) { s.D = 512 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.d", "512: want 1..256"},
		{"zero n", func(s *pb.JobSpec) { s.N = 0 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.n", "want 1.."},
		{"neg batch", func(s *pb.JobSpec) { s.B = -1 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.b", "want 1..1024"},
		{"nan scale", func(s *pb.JobSpec) { s.Scale = -2 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.scale", "(or 0 for 1/sqrt(d))"},
		{"dtype", func(s *pb.JobSpec) { s.WireDtype = 9 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.wire_dtype", "WIRE_DTYPE_BF16"},
		{"strategy", func(s *pb.JobSpec) { s.Strategy = "spiral" }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.strategy", `"spiral"`},
		{"window", func(s *pb.JobSpec) { s.Mask.Windowed, s.Mask.WindowLeft = true, -5 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.mask", "-1 for unbounded"},
		{"seqlens", func(s *pb.JobSpec) { s.Mask.Seqlens = []int64{100, 100} }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.mask", "sequence length 256"},
		{"mha heads", func(s *pb.JobSpec) { s.Kind, s.DModel = pb.JobKind_JOB_KIND_MHA, 64 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.hkv", "hkv = hq = 4"},
		{"attn d_model", func(s *pb.JobSpec) { s.DModel = 64 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.d_model", "attention jobs want 0"},
		{"past deadline", func(s *pb.JobSpec) { s.DeadlineUnixMs = 1000 }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.deadline_unix_ms", "in the future"},
		{"bad key", func(s *pb.JobSpec) { s.IdempotencyKey = "a.b" }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.idempotency_key", "[A-Za-z0-9_-]"},
		{"no inputs", func(s *pb.JobSpec) { s.IdempotencyKey, s.InputRef = "", "" }, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "spec.input_ref", "store namespace"},
		{"too big", func(s *pb.JobSpec) { s.N, s.Nk, s.Hq, s.D = 1<<20, 1<<20, 64, 256 }, pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, "spec", "Limits.MaxJobBytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := attnSpec("v-"+strings.ReplaceAll(c.name, " ", "-"), 256)
			c.edit(spec)
			r := apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: spec}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
			e := r.GetError()
			// The field may name a sub-field (spec.mask.window_left for spec.mask).
			if e.GetCode() != c.code || (e.GetField() != c.field && !strings.HasPrefix(e.GetField(), c.field+".")) ||
				!strings.Contains(e.GetMessage(), c.msg) || r.Job != nil {
				t.Fatalf("error = %v, want %v on %s containing %q", e, c.code, c.field, c.msg)
			}
		})
	}
	// The error also travels as a micro service error header.
	data, _ := proto.Marshal(&pb.SubmitRequest{})
	m, err := nc.NATS().Request(transport.NewSubjects("").API(EndpointSubmit), data, time.Second)
	noErr(t, err)
	if m.Header.Get("Nats-Service-Error-Code") != "400" || !strings.Contains(m.Header.Get("Nats-Service-Error"), "spec: missing") {
		t.Fatalf("headers = %v", m.Header)
	}
	m, err = nc.NATS().Request(transport.NewSubjects("").API(EndpointGet), []byte{0xff, 0xff}, time.Second)
	noErr(t, err)
	if m.Header.Get("Nats-Service-Error-Code") != "400" {
		t.Fatalf("garbage request: headers = %v", m.Header)
	}

	// Idempotency: same key, different spec is refused naming the job.
	first := submit(t, nc, attnSpec("idem", 256))
	other := attnSpec("idem", 512)
	r := apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: other}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
	if r.GetError().GetField() != "spec.idempotency_key" || !strings.Contains(r.GetError().GetMessage(), first.Job.Id) {
		t.Fatalf("conflicting key: %v", r.GetError())
	}
	// Queue limit (3): two more fit, the next is refused.
	submit(t, nc, attnSpec("q2", 256))
	submit(t, nc, attnSpec("q3", 256))
	r = apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: attnSpec("q4", 256)}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
	if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED || !strings.Contains(r.GetError().GetMessage(), "queue full") {
		t.Fatalf("queue limit: %v", r.GetError())
	}
	// Unknown and malformed job ids.
	g := apiRetry(t, nc, EndpointGet, &pb.GetRequest{JobId: "j-nope"}, func() *pb.GetReply { return &pb.GetReply{} })
	if g.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND || g.GetError().GetField() != "job_id" || !strings.Contains(g.GetError().GetMessage(), "j-nope") {
		t.Fatalf("unknown job: %v", g.GetError())
	}
	g = apiRetry(t, nc, EndpointGet, &pb.GetRequest{JobId: "a.>"}, func() *pb.GetReply { return &pb.GetReply{} })
	if g.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
		t.Fatalf("bad job id: %v", g.GetError())
	}
	// Cancel a queued job; cancel again is fine; list filters.
	c := apiRetry(t, nc, EndpointCancel, &pb.CancelRequest{JobId: first.Job.Id, Reason: "changed my mind"}, func() *pb.CancelReply { return &pb.CancelReply{} })
	if c.Error != nil || c.Job.State != pb.JobState_JOB_STATE_CANCELED || c.Job.Reason != "changed my mind" {
		t.Fatalf("cancel: %v", c)
	}
	c = apiRetry(t, nc, EndpointCancel, &pb.CancelRequest{JobId: first.Job.Id}, func() *pb.CancelReply { return &pb.CancelReply{} })
	if c.Error != nil || c.Job.State != pb.JobState_JOB_STATE_CANCELED {
		t.Fatalf("second cancel: %v", c)
	}
	l := apiRetry(t, nc, EndpointList, &pb.ListRequest{States: []pb.JobState{pb.JobState_JOB_STATE_QUEUED}}, func() *pb.ListReply { return &pb.ListReply{} })
	if l.Error != nil || l.Total != 2 || len(l.Jobs) != 2 || l.Jobs[0].Spec.IdempotencyKey != "q3" {
		t.Fatalf("list queued: %v", l)
	}
	l = apiRetry(t, nc, EndpointList, &pb.ListRequest{Limit: 1}, func() *pb.ListReply { return &pb.ListReply{} })
	if l.Total != 3 || len(l.Jobs) != 1 {
		t.Fatalf("list limit 1: total %d, %d jobs", l.Total, len(l.Jobs))
	}
}

func TestCoordinatorConfig(t *testing.T) {
	peers, err := ParsePeers("a=127.0.0.1:7000, b=host-b:7001,,c=[::1]:7002")
	if err != nil || len(peers) != 3 || peers[1] != (Peer{ID: "b", Addr: "host-b:7001"}) {
		t.Fatalf("ParsePeers = %v, %v", peers, err)
	}
	for _, bad := range []string{"a", "a=", "=x:1", "a=nohost", "a=h:1,a=h:2"} {
		if _, err := ParsePeers(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePeers(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	good := DefaultConfig()
	good.NodeID = "n1"
	if err := good.Validate(); err != nil {
		t.Fatalf("default config with a node id: %v", err)
	}
	for field, edit := range map[string]func(*Config){
		"NodeID":                 func(c *Config) { c.NodeID = "" },
		"DataDir":                func(c *Config) { c.DataDir = "" },
		"RaftAddr":               func(c *Config) { c.RaftAddr = "nope" },
		"HTTPAddr":               func(c *Config) { c.HTTPAddr = "8080" },
		"HeartbeatTimeout":       func(c *Config) { c.HeartbeatTimeout = 0 },
		"RaftLeaderLeaseTimeout": func(c *Config) { c.RaftLeaderLeaseTimeout = 2 * time.Second },
		"MaxEpochs":              func(c *Config) { c.MaxEpochs = 0 },
		"Limits.MaxD":            func(c *Config) { c.Limits.MaxD = 0 },
		"Peers":                  func(c *Config) { c.Peers = []Peer{{ID: "a", Addr: "x:1"}, {ID: "a", Addr: "y:1"}} },
		"NATS":                   func(c *Config) { c.NATS.Prefix = "bad prefix" },
		"MinRankTime":            func(c *Config) { c.MinRankTime = time.Hour + time.Nanosecond },
	} {
		c := good
		edit(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: Validate = %v", field, err)
		}
	}
	// MinRankTime: 0 (size rule off) and 1h are the limits.
	for _, d := range []time.Duration{0, time.Hour} {
		c := good
		c.MinRankTime = d
		if err := c.Validate(); err != nil {
			t.Errorf("MinRankTime %v: %v", d, err)
		}
	}
	neg := good
	neg.MinRankTime = -time.Nanosecond
	if err := neg.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("MinRankTime -1ns: %v", err)
	}
	// New refuses an invalid config before touching anything.
	if _, err := New(Config{}, Deps{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("New(zero config) = %v", err)
	}
}

// TestCoordinatorHeartbeatAborts: a worker holding shards of finished or
// unknown jobs is told to drop them.
func TestCoordinatorHeartbeatAborts(t *testing.T) {
	tc := newCluster(t, 1, nil)
	nc := connect(t, tc.url)
	tc.leader()
	r := submit(t, nc, attnSpec("ab", 256))
	apiRetry(t, nc, EndpointCancel, &pb.CancelRequest{JobId: r.Job.Id}, func() *pb.CancelReply { return &pb.CancelReply{} })
	hb := &pb.Heartbeat{WorkerId: "w1", Running: []*pb.ShardRef{{JobId: r.Job.Id, Epoch: 1}, {JobId: "j-gone", Epoch: 3, Rank: 1}}}
	data, _ := proto.Marshal(hb)
	var ack pb.HeartbeatAck
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		m, err := nc.NATS().Request(transport.NewSubjects("").Heartbeat(), data, time.Second)
		if err != nil {
			return err
		}
		return proto.Unmarshal(m.Data, &ack)
	})
	if ack.LeaderId != "c0" || len(ack.Abort) != 2 {
		t.Fatalf("heartbeat ack = %v", &ack)
	}
	// Malformed reports are rejected, not retried forever.
	m, err := nc.NATS().Request(transport.NewSubjects("").Report(), []byte{0xff}, time.Second)
	noErr(t, err)
	var ra pb.ReportAck
	noErr(t, proto.Unmarshal(m.Data, &ra))
	if ra.Status != pb.ReportStatus_REPORT_STATUS_REJECTED {
		t.Fatalf("malformed report ack = %v", &ra)
	}
	rep, _ := proto.Marshal(&pb.Report{WorkerId: "w1", JobId: r.Job.Id, Epoch: 1, Result: &pb.Report_Done{Done: &pb.ShardDone{}}})
	m, err = nc.NATS().Request(transport.NewSubjects("").Report(), rep, time.Second)
	noErr(t, err)
	noErr(t, proto.Unmarshal(m.Data, &ra))
	if ra.Status != pb.ReportStatus_REPORT_STATUS_STALE || ra.JobState != pb.JobState_JOB_STATE_CANCELED {
		t.Fatalf("report for a canceled job: %v", &ra)
	}
}
