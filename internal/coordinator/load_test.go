package coordinator

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestFSMSubmitQueueLimit: the queue limit carried by a submit is decided
// in Apply: at the limit the next submit is refused, a retry of a known key
// still returns its job, and entries without a limit (older logs) apply.
func TestFSMSubmitQueueLimit(t *testing.T) {
	f := newFSM(nil)
	sub := func(i uint64, id, key string, limit int64) *Result {
		return applyT(t, f, i, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: id, Spec: testSpec(key), UnixMs: 1, MaxQueued: limit})
	}
	wantOK(t, sub(1, "a", "ka", 2))
	wantOK(t, sub(2, "b", "kb", 2)) // at the limit: 1 queued before it
	r := sub(3, "c", "kc", 2)       // just past: 2 queued
	wantErr(t, r, ErrQueueFull)
	wantErr(t, r, ErrLimit)
	if !strings.Contains(r.Err.Error(), "2 jobs queued, want fewer than 2 (Limits.MaxQueued)") {
		t.Fatalf("refusal = %v", r.Err)
	}
	if r := sub(4, "a2", "ka", 2); r.Err != nil || !r.Existing || r.Job.Id != "a" {
		t.Fatalf("retry of a known key with a full queue: %+v", r)
	}
	wantOK(t, sub(5, "d", "kd", 0)) // no limit in the entry
	wantOK(t, sub(6, "e", "ke", 4)) // a larger limit of a later leader
	// A job leaving the queue makes room.
	wantOK(t, applyT(t, f, 7, cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "a", Reason: "x", UnixMs: 2}))
	wantOK(t, sub(8, "f", "kf", 4)) // b, d, e queued
	wantErr(t, sub(9, "g", "kg", 4), ErrQueueFull)
	var n int
	f.view(func(s *State) { n = s.count(pb.JobState_JOB_STATE_QUEUED) })
	if n != 4 {
		t.Fatalf("%d queued, want 4", n)
	}
}

// TestAPIConcurrentSubmitsQueueLimit: many submits at once against a
// queue of 5 get exactly 5 jobs; the rest are refused with the queue
// limit and a retry-after. (The limit used to be read before the Raft
// apply, so concurrent submits all passed it.)
func TestAPIConcurrentSubmitsQueueLimit(t *testing.T) {
	const limit, n = 5, 40
	tc := newCluster(t, 1, func(c *Config) { c.Limits.MaxQueued = limit })
	nc := connect(t, tc.url)
	tc.leader()
	apiRetry(t, nc, EndpointCluster, &pb.ClusterRequest{}, func() *pb.ClusterReply { return &pb.ClusterReply{} })
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted int
		refused  []*pb.Error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := apiRetry(t, nc, EndpointSubmit, &pb.SubmitRequest{Spec: attnSpec(fmt.Sprintf("cq-%d", i), 256)}, func() *pb.SubmitReply { return &pb.SubmitReply{} })
			mu.Lock()
			defer mu.Unlock()
			if r.GetError() == nil {
				accepted++
			} else {
				refused = append(refused, r.GetError())
			}
		}()
	}
	wg.Wait()
	if accepted != limit || len(refused) != n-limit {
		t.Fatalf("%d accepted, %d refused: want %d and %d", accepted, len(refused), limit, n-limit)
	}
	for _, e := range refused {
		if e.GetCode() != pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED || e.GetField() != "" ||
			!strings.Contains(e.GetMessage(), "queue full") || !strings.Contains(e.GetMessage(), "Limits.MaxQueued") || e.GetRetryAfterMs() <= 0 {
			t.Fatalf("refusal = %v", e)
		}
	}
	l := apiRetry(t, nc, EndpointList, &pb.ListRequest{States: []pb.JobState{pb.JobState_JOB_STATE_QUEUED}}, func() *pb.ListReply { return &pb.ListReply{} })
	if l.Total != limit {
		t.Fatalf("%d jobs queued, want %d", l.Total, limit)
	}
}

// TestAPIBusyWhenSaturated: with every request slot taken, further API
// requests are answered BUSY at once with a retry-after (no goroutine per
// request piles up), and worker reports over their bound get RETRY; once
// the slots free up requests are served again.
func TestAPIBusyWhenSaturated(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) {
		c.Limits.MaxConcurrentRequests = 2
		c.Limits.MaxConcurrentReports = 1
	})
	nc := connect(t, tc.url)
	c := tc.nodes[tc.leader()]
	apiRetry(t, nc, EndpointCluster, &pb.ClusterRequest{}, func() *pb.ClusterReply { return &pb.ClusterReply{} })
	release := make(chan struct{})
	var held sync.WaitGroup
	held.Add(3)
	c.setHooks(&hooks{
		api: func(endpoint string, _ []byte) {
			if endpoint == EndpointGet {
				held.Done()
				<-release
			}
		},
		report: func([]byte) {
			held.Done()
			<-release
		},
	})
	subj := transport.NewSubjects("")
	getData, _ := proto.Marshal(&pb.GetRequest{JobId: "j-none"})
	// Take both request slots and the report slot.
	var done sync.WaitGroup
	for range 2 {
		done.Add(1)
		go func() {
			defer done.Done()
			_, _ = nc.NATS().Request(subj.API(EndpointGet), getData, 10*time.Second)
		}()
	}
	repData, _ := proto.Marshal(&pb.Report{WorkerId: "w", JobId: "j-none", Epoch: 1})
	done.Add(1)
	go func() {
		defer done.Done()
		_, _ = nc.NATS().Request(subj.Report(), repData, 10*time.Second)
	}()
	held.Wait()
	before := runtime.NumGoroutine()
	for i := range 50 {
		start := time.Now()
		var r pb.ClusterReply
		m, err := nc.NATS().Request(subj.API(EndpointCluster), []byte{}, 2*time.Second)
		noErr(t, err)
		noErr(t, proto.Unmarshal(m.Data, &r))
		e := r.GetError()
		if e.GetCode() != pb.ErrorCode_ERROR_CODE_BUSY || e.GetRetryAfterMs() != busyRetryAfter.Milliseconds() ||
			!strings.Contains(e.GetMessage(), "busy") || m.Header.Get("Nats-Service-Error-Code") != "503" {
			t.Fatalf("request %d while saturated: %v, headers %v", i, e, m.Header)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("busy reply took %v", d)
		}
	}
	if after := runtime.NumGoroutine(); after > before+10 {
		t.Fatalf("goroutines grew from %d to %d answering busy requests", before, after)
	}
	m, err := nc.NATS().Request(subj.Report(), repData, 2*time.Second)
	noErr(t, err)
	var ack pb.ReportAck
	noErr(t, proto.Unmarshal(m.Data, &ack))
	if ack.Status != pb.ReportStatus_REPORT_STATUS_RETRY || !strings.Contains(ack.Message, "busy") {
		t.Fatalf("report while saturated: %v", &ack)
	}
	if v := metricLabel(t, c, "ringattn_api_requests_total", "code", "busy"); v != 50 {
		t.Fatalf("api_requests_total{code=busy} = %v, want 50", v)
	}
	close(release)
	done.Wait()
	r := apiRetry(t, nc, EndpointCluster, &pb.ClusterRequest{}, func() *pb.ClusterReply { return &pb.ClusterReply{} })
	if r.GetError() != nil {
		t.Fatalf("after the load: %v", r.GetError())
	}
}
