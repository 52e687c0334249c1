package transport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func TestTransportSubjectsCarryIdentity(t *testing.T) {
	s := transport.NewSubjects("p")
	for _, c := range []struct{ got, want string }{
		{s.TenantAPI("alice", "submit"), "p.api.alice.submit"},
		{s.API("get"), "p.api.default.get"},
		{s.APIServe("list"), "p.api.*.list"},
		{s.WorkerHeartbeat("w1"), "p.worker.w1.heartbeat"},
		{s.Heartbeats(), "p.worker.*.heartbeat"},
		{s.WorkerReport("w1"), "p.coord.report.w1"},
		{s.Reports(), "p.coord.report.*"},
		{s.TenantJobEvents("alice", "j1"), "p.job.alice.j1.events"},
		{s.JobEvents("j1"), "p.job.default.j1.events"},
		{s.AnyJobEvents("j1"), "p.job.*.j1.events"},
		{s.AllJobEvents(), "p.job.*.*.events"},
		{s.RingFrom("w1", "j1", 3, 2), "p.ring.w1.j1.3.2"},
		{s.RingAckFrom("w1", "j1", 3, 2), "p.ring.w1.j1.3.2.ack"},
		{s.RingCtlFrom("w1", "j1", 3, 2), "p.ring.w1.j1.3.2.ctl"},
		{s.RingInbox("j1", 3, 2), "p.ring.*.j1.3.2"},
		{s.Ring("j1", 3, 2), "p.ring._.j1.3.2"},
		{s.Inbox(transport.RoleClient, "alice"), "_INBOX.p.alice"},
		{s.Inbox(transport.RoleWorker, "w1"), "_INBOX.p._worker.w1"},
		{transport.TenantBucket("ringattn", "alice"), "ringattn-alice"},
		{transport.TenantBucket("ringattn", ""), "ringattn"},
		{transport.TenantBucket("ringattn", transport.AdminTenant), "ringattn"},
	} {
		if c.got != c.want {
			t.Errorf("subject %q, want %q", c.got, c.want)
		}
	}
	for subject, want := range map[string]string{"p.api.alice.submit": "alice", "p.api._admin.get": "_admin",
		"p.api.submit": "", "q.api.a.b": "", "p.api.a.b.c": "", "p.api..b": ""} {
		got, ok := s.APITenant(subject)
		if got != want || ok != (want != "") {
			t.Errorf("APITenant(%q) = %q, %v; want %q", subject, got, ok, want)
		}
	}
	for _, bad := range []string{"_x", "_admin", "a.b", "a*", strings.Repeat("a", 129)} {
		if err := transport.ValidateJobTenant(bad); err == nil {
			t.Errorf("ValidateJobTenant(%q) = nil, want an error", bad)
		}
	}
	if err := transport.ValidateTenant(transport.AdminTenant); err != nil {
		t.Errorf("ValidateTenant(admin) = %v", err)
	}
	if err := transport.ValidateJobTenant(strings.Repeat("a", 128)); err != nil {
		t.Errorf("a 128-character tenant: %v", err)
	}
}

// TestTransportHeartbeatReportImpersonation: a heartbeat or report whose
// body names another worker than its subject is refused, counted, and
// never reaches the handler.
func TestTransportHeartbeatReportImpersonation(t *testing.T) {
	srv, cli, raw := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	var hbs, reps []string
	stop, err := srv.ServeHeartbeats(transport.ServeConfig{}, func(hb *pb.Heartbeat) *pb.HeartbeatAck {
		hbs = append(hbs, hb.WorkerId)
		return &pb.HeartbeatAck{LeaderId: "n1"}
	})
	stopAt(t, stop, err)
	stop, err = srv.ServeReports(transport.ServeConfig{}, func(r *pb.Report) *pb.ReportAck {
		reps = append(reps, r.WorkerId)
		return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_ACCEPTED}
	})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	subj := transport.NewSubjects("")

	if _, err := cli.SendHeartbeat(ctx, &pb.Heartbeat{WorkerId: "w1"}); err != nil {
		t.Fatalf("own heartbeat: %v", err)
	}
	hb, _ := proto.Marshal(&pb.Heartbeat{WorkerId: "w1"})
	if _, err := raw.Request(subj.WorkerHeartbeat("w2"), hb, 300*time.Millisecond); err == nil {
		t.Error("w1's heartbeat on w2's subject was answered")
	}
	ack, err := cli.Report(ctx, &pb.Report{WorkerId: "w1"})
	if err != nil || ack.Status != pb.ReportStatus_REPORT_STATUS_ACCEPTED {
		t.Fatalf("own report: %v, %v", ack, err)
	}
	rep, _ := proto.Marshal(&pb.Report{WorkerId: "w1"})
	m, err := raw.Request(subj.WorkerReport("w2"), rep, 2*time.Second)
	must(t, err)
	var got pb.ReportAck
	must(t, proto.Unmarshal(m.Data, &got))
	if got.Status != pb.ReportStatus_REPORT_STATUS_REJECTED || !strings.Contains(got.Message, "w2") {
		t.Errorf("w1's report on w2's subject: %v, want REJECTED naming w2", &got)
	}
	if strings.Join(hbs, ",") != "w1" || strings.Join(reps, ",") != "w1" {
		t.Errorf("handled heartbeats %v, reports %v: want only w1's own", hbs, reps)
	}
	if n := srv.Rejected(); n != 2 {
		t.Errorf("Rejected = %d, want 2", n)
	}
	// Bad worker ids are refused before anything is sent.
	if _, err := cli.Report(ctx, &pb.Report{WorkerId: "a.b"}); !errors.Is(err, transport.ErrInvalidName) {
		t.Errorf("report as worker a.b: %v, want ErrInvalidName", err)
	}
}

// TestTransportAPICallerTenants: the caller is the tenant the subject
// names; with EnforceTenants only the admin token is an admin; a token
// that is no tenant is refused.
func TestTransportAPICallerTenants(t *testing.T) {
	for _, enforce := range []bool{false, true} {
		srv, cli, raw := controlPair(t)
		ctx := ctxT(t, 10*time.Second)
		seen := make(chan transport.Caller, 1)
		stop, err := srv.ServeAPI(transport.APIHandlers{
			Cluster: func(ctx context.Context, _ *pb.ClusterRequest) (*pb.ClusterReply, error) {
				seen <- transport.CallerOf(ctx)
				return &pb.ClusterReply{}, nil
			},
		}, transport.APIConfig{EnforceTenants: enforce})
		stopAt(t, stop, err)
		must(t, srv.Flush(ctx))
		for _, c := range []struct {
			tenant string
			want   transport.Caller
		}{
			{"", transport.Caller{Tenant: "default", Admin: !enforce}},
			{"alice", transport.Caller{Tenant: "alice", Admin: !enforce}},
			{transport.AdminTenant, transport.Caller{Tenant: "default", Admin: true}},
		} {
			api := transport.NewAPIClient(cli)
			api.Tenant = c.tenant
			if _, err := api.Cluster(ctx, &pb.ClusterRequest{}); err != nil {
				t.Fatalf("enforce %v, tenant %q: %v", enforce, c.tenant, err)
			}
			if got := <-seen; got != c.want {
				t.Errorf("enforce %v, tenant %q: caller %+v, want %+v", enforce, c.tenant, got, c.want)
			}
		}
		m, err := raw.Request(transport.NewSubjects("").TenantAPI("_root", transport.EndpointCluster), nil, 2*time.Second)
		must(t, err)
		var rep pb.ClusterReply
		must(t, proto.Unmarshal(m.Data, &rep))
		if rep.Error.GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || rep.Error.GetField() != "tenant" {
			t.Errorf("request as tenant _root: %v, want INVALID_ARGUMENT on tenant", rep.Error)
		}
		api := transport.NewAPIClient(cli)
		api.Tenant = "a.b"
		if _, err := api.Cluster(ctx, &pb.ClusterRequest{}); !errors.Is(err, transport.ErrAPIInvalid) {
			t.Errorf("a client of tenant a.b: %v, want ErrAPIInvalid", err)
		}
	}
}

// TestTransportEventsPerTenant: events go to their tenant's watchers only;
// workers' OnEvents and the admin see every tenant's.
func TestTransportEventsPerTenant(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	alice, err := cli.ForTenant("alice")
	must(t, err)
	aliceCh, stopA, err := alice.WatchEvents(ctx, "")
	must(t, err)
	defer stopA()
	defCh, stopD, err := cli.WatchEvents(ctx, "j1")
	must(t, err)
	defer stopD()
	adminCh, stopAd, err := cli.WatchTenantEvents(ctx, transport.AdminTenant, "")
	must(t, err)
	defer stopAd()
	any := make(chan string, 4)
	stopAny, err := srv.OnEvents("j1", transport.ServeConfig{}, func(ev *pb.JobEvent) { any <- ev.JobId })
	must(t, err)
	defer stopAny()
	must(t, cli.Flush(ctx))
	must(t, srv.Flush(ctx))
	must(t, srv.PublishTenantEvent("alice", &pb.JobEvent{JobId: "j2"}))
	must(t, srv.PublishEvent(&pb.JobEvent{JobId: "j1"}))
	if err := srv.PublishTenantEvent(transport.AdminTenant, &pb.JobEvent{JobId: "j3"}); err == nil {
		t.Error("an event of the admin tenant was published")
	}
	recv := func(what string, ch <-chan *pb.JobEvent) string {
		select {
		case ev := <-ch:
			return ev.JobId
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no event", what)
		}
		return ""
	}
	if got := recv("alice", aliceCh); got != "j2" {
		t.Errorf("alice saw %s, want j2", got)
	}
	if got := recv("default", defCh); got != "j1" {
		t.Errorf("default saw %s, want j1", got)
	}
	got := []string{recv("admin", adminCh), recv("admin", adminCh)}
	if strings.Join(got, ",") != "j2,j1" {
		t.Errorf("admin saw %v, want j2 and j1", got)
	}
	if id := <-any; id != "j1" {
		t.Errorf("OnEvents(j1) saw %s", id)
	}
	must(t, cli.Flush(ctx))
	select {
	case ev := <-aliceCh:
		t.Errorf("alice saw another tenant's event %v", ev)
	default:
	}
}

// TestTransportRingForgedSender: with RingConfig.Workers, a frame whose
// subject's sender is not the worker of the rank it claims is dropped and
// counted; the real worker's frames arrive.
func TestTransportRingForgedSender(t *testing.T) {
	e := transporttest.RunServer(t)
	workers := []string{"wa", "wb"}
	rings, _ := newRings(t, e, 2, func(c *transport.RingConfig) {
		c.Job = "job-id"
		c.Workers = workers
		c.RecvTimeout = 300 * time.Millisecond
		c.SendTimeout = 300 * time.Millisecond
	})
	if got := rings[0].Config().Worker; got != "wa" {
		t.Errorf("rank 0 sends as %q, want wa", got)
	}
	// A forger: rank 0's headers, worker wc's subjects.
	forger, err := transport.NewNATSRing(transporttest.Connect(t, e), transport.RingConfig{Job: "job-id", Epoch: 3, Rank: 0,
		Size: 2, Worker: "wc", SendTimeout: 300 * time.Millisecond, Logger: transporttest.Logger(t)})
	must(t, err)
	defer forger.Close()
	ctx := ctxT(t, 20*time.Second)
	f := kvFrame(1, 0, randVals(1, 100), randVals(2, 100))
	_ = forger.Send(ctx, 1, f) // no acknowledgement comes: abandoned
	if _, err := rings[1].Recv(ctx, 0, f.Key); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("Recv of the forged frame: %v, want a timeout", err)
	}
	if n := rings[1].Stats().Forged; n == 0 {
		t.Error("Forged = 0 after a forged frame")
	}
	g := kvFrame(2, 0, randVals(3, 100), randVals(4, 100))
	wait := sendAsync(ctx, rings[0], 1, g)
	got, err := rings[1].Recv(ctx, 0, g.Key)
	must(t, err)
	must(t, wait())
	equalF32(t, "k", got.Tensors[0], g.Tensors[0])

	for _, bad := range []transport.RingConfig{
		{Job: "j", Size: 2, Workers: []string{"wa"}},
		{Job: "j", Size: 2, Workers: []string{"wa", "w.b"}},
		{Job: "j", Size: 2, Worker: "wb", Workers: workers},
		{Job: "j", Size: 2, Worker: "w*"},
	} {
		if _, err := transport.NewNATSRing(transporttest.Connect(t, e), bad); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Errorf("RingConfig %+v: %v, want ErrInvalidConfig", bad, err)
		} else {
			t.Log(err)
		}
	}
}
