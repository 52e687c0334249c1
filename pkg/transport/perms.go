package transport

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Role is what an identity does in a ringattn deployment; its NATS
// permissions follow from it (Subjects.Permissions).
type Role int

// Roles.
const (
	// RoleCoordinator serves the API, receives heartbeats and reports,
	// sends assignments and job events, and manages the tensor buckets.
	RoleCoordinator Role = iota + 1
	// RoleWorker (one identity per worker id) heartbeats and reports as
	// itself, receives its assignments, runs rings as itself, and reads
	// and writes tensor blocks of every tenant.
	RoleWorker
	// RoleClient (one identity per tenant) calls the API as its tenant,
	// watches its tenant's job events and uses its tenant's bucket.
	RoleClient
	// RoleAdmin calls the API as the admin (every tenant's jobs), watches
	// every job's events and reads and manages every bucket; it speaks for
	// no coordinator or worker.
	RoleAdmin
)

func (r Role) String() string {
	switch r {
	case RoleCoordinator:
		return "coordinator"
	case RoleWorker:
		return "worker"
	case RoleClient:
		return "client"
	case RoleAdmin:
		return "admin"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// ParseRole is the Role named s (coordinator, worker, client, admin).
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleCoordinator, RoleWorker, RoleClient, RoleAdmin} {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, invalid("role %q: want coordinator, worker, client or admin", s)
}

// SubjectPermission allows and denies subjects (NATS wildcards allowed);
// a subject is permitted when some Allow matches and no Deny does.
type SubjectPermission struct {
	Allow []string
	Deny  []string
}

// Permissions are the NATS permissions of one identity, as nats-server's
// user permissions: what it may publish and subscribe, and whether it may
// answer requests it receives (AllowResponses: publish once to each
// request's reply subject).
type Permissions struct {
	Publish        SubjectPermission
	Subscribe      SubjectPermission
	AllowResponses bool
}

// Inbox is the reply-subject prefix of identity id of role (its
// Config.InboxPrefix): requests it makes get their replies under it, and
// its permissions allow subscribing only there, so no identity reads the
// replies another gets. Tenant names cannot start with "_", so a
// client's inbox never overlaps another role's.
func (s Subjects) Inbox(role Role, id string) string {
	base := "_INBOX." + s.prefix + "."
	switch role {
	case RoleCoordinator:
		return base + "_coord"
	case RoleWorker:
		return base + "_worker." + id
	case RoleAdmin:
		return base + "_admin"
	}
	return base + orDefaultTenant(id)
}

// TenantBucket is the object store bucket holding tenant's tensors: base
// for the default tenant and the admin (so a deployment without tenants
// keeps its one bucket), base-<tenant> for any other. Each bucket is a
// JetStream stream of its own, so a tenant's permissions name exactly its
// bucket and its quota is the bucket's MaxBytes.
func TenantBucket(base, tenant string) string {
	if base == "" {
		base = DefaultBucket
	}
	if tenant == "" || tenant == DefaultTenant || tenant == AdminTenant {
		return base
	}
	return base + "-" + tenant
}

// BucketSubjects are the subjects one tensor bucket lives on: the object
// store's stream and its index key/value bucket (see Store).
type BucketSubjects struct {
	// Streams are the JetStream streams (OBJ_<bucket>, KV_<bucket>-index).
	Streams []string
	// Data are the subjects of their messages ($O.<bucket>.>,
	// $KV.<bucket>-index.>).
	Data []string
}

// Bucket returns the subjects of tensor bucket b.
func Bucket(b string) BucketSubjects {
	idx := indexBucket(b)
	return BucketSubjects{
		Streams: []string{"OBJ_" + b, "KV_" + idx},
		Data:    []string{"$O." + b + ".>", "$KV." + idx + ".>"},
	}
}

// jsUse are the JetStream API calls a store user makes on a stream it
// does not manage: bind it, read messages, purge an overwritten object's
// chunks, and run the ordered consumers that read objects and list keys.
// Stream creation, update and deletion (which would change the bucket's
// quota or drop it) are not among them.
func jsUse(stream string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.STREAM.MSG.GET." + stream,
		"$JS.API.STREAM.PURGE." + stream,
		"$JS.API.DIRECT.GET." + stream,
		"$JS.API.DIRECT.GET." + stream + ".>",
		"$JS.API.CONSUMER.CREATE." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".>",
		"$JS.API.CONSUMER.DELETE." + stream + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>",
		"$JS.FC." + stream + ".>",
		"$JS.ACK." + stream + ".>",
	}
}

// jsUseAll is jsUse on every stream.
var jsUseAll = []string{
	"$JS.API.INFO",
	"$JS.API.STREAM.NAMES",
	"$JS.API.STREAM.LIST",
	"$JS.API.STREAM.INFO.*",
	"$JS.API.STREAM.MSG.GET.*",
	"$JS.API.STREAM.PURGE.*",
	"$JS.API.DIRECT.GET.>",
	"$JS.API.CONSUMER.CREATE.>",
	"$JS.API.CONSUMER.DURABLE.CREATE.>",
	"$JS.API.CONSUMER.INFO.>",
	"$JS.API.CONSUMER.DELETE.>",
	"$JS.API.CONSUMER.MSG.NEXT.>",
	"$JS.FC.>",
	"$JS.ACK.>",
}

// AnyWorker, as the id of RoleWorker, gives one identity the permissions
// of every worker: for deployments whose workers share one credential (a
// Kubernetes Deployment). Clients still cannot speak as a worker, but
// workers can speak as each other; give each worker its own identity
// where that matters.
const AnyWorker = "*"

// Permissions is BucketPermissions with the default tensor bucket.
func (s Subjects) Permissions(role Role, id string) Permissions {
	return s.BucketPermissions(role, id, DefaultBucket)
}

// BucketPermissions returns the NATS permissions of identity id of role,
// all derived from these subjects: id is the worker id for RoleWorker and
// the tenant for RoleClient (ignored otherwise); bucket is the base tensor
// bucket (Config.Bucket; "" means DefaultBucket). An id that is not a
// valid name yields permissions allowing nothing.
//
//   - coordinator: serves <p>.api.*.* and the micro service's $SRV.>,
//     <p>.worker.*.heartbeat and <p>.coord.report.*; publishes
//     <p>.worker.*.assign and <p>.job.*.*.events; the whole JetStream
//     API and every bucket (it creates and deletes them).
//   - worker id (AnyWorker: any): publishes <p>.worker.<id>.heartbeat,
//     <p>.coord.report.<id> and <p>.ring.<id>.>; subscribes
//     <p>.worker.<id>.assign, <p>.ring.*.>, <p>.job.*.*.events; uses
//     every bucket's objects but creates, updates or deletes none.
//   - client tenant: publishes <p>.api.<tenant>.*; subscribes
//     <p>.job.<tenant>.*.events; uses only its tenant's bucket, whose
//     stream it cannot create, change or delete (its quota stays).
//   - admin: publishes <p>.api.> (as any tenant, and <p>.api._admin.*)
//     and $SRV.>; subscribes <p>.job.>; the whole JetStream API.
//
// Nobody but its owner subscribes an identity's inbox (Subjects.Inbox);
// only the coordinator and the workers answer requests.
func (s Subjects) BucketPermissions(role Role, id, bucket string) Permissions {
	p := s.prefix
	if bucket == "" {
		bucket = DefaultBucket
	}
	var out Permissions
	switch role {
	case RoleCoordinator:
		out.Publish.Allow = []string{
			p + ".worker.*.assign",
			p + ".job.*.*.events",
			"$JS.API.>", "$JS.FC.>", "$JS.ACK.>", "$O.>", "$KV.>",
			"$SRV.>",
		}
		out.Subscribe.Allow = []string{
			s.APIServe("*"),
			"$SRV.>",
			s.Heartbeats(), s.Reports(),
			// Legacy subjects carrying no identity: served, but no
			// role may publish on them.
			s.Heartbeat(), s.Report(),
			"_INBOX.>",
		}
		out.AllowResponses = true
	case RoleWorker:
		if id != AnyWorker && ValidateName("worker id", id) != nil {
			return Permissions{}
		}
		out.Publish.Allow = append([]string{
			s.WorkerHeartbeat(id),
			s.WorkerReport(id),
			p + ".ring." + id + ".>",
			"$O.>", "$KV.>",
		}, jsUseAll...)
		out.Subscribe.Allow = []string{
			s.Assign(id),
			p + ".ring.*.>",
			s.AllJobEvents(),
			s.Inbox(RoleWorker, id) + ".>",
		}
		out.AllowResponses = true
	case RoleClient:
		if ValidateJobTenant(id) != nil || id == "" {
			return Permissions{}
		}
		out.Publish.Allow = []string{s.TenantAPI(id, "*")}
		b := Bucket(TenantBucket(bucket, id))
		out.Publish.Allow = append(out.Publish.Allow, b.Data...)
		for _, st := range b.Streams {
			out.Publish.Allow = append(out.Publish.Allow, jsUse(st)...)
		}
		out.Subscribe.Allow = []string{
			s.TenantAllJobEvents(id),
			s.Inbox(RoleClient, id) + ".>",
		}
	case RoleAdmin:
		out.Publish.Allow = []string{
			p + ".api.>",
			"$SRV.>",
			"$JS.API.>", "$JS.FC.>", "$JS.ACK.>", "$O.>", "$KV.>",
		}
		out.Subscribe.Allow = []string{
			p + ".job.>",
			s.Inbox(RoleAdmin, "") + ".>",
		}
	default:
		return Permissions{}
	}
	// What only others may publish, denied explicitly so that no allow
	// above (now or later) lets a role speak for another.
	deny := map[Role][]string{
		RoleCoordinator: {p + ".ring.>", p + ".coord.>", p + ".api.>"},
		RoleWorker:      {p + ".api.>", p + ".job.>"},
		RoleClient:      {p + ".worker.>", p + ".coord.>", p + ".ring.>", p + ".job.>"},
		RoleAdmin:       {p + ".worker.>", p + ".coord.>", p + ".ring.>", p + ".job.>"},
	}
	out.Publish.Deny = slices.Clone(deny[role])
	return out
}

// Conf renders p as a nats-server configuration permissions block (the
// value of a user's "permissions"), e.g. for a server configured by file:
//
//	{ user: worker-0, password: $PW, permissions: <p.Conf()> }
func (p Permissions) Conf() string {
	list := func(name string, subjects []string) string {
		q := make([]string, len(subjects))
		for i, s := range subjects {
			q[i] = strconv.Quote(s)
		}
		return name + ": [" + strings.Join(q, ", ") + "]"
	}
	perm := func(name string, sp SubjectPermission) string {
		if sp.Allow == nil && sp.Deny == nil {
			sp.Deny = []string{">"} // nothing listed: nothing allowed
		}
		var parts []string
		if sp.Allow != nil {
			parts = append(parts, list("allow", sp.Allow))
		}
		if sp.Deny != nil {
			parts = append(parts, list("deny", sp.Deny))
		}
		return "  " + name + ": { " + strings.Join(parts, ", ") + " }"
	}
	lines := []string{perm("publish", p.Publish), perm("subscribe", p.Subscribe)}
	if p.AllowResponses {
		lines = append(lines, `  allow_responses: { max: 1, expires: "1m" }`)
	}
	return "{\n" + strings.Join(lines, "\n") + "\n}"
}
