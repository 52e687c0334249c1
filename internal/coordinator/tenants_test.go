package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// tenantClient calls the API of the cluster at url as tenant (AdminTenant:
// as the admin). The embedded server has no auth, so the subject is the
// only identity: what a server's permissions pin in production.
func tenantClient(t *testing.T, url, tenant string) *transport.APIClient {
	t.Helper()
	cl := transport.NewAPIClient(connect(t, url))
	cl.Tenant = tenant
	cl.Timeout = time.Second
	return cl
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func listIDs(t *testing.T, cl *transport.APIClient) []string {
	t.Helper()
	rep, err := cl.List(ctxFor(t, 20*time.Second), &pb.ListRequest{})
	if err != nil {
		t.Fatalf("list as %s: %v", cl.Tenant, err)
	}
	var ids []string
	for _, j := range rep.GetJobs() {
		ids = append(ids, j.GetId())
	}
	if int(rep.GetTotal()) != len(ids) {
		t.Fatalf("list as %s: total %d, %d jobs", cl.Tenant, rep.GetTotal(), len(ids))
	}
	slices.Sort(ids)
	return ids
}

func sorted(xs ...string) []string { slices.Sort(xs); return xs }

// TestCoordinatorTenantsOwnTheirJobs: with tenants enforced, a job is its
// submitter's. Another tenant gets NOT_FOUND for it, with the message a
// missing job gets, cannot cancel it, and does not list it; the admin
// sees and cancels every job. Two tenants may use one idempotency key and
// one input namespace (each in its own bucket) without colliding.
func TestCoordinatorTenantsOwnTheirJobs(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.EnforceTenants = true })
	tc.leader()
	alice, bob := tenantClient(t, tc.url, "alice"), tenantClient(t, tc.url, "bob")
	admin := tenantClient(t, tc.url, transport.AdminTenant)
	ctx := ctxFor(t, 30*time.Second)

	a1, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("shared", 256)})
	noErr(t, err)
	// The same key and input namespace as bob: his own job.
	b1, err := bob.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("shared", 256)})
	noErr(t, err)
	if b1.Existing || b1.Job.Id == a1.Job.Id {
		t.Fatalf("bob's submit with alice's key: %v, want a new job (alice's is %s)", b1, a1.Job.Id)
	}
	// A retry is idempotent within the tenant.
	if again, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("shared", 256)}); err != nil || !again.Existing || again.Job.Id != a1.Job.Id {
		t.Fatalf("alice's retry: %v, %v: want her job %s", again, err, a1.Job.Id)
	}
	// Another spec under bob's key conflicts with bob's job only.
	other := attnSpec("shared", 512)
	if _, err := bob.Submit(ctx, &pb.SubmitRequest{Spec: other}); !errors.Is(err, transport.ErrAPIInvalid) || !strings.Contains(err.Error(), b1.Job.Id) {
		t.Fatalf("bob reuses his key with another spec: %v, want a conflict naming his job %s", err, b1.Job.Id)
	}

	// Alice's job does not exist for bob: the same error as a missing job.
	_, errOther := bob.Get(ctx, &pb.GetRequest{JobId: a1.Job.Id})
	_, errNone := bob.Get(ctx, &pb.GetRequest{JobId: "j-none"})
	if !errors.Is(errOther, transport.ErrAPINotFound) ||
		strings.ReplaceAll(errOther.Error(), a1.Job.Id, "ID") != strings.ReplaceAll(errNone.Error(), "j-none", "ID") {
		t.Fatalf("bob gets alice's job: %v; a missing job: %v: want the same NOT_FOUND", errOther, errNone)
	}
	if _, err := bob.Cancel(ctx, &pb.CancelRequest{JobId: a1.Job.Id}); !errors.Is(err, transport.ErrAPINotFound) {
		t.Fatalf("bob cancels alice's job: %v, want NOT_FOUND", err)
	}
	if got, err := alice.Get(ctx, &pb.GetRequest{JobId: a1.Job.Id}); err != nil || got.Job.State != pb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("alice's job after bob's cancel: %v, %v: want QUEUED", got, err)
	}
	if got := listIDs(t, alice); !slices.Equal(got, []string{a1.Job.Id}) {
		t.Fatalf("alice lists %v, want only %s", got, a1.Job.Id)
	}
	if got := listIDs(t, bob); !slices.Equal(got, []string{b1.Job.Id}) {
		t.Fatalf("bob lists %v, want only %s", got, b1.Job.Id)
	}
	// The default tenant (a client naming none) owns neither.
	if got := listIDs(t, tenantClient(t, tc.url, "")); len(got) != 0 {
		t.Fatalf("the default tenant lists %v, want nothing", got)
	}

	// The admin sees and cancels all.
	if got := listIDs(t, admin); !slices.Equal(got, sorted(a1.Job.Id, b1.Job.Id)) {
		t.Fatalf("the admin lists %v, want both jobs", got)
	}
	if _, err := admin.Get(ctx, &pb.GetRequest{JobId: b1.Job.Id}); err != nil {
		t.Fatalf("the admin gets bob's job: %v", err)
	}
	if rep, err := admin.Cancel(ctx, &pb.CancelRequest{JobId: b1.Job.Id, Reason: "admin"}); err != nil || rep.Job.State != pb.JobState_JOB_STATE_CANCELED {
		t.Fatalf("the admin cancels bob's job: %v, %v", rep, err)
	}
	// Alice cancels her own.
	if rep, err := alice.Cancel(ctx, &pb.CancelRequest{JobId: a1.Job.Id}); err != nil || rep.Job.State != pb.JobState_JOB_STATE_CANCELED {
		t.Fatalf("alice cancels her job: %v, %v", rep, err)
	}

	// The owner is in the replicated record (and so in every replica).
	var owners map[string]string
	tc.nodes[0].fsm.view(func(s *State) {
		owners = map[string]string{}
		for _, j := range s.Jobs(nil) {
			owners[j.Id] = j.Owner
		}
	})
	if owners[a1.Job.Id] != "alice" || owners[b1.Job.Id] != "bob" {
		t.Fatalf("owners in the state: %v", owners)
	}
}

// TestCoordinatorTenantsOffEveryoneIsAdmin: without EnforceTenants (no
// credentials) every caller is an admin: a job submitted as alice is hers
// (its tensors are in her bucket) but every caller sees it, and no
// per-tenant quota applies.
func TestCoordinatorTenantsOffEveryoneIsAdmin(t *testing.T) {
	tc := newCluster(t, 1, nil)
	tc.leader()
	alice, bob := tenantClient(t, tc.url, "alice"), tenantClient(t, tc.url, "bob")
	ctx := ctxFor(t, 30*time.Second)
	a1, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("off", 256)})
	noErr(t, err)
	if _, err := bob.Get(ctx, &pb.GetRequest{JobId: a1.Job.Id}); err != nil {
		t.Fatalf("bob gets alice's job with tenants off: %v", err)
	}
	if got := listIDs(t, bob); !slices.Equal(got, []string{a1.Job.Id}) {
		t.Fatalf("bob lists %v with tenants off, want alice's job", got)
	}
	// No per-tenant quota without tenants: MaxQueued alone bounds them.
	for i := range DefaultMaxActivePerTenant {
		if _, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec(fmt.Sprintf("off-%d", i), 256)}); err != nil {
			t.Fatalf("submit %d past the default per-tenant quota with tenants off: %v", i+2, err)
		}
	}
}

// TestCoordinatorTenantQuota: Config.MaxActivePerTenant bounds a tenant's
// QUEUED plus RUNNING jobs: at the limit a submit is refused
// RESOURCE_EXHAUSTED naming the tenant, the count and the limit; other
// tenants are not affected; a finished job frees its slot; a retry of an
// accepted submit is still answered.
func TestCoordinatorTenantQuota(t *testing.T) {
	const limit = 3
	tc := newCluster(t, 1, func(c *Config) { c.EnforceTenants, c.MaxActivePerTenant = true, limit })
	tc.leader()
	alice, bob := tenantClient(t, tc.url, "alice"), tenantClient(t, tc.url, "bob")
	ctx := ctxFor(t, 30*time.Second)
	var ids []string
	for i := range limit { // up to the limit: accepted
		r, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("q"+string(rune('a'+i)), 256)})
		if err != nil {
			t.Fatalf("alice's submit %d of %d: %v", i+1, limit, err)
		}
		ids = append(ids, r.Job.Id)
	}
	// Just past it: refused.
	_, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("qx", 256)})
	ae, _ := errors.AsType[*transport.APIError](err)
	if ae == nil || ae.Code != pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED ||
		ae.Message != `tenant "alice" has 3 active jobs (queued or running), want fewer than 3 (--max-active-per-tenant); wait for one to finish` {
		t.Fatalf("alice's submit past her quota: %v", err)
	}
	// A retry of an accepted submit is not a new job.
	if r, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("qa", 256)}); err != nil || !r.Existing || r.Job.Id != ids[0] {
		t.Fatalf("alice retries an accepted submit at her quota: %v, %v", r, err)
	}
	// Bob has his own quota.
	if _, err := bob.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("qa", 256)}); err != nil {
		t.Fatalf("bob's submit while alice is at her quota: %v", err)
	}
	// A finished job frees a slot.
	if _, err := alice.Cancel(ctx, &pb.CancelRequest{JobId: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("qx", 256)}); err != nil {
		t.Fatalf("alice's submit after a cancel: %v", err)
	}
}

// TestFSMTenantQuotaDecidedInApply: the per-tenant limit is decided in
// log order (as MaxQueued), so submits proposed at once cannot overshoot
// it: of limit+2 submits applied in a row, limit are accepted; RUNNING
// jobs count, finished ones do not; the admin's jobs are the default
// tenant's; "" reads as the default tenant.
func TestFSMTenantQuotaDecidedInApply(t *testing.T) {
	s := NewState()
	var idx uint64
	apply := func(typ cpb.CommandType, m proto.Message) *Result {
		t.Helper()
		idx++
		data, err := encodeCommand(typ, m)
		noErr(t, err)
		var cmd cpb.Command
		noErr(t, proto.Unmarshal(data, &cmd))
		r, err := s.Apply(idx, &cmd)
		noErr(t, err)
		return r
	}
	sub := func(id, owner string) *Result {
		return apply(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: id, Spec: attnSpec(id, 256), UnixMs: 1,
			Owner: owner, MaxActivePerTenant: 2})
	}
	var accepted []string
	for _, id := range []string{"a1", "a2", "a3", "a4"} {
		if r := sub(id, "alice"); r.Err == nil {
			accepted = append(accepted, id)
		} else if !errors.Is(r.Err, ErrTenantQuota) || !errors.Is(r.Err, ErrLimit) {
			t.Fatalf("submit %s: %v, want ErrTenantQuota", id, r.Err)
		}
	}
	if !slices.Equal(accepted, []string{"a1", "a2"}) {
		t.Fatalf("accepted %v, want a1, a2", accepted)
	}
	if r := apply(cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a1", Epoch: 1, Plan: testPlan([]int32{0}, []int32{1}, []int32{2}, []int32{3}), UnixMs: 2}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := sub("a5", "alice"); !errors.Is(r.Err, ErrTenantQuota) {
		t.Fatalf("submit with one job RUNNING and one QUEUED: %v, want ErrTenantQuota", r.Err)
	}
	if r := apply(cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "a1", Reason: "x", UnixMs: 3}); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := sub("a6", "alice"); r.Err != nil || r.Job.Owner != "alice" {
		t.Fatalf("submit after a failure: %v", r)
	}
	// "" is the default tenant, with a quota of its own.
	for _, id := range []string{"d1", "d2"} {
		if r := sub(id, ""); r.Err != nil || r.Job.Owner != transport.DefaultTenant {
			t.Fatalf("default tenant's submit %s: %v", id, r)
		}
	}
	if r := sub("d3", transport.DefaultTenant); !errors.Is(r.Err, ErrTenantQuota) || !strings.Contains(r.Err.Error(), `tenant "default" has 2 active jobs`) {
		t.Fatalf("default tenant past its quota: %v", r.Err)
	}
	// 0 is no limit.
	if r := apply(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "d4", Spec: attnSpec("d4", 256), UnixMs: 1}); r.Err != nil {
		t.Fatalf("submit without a limit: %v", r.Err)
	}
	// Idempotency keys are per owner, in a snapshot too.
	if r := sub("b1", "bob"); r.Err != nil || r.Existing {
		t.Fatalf("bob's submit: %v", r)
	}
	if r := apply(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "b2", Spec: attnSpec("a2", 256), UnixMs: 1, Owner: "bob"}); r.Err != nil || r.Existing {
		t.Fatalf("bob's submit with alice's key a2: %v, want a new job", r)
	}
	if s.JobByKey("bob", "a2").GetId() != "b2" || s.JobByKey("alice", "a2").GetId() != "a2" || s.JobByKey(transport.DefaultTenant, "a2") != nil {
		t.Fatal("idempotency keys are not per owner")
	}
	var buf strings.Builder
	noErr(t, s.WriteSnapshot(&buf, 10))
	restored, err := ReadState(strings.NewReader(buf.String()))
	if err != nil || !restored.Equal(s) || restored.JobByKey("bob", "a2").GetId() != "b2" || restored.Job("b2").GetOwner() != "bob" {
		t.Fatalf("snapshot round trip: %v", err)
	}
}

// TestCoordinatorTenantJobRunsInItsBucket: a tenant's job is assigned with
// its owner's bucket, its outputs are checked there (a check in another
// bucket would find them missing and fail the job), its events go to the
// owner's event subject only, and on expiry its tensors are deleted from
// that bucket.
func TestCoordinatorTenantJobRunsInItsBucket(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.EnforceTenants, c.JobTTL = true, 2*time.Second })
	tc.leader()
	nc := connect(t, tc.url)
	alice := tenantClient(t, tc.url, "alice")
	ctx := ctxFor(t, 60*time.Second)
	aliceEvents, stopA, err := nc.WatchTenantEvents(ctx, "alice", "")
	noErr(t, err)
	t.Cleanup(func() { _ = stopA() })
	defaultEvents, stopD, err := nc.WatchTenantEvents(ctx, transport.DefaultTenant, "")
	noErr(t, err)
	t.Cleanup(func() { _ = stopD() })
	flush(t, nc)
	w := newTestWorker(t, tc.url, "wa", 10, 0)
	waitWorkers(t, nc, 1)

	bucket := transport.TenantBucket("", "alice")
	st, err := nc.OpenStore(ctx, transport.StoreConfig{Bucket: bucket})
	noErr(t, err)
	r, err := alice.Submit(ctx, &pb.SubmitRequest{Spec: attnSpec("mine", 256)})
	noErr(t, err)
	id := r.Job.Id
	checked := false
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		got, err := alice.Get(ctx, &pb.GetRequest{JobId: id})
		if err != nil {
			return err
		}
		if got.Job.State == pb.JobState_JOB_STATE_FAILED || strings.HasPrefix(got.Job.Reason, "JOB_STATE_FAILED") {
			t.Fatalf("alice's job failed: %s", got.Job.Reason)
		}
		if got.Job.State == pb.JobState_JOB_STATE_SUCCEEDED && !checked {
			// Its outputs are in alice's bucket, and the leader found them
			// there (it did not re-plan them).
			checked = true
			if _, err := st.BlockInfo(ctx, id, transport.TensorO, 0); err != nil {
				t.Fatalf("alice's output block 0 in her bucket %s: %v", bucket, err)
			}
			if got.Job.Epoch != 1 || got.Job.Reason != "" {
				t.Fatalf("alice's job succeeded in epoch %d (%q), want 1 (no redo)", got.Job.Epoch, got.Job.Reason)
			}
		}
		if got.Job.State != pb.JobState_JOB_STATE_EXPIRED {
			return errors.New("job " + id + " is " + got.Job.State.String())
		}
		return nil
	})
	if !checked {
		t.Fatal("the job expired before it was seen SUCCEEDED")
	}
	w.mu.Lock()
	buckets := []string{}
	for b := range w.stores {
		buckets = append(buckets, b)
	}
	w.mu.Unlock()
	if !slices.Equal(buckets, []string{bucket}) {
		t.Fatalf("the worker wrote to buckets %v, want only %s", buckets, bucket)
	}
	// Expired: its tensors are gone from alice's bucket.
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if _, err := st.BlockInfo(ctx, id, transport.TensorO, 0); err == nil {
			return errors.New("alice's expired job's output still in her bucket")
		}
		return nil
	})
	// Events: on alice's subject, none on the default tenant's.
	var types []pb.JobEventType
	for len(aliceEvents) > 0 {
		ev := <-aliceEvents
		if ev.GetJobId() == id {
			types = append(types, ev.GetType())
		}
	}
	if !slices.Contains(types, pb.JobEventType_JOB_EVENT_TYPE_FINISHED) {
		t.Fatalf("alice's events of her job: %v, want FINISHED among them", types)
	}
	if n := len(defaultEvents); n != 0 {
		t.Fatalf("%d events on the default tenant's subjects, want none", n)
	}
}
