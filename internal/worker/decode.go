package worker

import (
	"errors"
	"fmt"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The checks of what the worker receives from the network besides
// assignments (task.go): heartbeat acks, report acks and job events.
// pkg/transport decodes each message (bounded by its size); these checks
// trust none of its fields: names are bounded before they reach a log,
// references that cannot name a shard are dropped. Each has a fuzz target
// (decode_fuzz_test.go) fed with the bytes on the wire.

// maxLogName bounds a peer-chosen name (a leader id, a message) copied into
// a log line or an abort reason.
const maxLogName = 128

// clip bounds s for a log line, quoting it when cut.
func clip(s string) string {
	if len(s) <= maxLogName {
		return s
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:maxLogName], len(s))
}

// errBadMessage is wrapped by every error of this file.
var errBadMessage = errors.New("malformed message")

// checkHeartbeatAck reads a leader's answer to a heartbeat: the leader's
// id (clipped) and the shards to abort. References that cannot name a
// shard this worker holds (a job id that is no valid name, epoch 0, a
// negative rank) are dropped.
func checkHeartbeatAck(ack *pb.HeartbeatAck) (leader string, aborts []shardKey) {
	for _, r := range ack.GetAbort() {
		k := keyOf(r)
		if !validName(k.job) || k.epoch == 0 || k.rank < 0 {
			continue
		}
		aborts = append(aborts, k)
	}
	return clip(ack.GetLeaderId()), aborts
}

// jobAction is what a job event asks of the shards of its job.
type jobAction struct {
	finished bool        // the job ended: stop every shard of it
	state    pb.JobState // its final state, when finished
	epoch    uint64      // > 0: epoch started, stop the shards of older epochs
}

// checkJobEvent reads an event received on the events subject of job: an
// event naming another job, or an epoch start with epoch 0, is an error;
// other event types ask nothing (a zero jobAction).
func checkJobEvent(job string, ev *pb.JobEvent) (jobAction, error) {
	if ev.GetJobId() != job {
		return jobAction{}, fmt.Errorf("%w: job event names job %s on the subject of job %s", errBadMessage, clip(ev.GetJobId()), job)
	}
	switch ev.GetType() {
	case pb.JobEventType_JOB_EVENT_TYPE_FINISHED:
		return jobAction{finished: true, state: ev.GetState()}, nil
	case pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED:
		if ev.GetEpoch() == 0 {
			return jobAction{}, fmt.Errorf("%w: job event: epoch 0 started, want >= 1", errBadMessage)
		}
		return jobAction{epoch: ev.GetEpoch()}, nil
	}
	return jobAction{}, nil
}

// reportStatus classifies the outcome of one report attempt (the answer
// of transport.Conn.Report): status is accepted, duplicate, stale,
// rejected or retry, or error (with the reason as message) when the call
// failed (no answer, or one that does not decode) or the answer has an
// unknown status. The message is clipped.
func reportStatus(ack *pb.ReportAck, err error) (status, message string) {
	if err != nil {
		return "error", err.Error()
	}
	msg := clip(ack.GetMessage())
	switch ack.GetStatus() {
	case pb.ReportStatus_REPORT_STATUS_ACCEPTED:
		return "accepted", msg
	case pb.ReportStatus_REPORT_STATUS_DUPLICATE:
		return "duplicate", msg
	case pb.ReportStatus_REPORT_STATUS_STALE:
		return "stale", msg
	case pb.ReportStatus_REPORT_STATUS_REJECTED:
		return "rejected", msg
	case pb.ReportStatus_REPORT_STATUS_RETRY:
		return "retry", msg
	}
	return "error", fmt.Sprintf("unknown report status %d: %s", int32(ack.GetStatus()), msg)
}
