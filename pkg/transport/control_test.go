package transport_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// controlPair is a server-side and a client-side Conn on one embedded
// server, plus a raw connection to send what no typed call would.
func controlPair(t *testing.T) (srv, cli *transport.Conn, raw *nats.Conn) {
	t.Helper()
	e := transporttest.RunServer(t)
	subj := transport.NewSubjects("")
	srv = transport.NewConn(transporttest.Connect(t, e), subj, transporttest.Logger(t))
	cli = transport.NewConn(transporttest.Connect(t, e), subj, transporttest.Logger(t))
	return srv, cli, transporttest.Connect(t, e)
}

func stopAt(t *testing.T, stop transport.StopFunc, err error) {
	t.Helper()
	must(t, err)
	t.Cleanup(func() { _ = stop() })
}

func TestTransportControlHeartbeat(t *testing.T) {
	srv, cli, raw := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	stop, err := srv.ServeHeartbeats(transport.ServeConfig{}, func(hb *pb.Heartbeat) *pb.HeartbeatAck {
		if hb.WorkerId == "boom" {
			panic("handler bug")
		}
		return &pb.HeartbeatAck{LeaderId: "n1", Term: uint64(hb.Slots)}
	})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	ack, err := cli.SendHeartbeat(ctx, &pb.Heartbeat{WorkerId: "w1", Slots: 3})
	must(t, err)
	if ack.LeaderId != "n1" || ack.Term != 3 {
		t.Errorf("ack = %v", ack)
	}
	// A panicking handler: contained, counted, no answer.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := cli.SendHeartbeat(short, &pb.Heartbeat{WorkerId: "boom"}); err == nil {
		t.Error("a heartbeat whose handler panicked was answered")
	}
	if srv.HandlerPanics() != 1 {
		t.Errorf("HandlerPanics = %d, want 1", srv.HandlerPanics())
	}
	// Malformed, and one byte past the limit: dropped unanswered; at the
	// limit: decoded (a valid heartbeat padded with an unknown field).
	for name, data := range map[string][]byte{
		"malformed": {0xff, 0xff, 0xff},
		"oversized": padded(t, &pb.Heartbeat{WorkerId: "w1"}, transport.MaxHeartbeatBytes+1),
	} {
		if _, err := raw.Request(transport.NewSubjects("").Heartbeat(), data, 300*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
			t.Errorf("%s heartbeat: err = %v, want no answer", name, err)
		}
	}
	m, err := raw.Request(transport.NewSubjects("").Heartbeat(), padded(t, &pb.Heartbeat{WorkerId: "w1", Slots: 2}, transport.MaxHeartbeatBytes), 5*time.Second)
	must(t, err)
	var a pb.HeartbeatAck
	must(t, proto.Unmarshal(m.Data, &a))
	if a.Term != 2 {
		t.Errorf("heartbeat at the limit: ack %v", &a)
	}
	must(t, cli.PublishHeartbeat(&pb.Heartbeat{WorkerId: "w1", Leaving: true}))
}

// padded encodes m followed by an unknown bytes field (number 999) so the
// whole is exactly size bytes.
func padded(t *testing.T, m proto.Message, size int) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	must(t, err)
	// tag (999<<3|2) is 2 bytes, then a varint length, then the bytes.
	for n := size - len(b) - 2 - 1; n >= 0; n-- {
		l := protowire.SizeVarint(uint64(n))
		if len(b)+2+l+n == size {
			out := protowire.AppendTag(b, 999, protowire.BytesType)
			out = protowire.AppendVarint(out, uint64(n))
			return append(out, make([]byte, n)...)
		}
	}
	t.Fatalf("cannot pad to %d", size)
	return nil
}

func TestTransportControlAssign(t *testing.T) {
	srv, cli, raw := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	stop, err := srv.ServeAssignments("w1", transport.ServeConfig{}, func(a *pb.Assignment) *pb.AssignmentAck {
		if a.JobId == "boom" {
			panic("handler bug")
		}
		return &pb.AssignmentAck{Accepted: a.Rank == 1}
	})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	ack, err := cli.Assign(ctx, "w1", &pb.Assignment{JobId: "j", Rank: 1})
	must(t, err)
	if !ack.Accepted {
		t.Errorf("ack = %v", ack)
	}
	ack, err = cli.Assign(ctx, "w1", &pb.Assignment{JobId: "boom"})
	must(t, err)
	if ack.Accepted || !strings.Contains(ack.Reason, "internal error") {
		t.Errorf("panicking handler: ack = %v, want refused with the reason", ack)
	}
	for name, data := range map[string][]byte{
		"malformed": {0xff, 0xff},
		"oversized": padded(t, &pb.Assignment{JobId: "j", Rank: 1}, transport.MaxControlBytes+1),
	} {
		m, err := raw.Request(transport.NewSubjects("").Assign("w1"), data, 5*time.Second)
		must(t, err)
		var a pb.AssignmentAck
		must(t, proto.Unmarshal(m.Data, &a))
		if a.Accepted || !strings.Contains(a.Reason, "malformed assignment") {
			t.Errorf("%s assignment: ack %v, want refused", name, &a)
		}
	}
	if _, err := cli.Assign(ctx, "w1.x", &pb.Assignment{}); err == nil {
		t.Error("Assign to a worker id with a dot succeeded")
	}
	if _, err := srv.ServeAssignments("*", transport.ServeConfig{}, nil); err == nil {
		t.Error("ServeAssignments of worker \"*\" succeeded")
	}
}

func TestTransportControlReport(t *testing.T) {
	srv, cli, raw := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	dispatched := 0
	stop, err := srv.ServeReports(transport.ServeConfig{Dispatch: func(run func()) bool { dispatched++; run(); return true }},
		func(r *pb.Report) *pb.ReportAck {
			if r.JobId == "boom" {
				panic("handler bug")
			}
			return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_ACCEPTED, LeaderId: "n1"}
		})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	ack, err := cli.Report(ctx, &pb.Report{JobId: "j", Result: &pb.Report_Done{Done: &pb.ShardDone{}}})
	must(t, err)
	if ack.Status != pb.ReportStatus_REPORT_STATUS_ACCEPTED || dispatched != 1 {
		t.Errorf("ack = %v, dispatched %d", ack, dispatched)
	}
	ack, err = cli.Report(ctx, &pb.Report{JobId: "boom"})
	must(t, err)
	if ack.Status != pb.ReportStatus_REPORT_STATUS_RETRY {
		t.Errorf("panicking handler: ack = %v, want RETRY", ack)
	}
	for name, data := range map[string][]byte{
		"malformed": {0x0a},
		"oversized": padded(t, &pb.Report{JobId: "j"}, transport.MaxControlBytes+1),
	} {
		m, err := raw.Request(transport.NewSubjects("").Report(), data, 5*time.Second)
		must(t, err)
		var a pb.ReportAck
		must(t, proto.Unmarshal(m.Data, &a))
		if a.Status != pb.ReportStatus_REPORT_STATUS_REJECTED {
			t.Errorf("%s report: ack %v, want REJECTED", name, &a)
		}
	}
}

func TestTransportControlEvents(t *testing.T) {
	srv, cli, raw := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	one, stopOne, err := cli.WatchEvents(ctx, "j1")
	must(t, err)
	wctx, cancelAll := context.WithCancel(ctx)
	all, _, err := cli.WatchEvents(wctx, "")
	must(t, err)
	must(t, cli.Flush(ctx))
	// Malformed and oversized events are dropped.
	must(t, raw.Publish(transport.NewSubjects("").JobEvents("j1"), []byte{0xff}))
	must(t, raw.Publish(transport.NewSubjects("").JobEvents("j1"), padded(t, &pb.JobEvent{JobId: "j1"}, transport.MaxControlBytes+1)))
	must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j1", Type: pb.JobEventType_JOB_EVENT_TYPE_PROGRESS, BlocksDone: 4}))
	must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j2", Type: pb.JobEventType_JOB_EVENT_TYPE_FINISHED}))
	select {
	case ev := <-one:
		if ev.JobId != "j1" || ev.BlocksDone != 4 {
			t.Errorf("event = %v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no event")
	}
	for _, want := range []string{"j1", "j2"} {
		select {
		case ev := <-all:
			if ev.JobId != want {
				t.Errorf("all-jobs event for %s, want %s", ev.JobId, want)
			}
		case <-ctx.Done():
			t.Fatal("no event on the all-jobs watch")
		}
	}
	must(t, stopOne())
	must(t, stopOne())
	if _, ok := <-one; ok {
		t.Error("channel open after stop")
	}
	cancelAll()
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		select {
		case _, ok := <-all:
			if !ok {
				return nil
			}
		default:
		}
		return errors.New("all-jobs channel still open after its context ended")
	})
	if err := srv.PublishEvent(&pb.JobEvent{JobId: "a.b"}); err == nil {
		t.Error("PublishEvent with a dotted job id succeeded")
	}
}

func TestTransportControlAPI(t *testing.T) {
	srv, cli, raw := controlPair(t)
	ctx := ctxT(t, 20*time.Second)
	var observed []string
	stop, err := srv.ServeAPI(transport.APIHandlers{
		Submit: func(_ context.Context, r *pb.SubmitRequest) (*pb.SubmitReply, error) {
			if r.Spec.GetInputRef() == "boom" {
				panic("handler bug")
			}
			if r.Spec.GetN() < 1 {
				return nil, &transport.FieldError{Field: "spec.n", Msg: "0: want >= 1"}
			}
			return &pb.SubmitReply{Job: &pb.JobStatus{Id: "j1"}}, nil
		},
		Get: func(_ context.Context, r *pb.GetRequest) (*pb.GetReply, error) {
			return nil, &transport.APIError{Code: pb.ErrorCode_ERROR_CODE_NOT_FOUND, Field: "job_id", Message: "job " + r.JobId + " not found"}
		},
		Cancel: func(context.Context, *pb.CancelRequest) (*pb.CancelReply, error) {
			return &pb.CancelReply{Job: &pb.JobStatus{Id: "j1", State: pb.JobState_JOB_STATE_CANCELED}}, nil
		},
		List: func(context.Context, *pb.ListRequest) (*pb.ListReply, error) { return &pb.ListReply{Total: 7}, nil },
		Cluster: func(context.Context, *pb.ClusterRequest) (*pb.ClusterReply, error) {
			return &pb.ClusterReply{LeaderId: "n1"}, nil
		},
	}, transport.APIConfig{Version: "1.0.0", MaxRequestBytes: 4096,
		Observe: func(ep string, code pb.ErrorCode) { observed = append(observed, ep+":"+code.String()) }})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	api := transport.NewAPIClient(cli)
	api.Timeout = 2 * time.Second

	rep, err := api.Submit(ctx, &pb.SubmitRequest{Spec: &pb.JobSpec{N: 5}})
	must(t, err)
	if rep.Job.GetId() != "j1" {
		t.Errorf("submit = %v", rep)
	}
	_, err = api.Submit(ctx, &pb.SubmitRequest{Spec: &pb.JobSpec{}})
	var ae *transport.APIError
	if !errors.As(err, &ae) || ae.Field != "spec.n" || !errors.Is(err, transport.ErrAPIInvalid) {
		t.Errorf("submit n=0: %v, want INVALID_ARGUMENT on spec.n", err)
	}
	_, err = api.Get(ctx, &pb.GetRequest{JobId: "nope"})
	if !errors.Is(err, transport.ErrAPINotFound) || err.Error() != "job_id: job nope not found" {
		t.Errorf("get: %v", err)
	}
	if r, err := api.Cancel(ctx, &pb.CancelRequest{JobId: "j1"}); err != nil || r.Job.GetState() != pb.JobState_JOB_STATE_CANCELED {
		t.Errorf("cancel = %v, %v", r, err)
	}
	if r, err := api.List(ctx, &pb.ListRequest{}); err != nil || r.Total != 7 {
		t.Errorf("list = %v, %v", r, err)
	}
	if r, err := api.Cluster(ctx, &pb.ClusterRequest{}); err != nil || r.LeaderId != "n1" {
		t.Errorf("cluster = %v, %v", r, err)
	}
	// A panicking handler: INTERNAL, counted; the service goes on.
	_, err = api.Submit(ctx, &pb.SubmitRequest{Spec: &pb.JobSpec{InputRef: "boom"}})
	if !errors.Is(err, transport.ErrAPIInternal) || srv.HandlerPanics() != 1 {
		t.Errorf("panicking submit: %v (panics %d), want INTERNAL", err, srv.HandlerPanics())
	}
	// At the size limit, one byte past it, malformed.
	subject := transport.NewSubjects("").API(transport.EndpointSubmit)
	for _, tc := range []struct {
		name string
		data []byte
		code pb.ErrorCode
	}{
		{"at limit", padded(t, &pb.SubmitRequest{Spec: &pb.JobSpec{N: 5}}, 4096), pb.ErrorCode_ERROR_CODE_UNSPECIFIED},
		{"past limit", padded(t, &pb.SubmitRequest{Spec: &pb.JobSpec{N: 5}}, 4097), pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED},
		{"malformed", []byte{0x0a, 0x05}, pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT},
	} {
		m, err := raw.Request(subject, tc.data, 5*time.Second)
		must(t, err)
		var r pb.SubmitReply
		must(t, proto.Unmarshal(m.Data, &r))
		if r.GetError().GetCode() != tc.code || (tc.code != 0 && r.GetError().GetField() != "request") {
			t.Errorf("%s: reply error %v, want %v on field request", tc.name, r.GetError(), tc.code)
		}
	}
	if len(observed) != 10 {
		t.Errorf("observed %d requests (%v), want 10", len(observed), observed)
	}
	// Nothing serves: the client retries until its context ends.
	must(t, stop())
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := api.Get(short, &pb.GetRequest{JobId: "j1"}); !errors.Is(err, transport.ErrAPIUnavailable) {
		t.Errorf("get with no server: %v, want ErrAPIUnavailable", err)
	}
}

// TestTransportControlOnEvents: events reach a callback; a panicking
// callback is contained and later events still arrive.
func TestTransportControlOnEvents(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	got := make(chan *pb.JobEvent, 4)
	stop, err := cli.OnEvents("j1", transport.ServeConfig{}, func(ev *pb.JobEvent) {
		if ev.Message == "boom" {
			panic("callback bug")
		}
		got <- ev
	})
	stopAt(t, stop, err)
	must(t, cli.Flush(ctx))
	must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j1", Message: "boom"}))
	must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j2", Message: "other job"}))
	must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j1", Message: "after"}))
	select {
	case ev := <-got:
		if ev.Message != "after" {
			t.Errorf("event %v, want the one after the panic", ev)
		}
	case <-ctx.Done():
		t.Fatal("no event after a panicking callback")
	}
	if cli.HandlerPanics() != 1 {
		t.Errorf("HandlerPanics = %d, want 1", cli.HandlerPanics())
	}
}

// TestTransportControlNilReply: a handler answering a typed nil sends no
// reply (not an empty message the requester would decode as a zero ack).
func TestTransportControlNilReply(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	stop, err := srv.ServeHeartbeats(transport.ServeConfig{}, func(*pb.Heartbeat) *pb.HeartbeatAck { return nil })
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if ack, err := cli.SendHeartbeat(short, &pb.Heartbeat{WorkerId: "w1"}); err == nil {
		t.Fatalf("nil ack answered: %v", ack)
	}
}

// TestTransportControlEventBuffer: a watcher that does not read holds
// the first 64 events (eventBuffer) and drops the 65th.
func TestTransportControlEventBuffer(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	ch, stop, err := cli.WatchEvents(ctx, "j1")
	stopAt(t, stop, err)
	must(t, cli.Flush(ctx))
	const buffer = 64
	for i := range buffer + 1 {
		must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j1", BlocksDone: int64(i)}))
	}
	must(t, srv.Flush(ctx))
	// Wait until the watcher has seen everything: a marker on the other
	// connection's own watch, published after the events, has arrived.
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if len(ch) < buffer {
			return errors.New("events still arriving")
		}
		return nil
	})
	must(t, cli.Flush(ctx))
	time.Sleep(100 * time.Millisecond)
	for i := range buffer {
		if ev := <-ch; ev.BlocksDone != int64(i) {
			t.Fatalf("event %d has blocks_done %d", i, ev.BlocksDone)
		}
	}
	select {
	case ev := <-ch:
		t.Fatalf("event %v beyond the buffer was kept", ev)
	default:
	}
}

// TestTransportControlConn: a Conn from Dial reaches the ring and the
// store without its user touching NATS, and Close ends it.
func TestTransportControlConn(t *testing.T) {
	e := transporttest.RunServer(t)
	ctx := ctxT(t, 20*time.Second)
	cfg := transporttest.Config(e)
	cfg.Prefix = "pfx"
	c, err := transport.Dial(cfg, transporttest.Logger(t))
	must(t, err)
	if !c.IsConnected() || c.Subjects().Prefix() != "pfx" {
		t.Fatalf("connected %v, prefix %q", c.IsConnected(), c.Subjects().Prefix())
	}
	r, err := c.NewRing(transport.RingConfig{Job: "job-c", Epoch: 1, Rank: 0, Size: 1})
	must(t, err)
	if r.Config().Prefix != "pfx" {
		t.Errorf("ring prefix %q, want the Conn's", r.Config().Prefix)
	}
	must(t, r.Close())
	s, err := c.OpenStore(ctx, transport.StoreConfig{})
	must(t, err)
	must(t, s.PutBlock(ctx, "job-c", "q", 0, []float32{1, 2}, transport.F32))
	got, err := s.GetBlock(ctx, "job-c", "q", 0)
	must(t, err)
	equalF32(t, "block", got, []float32{1, 2})
	must(t, c.Close())
	transporttest.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if c.IsConnected() {
			return errors.New("still connected after Close")
		}
		return nil
	})
}

// TestTransportControlBusy: requests Dispatch refuses are answered busy
// where the call has such an answer (API: BUSY with a retry-after the
// client honours; reports: RETRY; assignments: refused).
func TestTransportControlBusy(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 20*time.Second)
	var refuse atomic.Int32 // requests still to refuse
	dispatch := func(run func()) bool {
		if refuse.Add(-1) >= 0 {
			return false
		}
		run()
		return true
	}
	stop, err := srv.ServeAPI(transport.APIHandlers{
		Get: func(context.Context, *pb.GetRequest) (*pb.GetReply, error) {
			return &pb.GetReply{Job: &pb.JobStatus{Id: "j1"}}, nil
		},
	}, transport.APIConfig{ServeConfig: transport.ServeConfig{Dispatch: dispatch}, BusyRetryAfter: 200 * time.Millisecond})
	stopAt(t, stop, err)
	stop, err = srv.ServeReports(transport.ServeConfig{Dispatch: dispatch}, func(*pb.Report) *pb.ReportAck {
		return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_ACCEPTED}
	})
	stopAt(t, stop, err)
	stop, err = srv.ServeAssignments("w1", transport.ServeConfig{Dispatch: dispatch}, func(*pb.Assignment) *pb.AssignmentAck {
		return &pb.AssignmentAck{Accepted: true}
	})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))

	// One refusal: the client waits the retry-after, then succeeds.
	refuse.Store(1)
	api := transport.NewAPIClient(cli)
	start := time.Now()
	rep, err := api.Get(ctx, &pb.GetRequest{JobId: "j1"})
	must(t, err)
	if rep.Job.GetId() != "j1" || time.Since(start) < 200*time.Millisecond {
		t.Errorf("get after BUSY: %v after %v, want success after the 200ms retry-after", rep, time.Since(start))
	}
	// Refused until the context ends: the error says busy.
	refuse.Store(1 << 20)
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := api.Get(short, &pb.GetRequest{JobId: "j1"}); !errors.Is(err, transport.ErrAPIUnavailable) || !strings.Contains(err.Error(), "busy") {
		t.Errorf("get while busy: %v, want unavailable naming busy", err)
	}
	ack, err := cli.Report(ctx, &pb.Report{JobId: "j1"})
	must(t, err)
	if ack.Status != pb.ReportStatus_REPORT_STATUS_RETRY {
		t.Errorf("report while busy: %v, want RETRY", ack)
	}
	aack, err := cli.Assign(ctx, "w1", &pb.Assignment{JobId: "j1"})
	must(t, err)
	if aack.Accepted || !strings.Contains(aack.Reason, "busy") {
		t.Errorf("assignment while busy: %v, want refused as busy", aack)
	}
}
