package transport

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix when none is configured.
const DefaultPrefix = "ringattn"

// AdminTenant is the tenant token of the admin identity on API subjects:
// only the admin role may publish on <prefix>.api._admin.*, and a request
// arriving there is served as an admin (Caller.Admin). Tenant names
// starting with "_" are reserved for it (see ValidateTenant).
const AdminTenant = "_admin"

// AnonSender is the sender token of ring subjects for a ring whose
// RingConfig names no worker (auth off).
const AnonSender = "_"

// Subjects names every NATS subject ringattn uses; all of them live here,
// and so do the role permissions derived from them (perms.go).
//
// Subjects that carry an identity carry it as a token the server's
// permissions can pin, and the serving side checks the message body
// against it:
//
//	<p>.api.<tenant>.<endpoint>           client API (a NATS micro service)
//	<p>.worker.<id>.heartbeat             worker heartbeats
//	<p>.worker.<id>.assign                assignments to one worker
//	<p>.coord.report.<id>                 a worker's shard reports
//	<p>.job.<tenant>.<job>.events         a job's events
//	<p>.ring.<sender>.<job>.<epoch>.<to>  ring frames (.ack, .ctl beside)
//
// The zero value is not usable: build one with NewSubjects.
type Subjects struct {
	prefix string
}

// NewSubjects returns the subjects under prefix ("" means DefaultPrefix).
func NewSubjects(prefix string) Subjects {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Subjects{prefix: strings.TrimSuffix(prefix, ".")}
}

// Prefix returns the configured prefix.
func (s Subjects) Prefix() string { return s.prefix }

// APIService is the name of the client API micro service; its endpoints
// live under APIPrefix: <prefix>.api.<tenant>.submit, .get, .cancel,
// .list, .cluster.
func (s Subjects) APIService() string { return "ringattn" }

// APIPrefix is the subject group of the client API.
func (s Subjects) APIPrefix() string { return s.prefix + ".api" }

// API returns the subject of one client API endpoint for the default
// tenant, e.g. API("submit"); TenantAPI names the tenant.
func (s Subjects) API(endpoint string) string { return s.TenantAPI(DefaultTenant, endpoint) }

// TenantAPI returns the subject of one client API endpoint as tenant
// (AdminTenant: as the admin).
func (s Subjects) TenantAPI(tenant, endpoint string) string {
	return s.prefix + ".api." + tenant + "." + endpoint
}

// APIServe is the subject ServeAPI subscribes for an endpoint: every
// tenant's.
func (s Subjects) APIServe(endpoint string) string { return s.prefix + ".api.*." + endpoint }

// APITenant returns the tenant token of an API request's subject, and
// whether subject is one (<prefix>.api.<tenant>.<endpoint>).
func (s Subjects) APITenant(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, s.prefix+".api.")
	if !ok {
		return "", false
	}
	tenant, endpoint, ok := strings.Cut(rest, ".")
	if !ok || tenant == "" || endpoint == "" || strings.Contains(endpoint, ".") {
		return "", false
	}
	return tenant, true
}

// Heartbeat is the legacy subject of heartbeats that name no worker in
// their subject. ServeHeartbeats still answers it (any worker id in the
// body), but no role's permissions allow publishing on it: with auth on,
// workers use WorkerHeartbeat.
//
// Deprecated: use WorkerHeartbeat (publish) or Heartbeats (subscribe).
func (s Subjects) Heartbeat() string { return s.prefix + ".worker.heartbeat" }

// WorkerHeartbeat is where worker id publishes its heartbeats (and leave
// notices).
func (s Subjects) WorkerHeartbeat(worker string) string {
	return s.prefix + ".worker." + worker + ".heartbeat"
}

// Heartbeats matches every worker's heartbeats.
func (s Subjects) Heartbeats() string { return s.prefix + ".worker.*.heartbeat" }

// Assign is where the leader sends assignments to one worker.
func (s Subjects) Assign(worker string) string { return s.prefix + ".worker." + worker + ".assign" }

// Report is the legacy subject of reports that name no worker in their
// subject; see Heartbeat.
//
// Deprecated: use WorkerReport (publish) or Reports (subscribe).
func (s Subjects) Report() string { return s.prefix + ".coord.report" }

// WorkerReport is where worker id sends its shard-done and failure
// reports for the leader to acknowledge (request/reply).
func (s Subjects) WorkerReport(worker string) string { return s.prefix + ".coord.report." + worker }

// Reports matches every worker's reports.
func (s Subjects) Reports() string { return s.prefix + ".coord.report.*" }

// JobEvents is the event stream of one job of the default tenant;
// TenantJobEvents names the tenant.
func (s Subjects) JobEvents(job string) string { return s.TenantJobEvents(DefaultTenant, job) }

// TenantJobEvents is the progress/event stream of one job of tenant.
func (s Subjects) TenantJobEvents(tenant, job string) string {
	return s.prefix + ".job." + tenant + "." + job + ".events"
}

// AnyJobEvents matches the event stream of job whatever its tenant
// (workers and tools, who may subscribe every tenant's).
func (s Subjects) AnyJobEvents(job string) string { return s.prefix + ".job.*." + job + ".events" }

// TenantAllJobEvents matches the event streams of every job of tenant.
func (s Subjects) TenantAllJobEvents(tenant string) string {
	return s.prefix + ".job." + tenant + ".*.events"
}

// AllJobEvents matches the event streams of every job of every tenant.
func (s Subjects) AllJobEvents() string { return s.prefix + ".job.*.*.events" }

// Ring is the inbox of one rank of one job epoch, as sent by a ring that
// names no worker (AnonSender); RingFrom names the sender.
func (s Subjects) Ring(job string, epoch uint64, rank int) string {
	return s.RingFrom(AnonSender, job, epoch, rank)
}

// RingFrom is the subject worker sender publishes frames for rank `rank`
// of one job epoch on.
func (s Subjects) RingFrom(sender, job string, epoch uint64, rank int) string {
	return fmt.Sprintf("%s.ring.%s.%s.%d.%d", s.prefix, sender, job, epoch, rank)
}

// RingInbox matches the frames for rank `rank` of one job epoch from any
// sender (what the rank subscribes).
func (s Subjects) RingInbox(job string, epoch uint64, rank int) string {
	return s.RingFrom("*", job, epoch, rank)
}

// RingAck is where rank `rank`'s sender receives acknowledgements (flow
// control windows) from its receiver in one job epoch, from a ring that
// names no worker; RingAckFrom names the acknowledging worker.
func (s Subjects) RingAck(job string, epoch uint64, rank int) string {
	return s.RingAckFrom(AnonSender, job, epoch, rank)
}

// RingAckFrom is the subject worker sender publishes acknowledgements
// for rank `rank` of one job epoch on.
func (s Subjects) RingAckFrom(sender, job string, epoch uint64, rank int) string {
	return s.RingFrom(sender, job, epoch, rank) + ".ack"
}

// RingAckInbox matches the acknowledgements for rank `rank` from any
// sender.
func (s Subjects) RingAckInbox(job string, epoch uint64, rank int) string {
	return s.RingAckFrom("*", job, epoch, rank)
}

// RingCtl is where rank `rank` receives control notices from its peers in
// one job epoch (a sender gave up on a frame to it, a peer's ring closed
// or opened), from a ring that names no worker; RingCtlFrom names the
// sender.
func (s Subjects) RingCtl(job string, epoch uint64, rank int) string {
	return s.RingCtlFrom(AnonSender, job, epoch, rank)
}

// RingCtlFrom is the subject worker sender publishes control notices to
// rank `rank` of one job epoch on.
func (s Subjects) RingCtlFrom(sender, job string, epoch uint64, rank int) string {
	return s.RingFrom(sender, job, epoch, rank) + ".ctl"
}

// RingCtlInbox matches the control notices to rank `rank` from any
// sender.
func (s Subjects) RingCtlInbox(job string, epoch uint64, rank int) string {
	return s.RingCtlFrom("*", job, epoch, rank)
}

// ringSender returns the sender token of a ring subject (the token after
// <prefix>.ring.), or "" when subject is not one.
func (s Subjects) ringSender(subject string) string {
	rest, ok := strings.CutPrefix(subject, s.prefix+".ring.")
	if !ok {
		return ""
	}
	sender, _, _ := strings.Cut(rest, ".")
	return sender
}

// workerToken returns the token of subject after `before` and before
// `after`, e.g. the worker id of <p>.worker.<id>.heartbeat; "" when
// subject has not that shape.
func workerToken(subject, before, after string) string {
	rest, ok := strings.CutPrefix(subject, before)
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, after)
	if !ok || id == "" || strings.Contains(id, ".") {
		return ""
	}
	return id
}
