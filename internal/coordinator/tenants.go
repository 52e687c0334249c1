package coordinator

import (
	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Tenants. A job belongs to the tenant whose API subject it was submitted
// on (transport.CallerOf: the server's permissions decide who may publish
// there; the request body has no say), recorded in the log as its owner
// (LogSubmit.owner, LogJob.owner; "default" for entries written before).
//
//   - A tenant sees, lists, cancels and watches only its own jobs: another
//     tenant's job is NOT_FOUND with the very error of a missing one
//     (lookup, list; events go to the owner's subject). The admin
//     (Caller.Admin) sees and cancels every job.
//   - Idempotency keys and input namespaces are per tenant: two tenants may
//     use the same without colliding (State.byKey by tenantKey; inputKey).
//   - A job's tensors are in its owner's bucket (transport.TenantBucket):
//     assignments name it, and the leader's output checks, expiry and
//     sweeper use it (tensorsOf).
//   - Config.MaxActivePerTenant bounds a tenant's QUEUED plus RUNNING jobs,
//     decided in State.Apply (so concurrent submits cannot overshoot it).
//
// Without enforced tenants (no NATS credentials, Config.EnforceTenants
// off) every caller is an admin, and no per-tenant quota applies.

// inputKey names an input namespace in a tenant's bucket.
type inputKey struct{ owner, ns string }

// tenantKey is the byKey index key of owner's idempotency key: owner and
// key cannot contain NUL (validName), so distinct pairs never collide.
func tenantKey(owner, key string) string { return owner + "\x00" + key }

// mayAccess reports whether caller may see and cancel j: its owner, or
// the admin.
func mayAccess(caller transport.Caller, j *cpb.Job) bool {
	return caller.Admin || j.Owner == caller.Tenant
}

// active returns the number of owner's QUEUED or RUNNING jobs.
func (s *State) active(owner string) int {
	n := 0
	for _, j := range s.jobs {
		if j.Owner == owner && (j.State == pb.JobState_JOB_STATE_QUEUED || j.State == pb.JobState_JOB_STATE_RUNNING) {
			n++
		}
	}
	return n
}
