package transport_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// identity is one connection to a server with permissions, recording
// the permission violations the server reports to it.
type identity struct {
	name string
	nc   *nats.Conn
	conn *transport.Conn
	mu   sync.Mutex
	errs []error
}

func (i *identity) violations() []error {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]error(nil), i.errs...)
}

// permServer runs an embedded server whose users are ringattn's roles:
// coordinator (nkey), workers w1 and w2, clients alice (nkey), bob and
// carol, admin (passwords).
type permServer struct {
	e     *transport.Embedded
	seeds map[string]string // nkey users: name -> seed file
}

var permRoles = []struct {
	name string
	role transport.Role
	id   string
	nkey bool
}{
	{"coord", transport.RoleCoordinator, "", true},
	{"w1", transport.RoleWorker, "w1", false},
	{"w2", transport.RoleWorker, "w2", false},
	{"alice", transport.RoleClient, "alice", true},
	{"bob", transport.RoleClient, "bob", false},
	{"carol", transport.RoleClient, "carol", false},
	{"admin", transport.RoleAdmin, "", false},
}

func startPermServer(t *testing.T) *permServer {
	t.Helper()
	subj := transport.NewSubjects("")
	ps := &permServer{seeds: map[string]string{}}
	var users []transport.EmbeddedUser
	dir := t.TempDir()
	for _, r := range permRoles {
		u := transport.EmbeddedUser{Permissions: subj.Permissions(r.role, r.id)}
		if r.nkey {
			kp, err := nkeys.CreateUser()
			must(t, err)
			u.NKey, err = kp.PublicKey()
			must(t, err)
			seed, err := kp.Seed()
			must(t, err)
			ps.seeds[r.name] = filepath.Join(dir, r.name+".nk")
			must(t, os.WriteFile(ps.seeds[r.name], seed, 0o600))
		} else {
			u.Name, u.Password = r.name, "pw-"+r.name
		}
		users = append(users, u)
	}
	ps.e = transporttest.RunServerWith(t, transport.EmbeddedConfig{Users: users})
	return ps
}

func (ps *permServer) connect(t *testing.T, name string) *identity {
	t.Helper()
	for _, r := range permRoles {
		if r.name != name {
			continue
		}
		cfg := transporttest.Config(ps.e).ForRole(r.role, r.id)
		cfg.Name = name
		if seed, ok := ps.seeds[name]; ok {
			cfg.NKeySeedFile = seed
		} else {
			cfg.User, cfg.Password = name, "pw-"+name
		}
		opts, err := cfg.Options(transporttest.Logger(t))
		must(t, err)
		id := &identity{name: name}
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			id.mu.Lock()
			id.errs = append(id.errs, err)
			id.mu.Unlock()
		}))
		id.nc, err = nats.Connect(ps.e.ClientURL(), opts...)
		must(t, err)
		t.Cleanup(id.nc.Close)
		id.conn = transport.NewConn(id.nc, cfg.Subjects(), transporttest.Logger(t))
		if r.role == transport.RoleClient || r.role == transport.RoleAdmin {
			id.conn, err = id.conn.ForTenant(cfg.Tenant)
			must(t, err)
		}
		return id
	}
	t.Fatalf("no identity %q", name)
	return nil
}

// denied runs f (which publishes or subscribes subject as i) and expects
// the server to report a permissions violation naming subject.
func (i *identity) denied(t *testing.T, what, subject string, f func() error) {
	t.Helper()
	before := len(i.violations())
	if err := f(); err != nil && !errors.Is(err, nats.ErrPermissionViolation) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, nats.ErrTimeout) && !errors.Is(err, transport.ErrPermission) {
		t.Errorf("%s: %s: %v", i.name, what, err)
	}
	_ = i.nc.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, err := range i.violations()[before:] {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
				t.Logf("%s: %s: refused: %v", i.name, what, err)
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("%s: %s: no permissions violation for %q (got %v)", i.name, what, subject, i.violations()[before:])
}

// pub is a denied-publish check of data on subject (a request when reply).
func (i *identity) pub(t *testing.T, what, subject string, data []byte) {
	t.Helper()
	i.denied(t, what, subject, func() error { return i.nc.Publish(subject, data) })
}

// sub is a denied-subscribe check.
func (i *identity) sub(t *testing.T, what, subject string) {
	t.Helper()
	i.denied(t, what, subject, func() error {
		_, err := i.nc.Subscribe(subject, func(*nats.Msg) {})
		return err
	})
}

func (i *identity) clean(t *testing.T) {
	t.Helper()
	if v := i.violations(); len(v) > 0 {
		t.Errorf("%s: unexpected permission violations: %v", i.name, v)
	}
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	must(t, err)
	return b
}

// TestTransportPermissionsRoles checks each role's permissions on a real
// server: what a role must do works, and what it must not do (speak for
// another worker or tenant, forge assignments, events or ring frames,
// touch another tenant's tensors) is a permissions violation.
func TestTransportPermissionsRoles(t *testing.T) {
	ps := startPermServer(t)
	ctx := ctxT(t, 120*time.Second)
	subj := transport.NewSubjects("")
	coord, w1, w2 := ps.connect(t, "coord"), ps.connect(t, "w1"), ps.connect(t, "w2")
	alice, bob, carol, admin := ps.connect(t, "alice"), ps.connect(t, "bob"), ps.connect(t, "carol"), ps.connect(t, "admin")

	// The coordinator serves the API, heartbeats and reports, and
	// provisions the tenants' buckets (alice's with a quota).
	callers := make(chan transport.Caller, 8)
	stop, err := coord.conn.ServeAPI(transport.APIHandlers{
		Cluster: func(ctx context.Context, _ *pb.ClusterRequest) (*pb.ClusterReply, error) {
			callers <- transport.CallerOf(ctx)
			return &pb.ClusterReply{LeaderId: "n1"}, nil
		},
	}, transport.APIConfig{EnforceTenants: true})
	stopAt(t, stop, err)
	var hbMu sync.Mutex
	var hbs, reports []string
	stop, err = coord.conn.ServeHeartbeats(transport.ServeConfig{}, func(hb *pb.Heartbeat) *pb.HeartbeatAck {
		hbMu.Lock()
		hbs = append(hbs, hb.WorkerId)
		hbMu.Unlock()
		return &pb.HeartbeatAck{LeaderId: "n1"}
	})
	stopAt(t, stop, err)
	stop, err = coord.conn.ServeReports(transport.ServeConfig{}, func(r *pb.Report) *pb.ReportAck {
		hbMu.Lock()
		reports = append(reports, r.WorkerId)
		hbMu.Unlock()
		return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_ACCEPTED}
	})
	stopAt(t, stop, err)
	must(t, coord.conn.Flush(ctx))
	const quota = 64 << 10
	bucket := func(tenant string) string { return transport.TenantBucket(transport.DefaultBucket, tenant) }
	for _, tenant := range []string{"alice", "bob"} {
		max := int64(0)
		if tenant == "alice" {
			max = quota
		}
		_, err := transport.OpenStore(ctx, coord.nc, transport.StoreConfig{Bucket: bucket(tenant), MaxBytes: max}, nil)
		must(t, err)
	}
	bobStore, err := transport.OpenStore(ctx, bob.nc, transport.StoreConfig{Bucket: bucket("bob")}, nil)
	must(t, err)
	bobBlock := randVals(7, 256)
	must(t, bobStore.PutBlock(ctx, "jb", "q", 0, bobBlock, transport.F32))
	// A tensor with the slab layout (4 heads of 64 values), for a
	// worker's head read below.
	bobHeads := transport.Shape{1, 4, 64, 1}
	must(t, bobStore.PutTensors(ctx, "jh", []transport.TensorData{{Name: "k", Data: bobBlock, Shape: bobHeads}},
		64, transport.F32, transport.TransferOptions{}))

	// Workers: their own heartbeats, reports, assignments and ring.
	assigned := make(chan string, 2)
	stop, err = w1.conn.ServeAssignments("w1", transport.ServeConfig{}, func(a *pb.Assignment) *pb.AssignmentAck {
		assigned <- a.GetJobId()
		return &pb.AssignmentAck{Accepted: true}
	})
	stopAt(t, stop, err)
	must(t, w1.conn.Flush(ctx))
	if ack, err := coord.conn.Assign(ctx, "w1", &pb.Assignment{JobId: "j1"}); err != nil || !ack.Accepted {
		t.Fatalf("coordinator assigns to w1: %v, %v", ack, err)
	}
	if got := <-assigned; got != "j1" {
		t.Errorf("w1 was assigned %q", got)
	}
	if _, err := w1.conn.SendHeartbeat(ctx, &pb.Heartbeat{WorkerId: "w1"}); err != nil {
		t.Errorf("w1 heartbeats: %v", err)
	}
	if ack, err := w1.conn.Report(ctx, &pb.Report{WorkerId: "w1"}); err != nil || ack.Status != pb.ReportStatus_REPORT_STATUS_ACCEPTED {
		t.Errorf("w1 reports: %v, %v", ack, err)
	}
	hb := marshal(t, &pb.Heartbeat{WorkerId: "w2"})
	rep := marshal(t, &pb.Report{WorkerId: "w2"})
	w1.pub(t, "heartbeat as w2", subj.WorkerHeartbeat("w2"), hb)
	w1.pub(t, "report as w2", subj.WorkerReport("w2"), rep)
	w1.pub(t, "legacy heartbeat (no id)", subj.Heartbeat(), hb)
	w1.pub(t, "legacy report (no id)", subj.Report(), rep)
	w1.pub(t, "forged assignment", subj.Assign("w2"), marshal(t, &pb.Assignment{JobId: "j1"}))
	w1.pub(t, "job event", subj.TenantJobEvents("alice", "j1"), marshal(t, &pb.JobEvent{JobId: "j1"}))
	w1.pub(t, "ring frame as w2", subj.RingFrom("w2", "j1", 1, 0), nil)
	w1.pub(t, "ring frame with no sender", subj.Ring("j1", 1, 0), nil)
	w1.pub(t, "API call", subj.API(transport.EndpointCluster), nil)
	w1.sub(t, "w2's assignments", subj.Assign("w2"))
	w1.sub(t, "another's inbox", "_INBOX.>")
	w1.sub(t, "the API", subj.APIServe(transport.EndpointSubmit))

	// A ring between the workers, each sending as itself.
	rcfg := func(rank int) transport.RingConfig {
		return transport.RingConfig{Job: "jr", Epoch: 1, Rank: rank, Size: 2, Workers: []string{"w1", "w2"},
			RecvTimeout: 10 * time.Second, Logger: transporttest.Logger(t)}
	}
	r0, err := w1.conn.NewRing(rcfg(0))
	must(t, err)
	defer r0.Close()
	r1, err := w2.conn.NewRing(rcfg(1))
	must(t, err)
	defer r1.Close()
	f := kvFrame(0, 0, randVals(1, 1000), randVals(2, 1000))
	wait := sendAsync(ctx, r0, 1, f)
	got, err := r1.Recv(ctx, 0, f.Key)
	must(t, err)
	must(t, wait())
	equalF32(t, "ring k", got.Tensors[0], f.Tensors[0])

	// A worker reads and writes any tenant's blocks, but cannot drop or
	// resize a bucket.
	ws, err := transport.OpenStore(ctx, w1.nc, transport.StoreConfig{Bucket: bucket("bob")}, nil)
	must(t, err)
	if got, err := ws.GetBlock(ctx, "jb", "q", 0); err != nil {
		t.Errorf("w1 reads bob's input: %v", err)
	} else {
		equalF32(t, "bob's block via w1", got, bobBlock)
	}
	// Its head reads (a headers-only consumer, direct gets) are allowed:
	// only the heads' bytes move, no whole-block fallback.
	before := ws.Stats().GetBytes
	if got, err := ws.GetHeads(ctx, "jh", "k", 0, transport.HeadRange{B: 1, Heads: 4, H0: 1, H1: 3}); err != nil {
		t.Errorf("w1 reads heads of bob's input: %v", err)
	} else {
		equalF32(t, "heads 1..2 of bob's block via w1", got, bobBlock[64:192])
		if moved := ws.Stats().GetBytes - before; moved != 4*128 {
			t.Errorf("w1's head read moved %d bytes, want %d (the heads only)", moved, 4*128)
		}
	}
	must(t, ws.PutBlock(ctx, "jb", "o", 0, randVals(8, 64), transport.F32))
	w1.pub(t, "delete a bucket", "$JS.API.STREAM.DELETE.OBJ_"+bucket("bob"), nil)
	w1.pub(t, "resize a bucket", "$JS.API.STREAM.UPDATE.OBJ_"+bucket("alice"), nil)

	// Clients: the API as their tenant only, their events, their bucket.
	ac := transport.NewAPIClient(alice.conn)
	ac.Timeout = 2 * time.Second
	if r, err := ac.Cluster(ctx, &pb.ClusterRequest{}); err != nil || r.LeaderId != "n1" {
		t.Fatalf("alice calls the API: %v, %v", r, err)
	}
	if c := <-callers; c != (transport.Caller{Tenant: "alice"}) {
		t.Errorf("alice's caller %+v, want tenant alice, not admin", c)
	}
	events, stopEv, err := alice.conn.WatchEvents(ctx, "")
	must(t, err)
	defer stopEv()
	must(t, alice.nc.Flush())
	must(t, coord.conn.PublishTenantEvent("alice", &pb.JobEvent{JobId: "ja"}))
	select {
	case ev := <-events:
		if ev.JobId != "ja" {
			t.Errorf("alice's event %v", ev)
		}
	case <-ctx.Done():
		t.Fatal("alice got no event of her job")
	}
	as, err := transport.OpenStore(ctx, alice.nc, transport.StoreConfig{Bucket: bucket("alice")}, nil)
	must(t, err)
	blk := randVals(9, 1024)
	must(t, as.PutBlock(ctx, "ja", "q", 0, blk, transport.F32))
	if got, err := as.GetBlock(ctx, "ja", "q", 0); err != nil {
		t.Errorf("alice reads her block: %v", err)
	} else {
		equalF32(t, "alice's block", got, blk)
	}
	must(t, as.PutBlock(ctx, "ja", "q", 0, blk, transport.F32)) // overwrite her own
	if _, err := as.DeleteJob(ctx, "ja"); err != nil {
		t.Errorf("alice deletes her job's tensors: %v", err)
	}
	alice.clean(t)
	// Her quota is the bucket's MaxBytes: past it, a clear error.
	big := randVals(10, quota/4+1)
	if err := as.PutBlock(ctx, "ja", "k", 0, big, transport.F32); !errors.Is(err, transport.ErrStoreFull) {
		t.Errorf("alice writes past her %d-byte quota: %v, want ErrStoreFull", quota, err)
	} else {
		t.Log(err)
	}
	// An APIClient naming another tenant fails at once with ErrPermission
	// (the request itself would only time out).
	wrong := transport.NewAPIClient(alice.conn)
	wrong.Tenant, wrong.Timeout = "bob", time.Second
	start := time.Now()
	if _, err := wrong.List(ctx, &pb.ListRequest{}); !errors.Is(err, transport.ErrPermission) || time.Since(start) > 5*time.Second {
		t.Errorf("alice's API client as bob: %v after %v, want ErrPermission after one attempt", err, time.Since(start))
	} else {
		t.Log(err)
	}
	alice.mu.Lock()
	alice.errs = nil
	alice.mu.Unlock()
	alice.pub(t, "API as bob", subj.TenantAPI("bob", transport.EndpointList), nil)
	alice.pub(t, "API as admin", subj.TenantAPI(transport.AdminTenant, transport.EndpointList), nil)
	alice.pub(t, "forged assignment", subj.Assign("w1"), marshal(t, &pb.Assignment{JobId: "j1"}))
	alice.pub(t, "heartbeat", subj.WorkerHeartbeat("w1"), hb)
	alice.pub(t, "report", subj.WorkerReport("w1"), rep)
	alice.pub(t, "job event", subj.TenantJobEvents("alice", "ja"), marshal(t, &pb.JobEvent{JobId: "ja"}))
	alice.pub(t, "ring frame", subj.RingFrom("w1", "jr", 1, 1), nil)
	alice.sub(t, "bob's events", subj.TenantAllJobEvents("bob"))
	alice.sub(t, "every event", subj.AllJobEvents())
	alice.sub(t, "every inbox", "_INBOX.>")
	alice.sub(t, "bob's inbox", subj.Inbox(transport.RoleClient, "bob")+".>")
	alice.sub(t, "assignments", subj.Assign("w1"))
	alice.sub(t, "ring frames", subj.RingInbox("jr", 1, 1))
	alice.sub(t, "bob's tensor chunks", "$O."+bucket("bob")+".>")
	// Bob's tensors: not readable, overwritable or deletable by alice.
	alice.pub(t, "read bob's bucket", "$JS.API.CONSUMER.CREATE.OBJ_"+bucket("bob"), nil)
	alice.pub(t, "get bob's message", "$JS.API.STREAM.MSG.GET.OBJ_"+bucket("bob"), nil)
	alice.pub(t, "overwrite bob's block", "$O."+bucket("bob")+".M.x", nil)
	alice.pub(t, "purge bob's bucket", "$JS.API.STREAM.PURGE.OBJ_"+bucket("bob"), nil)
	alice.pub(t, "delete bob's bucket", "$JS.API.STREAM.DELETE.OBJ_"+bucket("bob"), nil)
	alice.pub(t, "delete her own bucket (its quota)", "$JS.API.STREAM.DELETE.OBJ_"+bucket("alice"), nil)
	alice.pub(t, "resize her own bucket", "$JS.API.STREAM.UPDATE.OBJ_"+bucket("alice"), nil)
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	alice.denied(t, "open bob's bucket", "$JS.API.STREAM.INFO.OBJ_"+bucket("bob"), func() error {
		_, err := transport.OpenStore(sctx, alice.nc, transport.StoreConfig{Bucket: bucket("bob")}, nil)
		if err == nil {
			return errors.New("opened")
		}
		t.Log(err)
		return nil
	})
	cancel()
	// Carol has no bucket yet and may not create one (nor its quota).
	sctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	_, err = transport.OpenStore(sctx, carol.nc, transport.StoreConfig{Bucket: bucket("carol")}, nil)
	cancel()
	if !errors.Is(err, transport.ErrPermission) || !strings.Contains(err.Error(), bucket("carol")) {
		t.Errorf("carol opens her unprovisioned bucket: %v, want ErrPermission naming it", err)
	} else {
		t.Log(err)
	}
	// Bob's block is intact.
	if got, err := bobStore.GetBlock(ctx, "jb", "q", 0); err != nil {
		t.Errorf("bob reads his block: %v", err)
	} else {
		equalF32(t, "bob's block", got, bobBlock)
	}
	bob.clean(t)

	// Admin: the API as the admin and as any tenant; not a worker.
	adm := transport.NewAPIClient(admin.conn)
	if _, err := adm.Cluster(ctx, &pb.ClusterRequest{}); err != nil {
		t.Fatalf("admin calls the API: %v", err)
	}
	if c := <-callers; !c.Admin {
		t.Errorf("admin's caller %+v, want Admin", c)
	}
	adm.Tenant = "bob"
	if _, err := adm.Cluster(ctx, &pb.ClusterRequest{}); err != nil {
		t.Fatalf("admin calls the API as bob: %v", err)
	}
	if c := <-callers; c != (transport.Caller{Tenant: "bob"}) {
		t.Errorf("admin as bob: caller %+v", c)
	}
	admstore, err := transport.OpenStore(ctx, admin.nc, transport.StoreConfig{Bucket: bucket("bob")}, nil)
	must(t, err)
	if got, err := admstore.GetBlock(ctx, "jb", "q", 0); err != nil {
		t.Errorf("admin reads bob's block: %v", err)
	} else {
		equalF32(t, "bob's block via admin", got, bobBlock)
	}
	admin.clean(t)
	admin.pub(t, "heartbeat", subj.WorkerHeartbeat("w1"), hb)
	admin.pub(t, "ring frame", subj.RingFrom("w1", "jr", 1, 1), nil)
	admin.pub(t, "forged assignment", subj.Assign("w1"), nil)
	admin.pub(t, "job event", subj.TenantJobEvents("bob", "jb"), nil)

	hbMu.Lock()
	defer hbMu.Unlock()
	if strings.Join(hbs, ",") != "w1" || strings.Join(reports, ",") != "w1" {
		t.Errorf("the coordinator handled heartbeats %v and reports %v: want only w1's own", hbs, reports)
	}
	coord.clean(t)
	w2.clean(t)
}

func TestTransportEmbeddedUsersValidated(t *testing.T) {
	kp, err := nkeys.CreateUser()
	must(t, err)
	pub, err := kp.PublicKey()
	must(t, err)
	for _, c := range []transport.EmbeddedConfig{
		{Users: []transport.EmbeddedUser{{Name: "a", Password: "p", NKey: pub}}},
		{Users: []transport.EmbeddedUser{{}}},
		{Users: []transport.EmbeddedUser{{Name: "a"}}},
		{Users: []transport.EmbeddedUser{{NKey: "SUABC"}}},
		{Users: []transport.EmbeddedUser{{NKey: pub}}, Token: "t"},
	} {
		if _, err := transport.StartEmbedded(c); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Errorf("StartEmbedded(%+v): %v, want ErrInvalidConfig", c, err)
		} else {
			t.Log(err)
		}
	}
	// A role with an invalid id gets permissions allowing nothing.
	subj := transport.NewSubjects("")
	for _, p := range []transport.Permissions{subj.Permissions(transport.RoleWorker, "a.b"),
		subj.Permissions(transport.RoleClient, "_admin"), subj.Permissions(transport.RoleClient, ""), subj.Permissions(0, "x")} {
		if len(p.Publish.Allow)+len(p.Subscribe.Allow) != 0 || p.AllowResponses {
			t.Errorf("permissions %+v: want nothing allowed", p)
		}
	}
}

// TestTransportPermissionsConf: each role's permissions rendered as a
// nats-server config block parse back to what the embedded server is
// given.
func TestTransportPermissionsConf(t *testing.T) {
	subj := transport.NewSubjects("p")
	dir := t.TempDir()
	for _, c := range []struct {
		role transport.Role
		id   string
	}{{transport.RoleCoordinator, ""}, {transport.RoleWorker, "w1"}, {transport.RoleWorker, transport.AnyWorker},
		{transport.RoleClient, "alice"}, {transport.RoleAdmin, ""}, {transport.RoleClient, "_bad"}} {
		p := subj.Permissions(c.role, c.id)
		conf := fmt.Sprintf("port: -1\nauthorization { users: [ { user: u, password: pw, permissions: %s } ] }\n", p.Conf())
		path := filepath.Join(dir, "nats.conf")
		must(t, os.WriteFile(path, []byte(conf), 0o600))
		opts, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Fatalf("%v %q: %v\n%s", c.role, c.id, err, conf)
		}
		if len(opts.Users) != 1 {
			t.Fatalf("%v %q: %d users", c.role, c.id, len(opts.Users))
		}
		got, want := opts.Users[0].Permissions, transport.ServerPermissions(p)
		if !reflect.DeepEqual(got.Publish, want.Publish) || !reflect.DeepEqual(got.Subscribe, want.Subscribe) ||
			(got.Response == nil) != (want.Response == nil) ||
			(got.Response != nil && (got.Response.MaxMsgs != want.Response.MaxMsgs || got.Response.Expires != want.Response.Expires)) {
			t.Errorf("%v %q: parsed %+v %+v %+v, want %+v %+v %+v\n%s", c.role, c.id, got.Publish, got.Subscribe, got.Response,
				want.Publish, want.Subscribe, want.Response, conf)
		}
	}
	w := subj.Permissions(transport.RoleWorker, transport.AnyWorker)
	if !slices.Contains(w.Publish.Allow, "p.worker.*.heartbeat") || !slices.Contains(w.Subscribe.Allow, "_INBOX.p._worker.*.>") {
		t.Errorf("any-worker permissions %+v: want every worker's heartbeat and inbox", w)
	}
}
