package devcluster_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// attacker is a raw connection as one identity of an Auth dev cluster,
// recording the permission violations the server reports to it.
type attacker struct {
	name string
	nc   *nats.Conn
	conn *transport.Conn
	mu   sync.Mutex
	errs []error
}

func connectAs(t *testing.T, name string, cfg transport.Config) *attacker {
	t.Helper()
	a := &attacker{name: name}
	opts, err := cfg.Options(nil)
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		a.mu.Lock()
		a.errs = append(a.errs, err)
		a.mu.Unlock()
	}))
	if a.nc, err = nats.Connect(strings.Join(cfg.URLs, ","), opts...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.nc.Close)
	a.conn, err = transport.NewConn(a.nc, cfg.Subjects(), nil).ForTenant(cfg.Tenant)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// refused runs f and expects the server to report a permissions violation
// naming subject.
func (a *attacker) refused(t *testing.T, what, subject string, f func() error) {
	t.Helper()
	a.mu.Lock()
	before := len(a.errs)
	a.mu.Unlock()
	if err := f(); err != nil {
		t.Logf("%s: %s: %v", a.name, what, err)
	}
	_ = a.nc.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		errs := a.errs[before:]
		a.mu.Unlock()
		for _, err := range errs {
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
				t.Logf("%s: %s: refused: %v", a.name, what, err)
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("%s: %s: not refused (no permissions violation for %q)", a.name, what, subject)
}

func (a *attacker) publish(t *testing.T, what, subject string, m proto.Message) {
	t.Helper()
	var data []byte
	if m != nil {
		var err error
		if data, err = proto.Marshal(m); err != nil {
			t.Fatal(err)
		}
	}
	a.refused(t, what, subject, func() error { return a.nc.Publish(subject, data) })
}

// TestDevclusterAuthTenantIsolation runs a dev cluster with Auth: a
// tenant's job runs while another tenant (mallory) forges an assignment,
// a report, a heartbeat, a job event and ring frames, watches, lists,
// fetches and cancels the victim's job and overwrites its tensors, and a
// worker reports as another worker. Each is refused; the victim's job
// finishes exact.
func TestDevclusterAuthTenantIsolation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	dir := t.TempDir()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 3, WorkerThreads: 1, WorkerGFLOPS: 2, HTTPAddr: "off",
		DataDir: dir, Auth: true, Tenants: []string{"mallory"}, TenantQuota: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	creds := dev.Credentials()
	if creds == nil || len(creds.Workers) != 3 || strings.Join(creds.Tenants(), ",") != "default,mallory" {
		t.Fatalf("credentials %+v: want 3 workers and tenants default, mallory", creds)
	}
	for _, f := range []string{creds.Coordinator, creds.Admin, creds.Workers["worker-0"], creds.Clients["mallory"]} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("credential %s: %v, %v: want mode 0600", f, st.Mode(), err)
		}
	}
	// No credentials: not admitted.
	anon := dev.NATSConfig()
	anon.NKeySeedFile, anon.InProcess = "", nil
	if _, err := transport.Connect(anon, nil); !errors.Is(err, transport.ErrAuth) {
		t.Errorf("connecting without credentials: %v, want ErrAuth", err)
	}

	// The victim: the default tenant's client.
	victim, err := client.Connect(ctx, dev.NATSConfig(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()
	r := testrand.New(18)
	const h, n, d = 2, 2048, 64
	q, k, v := randTensor(r, 1, h, n, d), randTensor(r, 1, h, n, d), randTensor(r, 1, h, n, d)
	job, err := victim.SubmitAttention(ctx, q, k, v, false, client.JobOptions{Block: 256, Parallelism: 3})
	if err != nil {
		t.Fatal(err)
	}
	id := job.GetId()

	mallory := connectAs(t, "mallory", dev.ClientConfig("mallory"))
	subj := dev.NATSConfig().Subjects()
	mallory.publish(t, "forged assignment", subj.Assign("worker-0"),
		&pb.Assignment{JobId: id, Epoch: 99, Bucket: transport.DefaultBucket, InputRef: id})
	mallory.publish(t, "forged report", subj.WorkerReport("worker-0"), &pb.Report{WorkerId: "worker-0"})
	mallory.publish(t, "forged heartbeat", subj.WorkerHeartbeat("worker-0"), &pb.Heartbeat{WorkerId: "worker-0"})
	mallory.publish(t, "forged job event", subj.TenantJobEvents(transport.DefaultTenant, id), &pb.JobEvent{JobId: id})
	mallory.publish(t, "forged ring frame", subj.RingFrom("worker-0", id, 1, 1), nil)
	mallory.publish(t, "anonymous ring frame", subj.Ring(id, 1, 1), nil)
	mallory.publish(t, "the victim's API", subj.TenantAPI(transport.DefaultTenant, transport.EndpointCancel), &pb.CancelRequest{JobId: id})
	mallory.refused(t, "watch the victim's events", subj.TenantJobEvents(transport.DefaultTenant, id), func() error {
		_, stop, err := mallory.conn.WatchTenantEvents(ctx, transport.DefaultTenant, id)
		if err == nil {
			t.Cleanup(func() { _ = stop() })
		}
		return err
	})
	// The victim's tensors: not readable, overwritable or deletable.
	base := transport.TenantBucket("", transport.DefaultTenant)
	mallory.publish(t, "overwrite the victim's tensor", "$O."+base+".M.x", nil)
	mallory.publish(t, "purge the victim's tensors", "$JS.API.STREAM.PURGE.OBJ_"+base, nil)
	octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := transport.OpenStore(octx, mallory.nc, transport.StoreConfig{Bucket: base}, nil); !errors.Is(err, transport.ErrPermission) {
		t.Errorf("mallory opens the victim's bucket: %v, want ErrPermission", err)
	} else {
		t.Log(err)
	}
	ocancel()
	// Her own bucket works, within her quota.
	own, err := transport.OpenStore(ctx, mallory.nc, dev.ClientConfig("mallory").StoreConfig(), nil)
	if err != nil {
		t.Fatalf("mallory opens her bucket: %v", err)
	}
	if err := own.PutBlock(ctx, id, "q", 0, make([]float32, 16), transport.F32); err != nil {
		t.Errorf("mallory writes her own bucket: %v", err)
	}
	if err := own.PutBlock(ctx, id, "k", 0, make([]float32, 3<<20), transport.F32); !errors.Is(err, transport.ErrStoreFull) {
		t.Errorf("mallory writes 12 MiB into her 8 MiB quota: %v, want ErrStoreFull", err)
	}

	// The API as mallory, against a second victim job submitted just now
	// (queued or running): it does not exist for her, whatever its state.
	// These need the coordinator to enforce tenants (transport.CallerOf).
	sq, sk, sv := randTensor(r, 1, 1, 256, 32), randTensor(r, 1, 1, 256, 32), randTensor(r, 1, 1, 256, 32)
	job2, err := victim.SubmitAttention(ctx, sq, sk, sv, false, client.JobOptions{Block: 64})
	if err != nil {
		t.Fatal(err)
	}
	id2 := job2.GetId()
	api := transport.NewAPIClient(mallory.conn)
	api.Timeout = 2 * time.Second
	if _, err := api.Cancel(ctx, &pb.CancelRequest{JobId: id2, Reason: "mallory"}); !errors.Is(err, transport.ErrAPINotFound) {
		t.Errorf("mallory cancels the victim's job: %v, want NOT_FOUND", err)
	}
	for _, j := range []string{id, id2} {
		if _, err := api.Get(ctx, &pb.GetRequest{JobId: j}); !errors.Is(err, transport.ErrAPINotFound) {
			t.Errorf("mallory gets the victim's job %s: %v, want NOT_FOUND", j, err)
		}
	}
	if rep, err := api.List(ctx, &pb.ListRequest{}); err != nil {
		t.Errorf("mallory lists: %v", err)
	} else {
		for _, j := range rep.GetJobs() {
			if j.GetId() == id || j.GetId() == id2 {
				t.Errorf("mallory's list shows the victim's job %s", j.GetId())
			}
		}
	}

	// A worker reporting as another: refused by the server, and by the
	// coordinator when the subject is its own.
	w1 := connectAs(t, "worker-1", dev.WorkerConfig("worker-1"))
	w1.publish(t, "report as worker-0", subj.WorkerReport("worker-0"), &pb.Report{WorkerId: "worker-0", JobId: id})
	w1.publish(t, "heartbeat as worker-0", subj.WorkerHeartbeat("worker-0"), &pb.Heartbeat{WorkerId: "worker-0"})
	w1.publish(t, "ring frame as worker-0", subj.RingFrom("worker-0", id, 1, 1), nil)
	if ack, err := w1.conn.Report(ctx, &pb.Report{WorkerId: "worker-1", JobId: "x"}); err != nil || ack.LeaderId == "" {
		t.Errorf("worker-1 reports as itself: %v, %v: want the leader's answer", ack, err)
	}
	data, _ := proto.Marshal(&pb.Report{WorkerId: "worker-0", JobId: id})
	if m, err := w1.nc.Request(subj.WorkerReport("worker-1"), data, 5*time.Second); err != nil {
		t.Errorf("worker-1 sends worker-0's report on its own subject: %v", err)
	} else {
		var ack pb.ReportAck
		if err := proto.Unmarshal(m.Data, &ack); err != nil || ack.Status != pb.ReportStatus_REPORT_STATUS_REJECTED {
			t.Errorf("worker-0's report on worker-1's subject: %v, %v: want REJECTED", &ack, err)
		}
	}

	// The victim's jobs finish, exact.
	for _, c := range []struct {
		id      string
		q, k, v *tensor.Tensor
	}{{id, q, k, v}, {id2, sq, sk, sv}} {
		st, err := victim.Wait(ctx, c.id)
		if err != nil || st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("the victim's job %s: %v, %v: want SUCCEEDED", c.id, st, err)
			continue
		}
		res, err := victim.FetchAttention(ctx, st)
		if err != nil {
			t.Fatal(err)
		}
		sh := c.q.Shape
		ref := &attnref.Problem{B: sh[0], Hq: sh[1], Hkv: sh[1], N: sh[2], Nk: sh[2], D: sh[3]}
		wo, _ := ref.Attention(c.q.Data, c.k.Data, c.v.Data)
		tol := 2e-4 * max(1, attnref.MaxAbs(wo))
		if dd := attnref.MaxAbsDiff(res.O.Data, wo); !(dd <= tol) {
			t.Errorf("the victim's job %s differs from the float64 reference by %g, want <= %g", c.id, dd, tol)
		} else {
			t.Logf("the victim's job %s: max |o - ref| = %g", c.id, dd)
		}
	}
}
