package transport

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix when none is configured.
const DefaultPrefix = "ringattn"

// Subjects names every NATS subject ringattn uses; all of them live here.
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
// live under APIPrefix: <prefix>.api.submit, .get, .cancel, .list, .cluster.
func (s Subjects) APIService() string { return "ringattn" }

// APIPrefix is the subject group of the client API.
func (s Subjects) APIPrefix() string { return s.prefix + ".api" }

// API returns the subject of one client API endpoint, e.g. API("submit").
func (s Subjects) API(endpoint string) string { return s.prefix + ".api." + endpoint }

// Heartbeat is where workers publish heartbeats (and leave notices).
func (s Subjects) Heartbeat() string { return s.prefix + ".worker.heartbeat" }

// Assign is where the leader sends assignments to one worker.
func (s Subjects) Assign(worker string) string { return s.prefix + ".worker." + worker + ".assign" }

// Report is where workers send shard-done and failure reports for the
// leader to acknowledge (request/reply).
func (s Subjects) Report() string { return s.prefix + ".coord.report" }

// JobEvents is the progress/event stream of one job.
func (s Subjects) JobEvents(job string) string { return s.prefix + ".job." + job + ".events" }

// AllJobEvents matches the event streams of every job.
func (s Subjects) AllJobEvents() string { return s.prefix + ".job.*.events" }

// Ring is the inbox of one rank of one job epoch: frames for rank `to`.
func (s Subjects) Ring(job string, epoch uint64, rank int) string {
	return fmt.Sprintf("%s.ring.%s.%d.%d", s.prefix, job, epoch, rank)
}

// RingAck is where rank `from`'s sender receives acknowledgements (flow
// control windows) from its receiver in one job epoch.
func (s Subjects) RingAck(job string, epoch uint64, rank int) string {
	return fmt.Sprintf("%s.ring.%s.%d.%d.ack", s.prefix, job, epoch, rank)
}

// RingCtl is where rank `rank` receives control notices from its peers in
// one job epoch: a sender gave up on a frame to it, a peer's ring closed or
// opened.
func (s Subjects) RingCtl(job string, epoch uint64, rank int) string {
	return fmt.Sprintf("%s.ring.%s.%d.%d.ctl", s.prefix, job, epoch, rank)
}
