package worker

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The decoders of what the worker receives from the network besides
// assignments (plan.go): heartbeat acks, report acks and job events. None
// trusts its input: a malformed message is an error, names are bounded
// before they reach a log, and references that cannot name a shard are
// dropped. Each has a fuzz target (decode_fuzz_test.go).

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

// errBadMessage is wrapped by every decoding error of this file.
var errBadMessage = errors.New("malformed message")

// decodeHeartbeatAck decodes a leader's answer to a heartbeat: the
// leader's id (clipped) and the shards to abort. References that cannot
// name a shard this worker holds (a job id that is no subject token,
// epoch 0, a negative rank) are dropped.
func decodeHeartbeatAck(data []byte) (leader string, aborts []shardKey, err error) {
	var ack pb.HeartbeatAck
	if err := proto.Unmarshal(data, &ack); err != nil {
		return "", nil, fmt.Errorf("%w: heartbeat ack: %v", errBadMessage, err)
	}
	for _, r := range ack.GetAbort() {
		k := keyOf(r)
		if !tokenRE.MatchString(k.job) || k.epoch == 0 || k.rank < 0 {
			continue
		}
		aborts = append(aborts, k)
	}
	return clip(ack.GetLeaderId()), aborts, nil
}

// jobAction is what a job event asks of the shards of its job.
type jobAction struct {
	finished bool        // the job ended: stop every shard of it
	state    pb.JobState // its final state, when finished
	epoch    uint64      // > 0: epoch started, stop the shards of older epochs
}

// decodeJobEvent decodes an event published on the events subject of job:
// an event naming another job, or an epoch start with epoch 0, is an
// error; other event types ask nothing (a zero jobAction).
func decodeJobEvent(job string, data []byte) (jobAction, error) {
	var ev pb.JobEvent
	if err := proto.Unmarshal(data, &ev); err != nil {
		return jobAction{}, fmt.Errorf("%w: job event: %v", errBadMessage, err)
	}
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

// decodeReportAck classifies a leader's answer to a report: status is
// accepted, duplicate, stale, rejected or retry, or error (with the
// reason as message) for an answer that does not decode or has an
// unknown status. The message is clipped.
func decodeReportAck(data []byte) (status, message string) {
	var ack pb.ReportAck
	if err := proto.Unmarshal(data, &ack); err != nil {
		return "error", "bad report ack: " + err.Error()
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
