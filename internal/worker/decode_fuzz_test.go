package worker

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func mustMarshal(f *testing.F, m proto.Message) []byte {
	f.Helper()
	data, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return data
}

// The fuzz targets feed the bytes on the wire through the decoding
// pkg/transport does (proto.Unmarshal; a message that does not decode
// never reaches the worker's checks) and then through the worker's check.

// FuzzHeartbeatAck: any bytes on the heartbeat reply decode to an error or
// to a leader id of bounded length and abort keys that can name a shard;
// nothing panics.
func FuzzHeartbeatAck(f *testing.F) {
	f.Add([]byte{})
	f.Add(mustMarshal(f, &pb.HeartbeatAck{LeaderId: "c1", Abort: []*pb.ShardRef{{JobId: "j1", Epoch: 2, Rank: 1}}}))
	f.Add(mustMarshal(f, &pb.HeartbeatAck{LeaderId: strings.Repeat("x", 1000), Abort: []*pb.ShardRef{
		{JobId: "a.b", Epoch: 1}, {JobId: "j", Epoch: 0}, {JobId: "j", Epoch: 1, Rank: -5},
		{JobId: "j", Epoch: 1<<64 - 1, Rank: 1<<31 - 1, StepsDone: -1, StepsTotal: 1 << 62}}}))
	f.Add([]byte{0x12, 0xff, 0xff, 0xff, 0xff, 0x0f}) // abort with a length past the end
	f.Fuzz(func(t *testing.T, data []byte) {
		var ack pb.HeartbeatAck
		if err := proto.Unmarshal(data, &ack); err != nil {
			return
		}
		leader, aborts := checkHeartbeatAck(&ack)
		if len(leader) > maxLogName+32 {
			t.Fatalf("leader id of %d bytes reaches the logs", len(leader))
		}
		for _, k := range aborts {
			if !validName(k.job) || k.epoch == 0 || k.rank < 0 {
				t.Fatalf("abort key %v cannot name a shard", k)
			}
		}
	})
}

// FuzzJobEvent: any bytes on a job's event subject decode to an error or
// to one action for that job; nothing panics.
func FuzzJobEvent(f *testing.F) {
	f.Add("j1", mustMarshal(f, &pb.JobEvent{JobId: "j1", Type: pb.JobEventType_JOB_EVENT_TYPE_FINISHED, State: pb.JobState_JOB_STATE_SUCCEEDED}))
	f.Add("j1", mustMarshal(f, &pb.JobEvent{JobId: "j1", Type: pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED, Epoch: 3}))
	f.Add("j1", mustMarshal(f, &pb.JobEvent{JobId: "j1", Type: pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED}))
	f.Add("j1", mustMarshal(f, &pb.JobEvent{JobId: "other", Type: pb.JobEventType_JOB_EVENT_TYPE_FINISHED}))
	f.Add("j1", mustMarshal(f, &pb.JobEvent{JobId: "j1", Type: 99, Epoch: 1<<64 - 1}))
	f.Add("j1", []byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, job string, data []byte) {
		var ev pb.JobEvent
		if err := proto.Unmarshal(data, &ev); err != nil {
			return
		}
		act, err := checkJobEvent(job, &ev)
		if err != nil {
			if act != (jobAction{}) {
				t.Fatalf("error %v with action %+v", err, act)
			}
			return
		}
		if act.finished && act.epoch != 0 {
			t.Fatalf("action %+v both ends the job and starts an epoch", act)
		}
	})
}

// FuzzReportAck: any bytes answering a report classify into one of the
// known statuses with a bounded message; nothing panics.
func FuzzReportAck(f *testing.F) {
	for st := range int32(7) {
		f.Add(mustMarshal(f, &pb.ReportAck{Status: pb.ReportStatus(st), LeaderId: "c1", Message: "m"}))
	}
	f.Add(mustMarshal(f, &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_REJECTED, Message: strings.Repeat("m", 5000)}))
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		var ack pb.ReportAck
		status, msg := reportStatus(&ack, proto.Unmarshal(data, &ack))
		switch status {
		case "accepted", "duplicate", "stale", "rejected", "retry", "error":
		default:
			t.Fatalf("status %q", status)
		}
		if status != "error" && len(msg) > maxLogName+32 {
			t.Fatalf("message of %d bytes", len(msg))
		}
	})
}
