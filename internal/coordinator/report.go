package coordinator

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// ---- reports ----

// maxReportBytes bounds an encoded report (a rank's checksums are 12 bytes
// a block; 4 MiB is over 300,000 blocks): transport refuses a larger one
// (REJECTED) before it is decoded.
const maxReportBytes = transport.MaxControlBytes

func ack(st pb.ReportStatus, js pb.JobState, format string, args ...any) *pb.ReportAck {
	return &pb.ReportAck{Status: st, JobState: js, Message: fmt.Sprintf(format, args...)}
}

// refuse is a REJECTED ack for a report the leader does not trust,
// counted by reason.
func (l *leader) refuse(reason string, js pb.JobState, format string, args ...any) *pb.ReportAck {
	l.c.met.reportsRefused.WithLabelValues(reason).Inc()
	return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, js, format, args...)
}

// handleReport commits a worker's report and says what became of it. The
// ack is sent only after the change is committed, so a worker that retries
// until it gets ACCEPTED, DUPLICATE or STALE loses nothing across a leader
// change, and a repeated report changes nothing. A panic while handling it
// is contained: the worker gets REJECTED.
func (l *leader) handleReport(rep *pb.Report) (a *pb.ReportAck) {
	c := l.c
	defer func() {
		if err := l.recovered("report", recover()); err != nil {
			a = ack(pb.ReportStatus_REPORT_STATUS_REJECTED, 0, "internal error while handling the report (logged on leader %s)", c.cfg.NodeID)
		}
		a.LeaderId = c.cfg.NodeID
		c.met.reports.WithLabelValues(reportStatusName(a.Status)).Inc()
	}()
	return l.report(rep)
}

// shardOwner checks a report against the job's current epoch: the rank
// must exist and be assigned to the reporting worker. A report for
// another epoch (or a finished job) is stale and changes nothing.
func (l *leader) shardOwner(rep *pb.Report) (*cpb.Job, *pb.ReportAck) {
	var j *cpb.Job
	l.c.fsm.view(func(s *State) { j = s.Job(rep.JobId) })
	switch {
	case j == nil:
		return nil, l.refuse("unknown_job", 0, "unknown job %s", rep.JobId)
	case j.State != pb.JobState_JOB_STATE_RUNNING || rep.Epoch != j.Epoch:
		return nil, ack(pb.ReportStatus_REPORT_STATUS_STALE, j.State, "job %s is %v in epoch %d", j.Id, j.State, j.Epoch)
	case rep.Rank < 0 || int(rep.Rank) >= len(j.Plan.GetRanks()):
		return nil, l.refuse("bad_rank", j.State, "rank %d outside [0,%d)", rep.Rank, len(j.Plan.GetRanks()))
	}
	if owner := j.Plan.Ranks[rep.Rank].WorkerId; owner != rep.WorkerId {
		l.log.Warn("refusing a report from a worker that does not own the rank", "job", j.Id, "epoch", j.Epoch, "rank", rep.Rank,
			"owner", owner, "reported_by", rep.WorkerId)
		return nil, l.refuse("not_owner", j.State, "worker_id: rank %d of job %s epoch %d is assigned to worker %s, not %s",
			rep.Rank, j.Id, j.Epoch, owner, rep.WorkerId)
	}
	return j, nil
}

// checkChecksums checks a done report's checksums against the rank's
// query blocks: each at most once, and only blocks of the rank.
func checkChecksums(rk *pb.RankPlan, blocks []*pb.BlockChecksum) error {
	if len(blocks) > len(rk.GetQBlocks()) {
		return fmt.Errorf("%d block checksums for a rank of %d blocks", len(blocks), len(rk.GetQBlocks()))
	}
	own := slices.Clone(rk.GetQBlocks())
	slices.Sort(own)
	seen := map[int32]bool{}
	for _, bc := range blocks {
		b := bc.GetBlock()
		if _, ok := slices.BinarySearch(own, b); !ok {
			return fmt.Errorf("checksum of block %d, which the rank does not own", b)
		}
		if seen[b] {
			return fmt.Errorf("block %d listed twice", b)
		}
		seen[b] = true
	}
	return nil
}

// checkGradChecksums checks a done report's gradient checksums against
// j's current epoch: none in a forward epoch and no output checksums in a
// backward one; in a backward one each block at most once, dq blocks
// planned in the epoch and neither kind listed done before it. It returns
// the field at fault.
func checkGradChecksums(j *cpb.Job, d *pb.ShardDone) (string, error) {
	if !inBackward(j) {
		if n := len(d.GetDqBlocks()) + len(d.GetDkvBlocks()); n > 0 {
			return "dq_blocks", fmt.Errorf("%d gradient checksums for a forward epoch, want none", n)
		}
		return "", nil
	}
	if len(d.GetBlocks()) > 0 {
		return "blocks", fmt.Errorf("%d output checksums for a backward epoch, want none", len(d.GetBlocks()))
	}
	planned := map[int32]bool{}
	for _, rk := range j.Plan.GetRanks() {
		for _, b := range rk.GetQBlocks() {
			planned[b] = true
		}
	}
	for _, c := range []struct {
		field string
		sums  []*pb.GradChecksum
		count int64
		done  []int32
		ok    func(int32) bool
	}{
		{"dq_blocks", d.GetDqBlocks(), qBlocks(j.Spec), j.EpochDoneDq, func(b int32) bool { return planned[b] }},
		{"dkv_blocks", d.GetDkvBlocks(), kBlocks(j.Spec), j.EpochDoneDkv, func(int32) bool { return true }},
	} {
		if int64(len(c.sums)) > c.count {
			return c.field, fmt.Errorf("%d checksums for %d blocks", len(c.sums), c.count)
		}
		seen := map[int32]bool{}
		for _, g := range c.sums {
			b := g.GetBlock()
			switch {
			case b < 0 || int64(b) >= c.count:
				return c.field, fmt.Errorf("block %d outside [0,%d)", b, c.count)
			case seen[b]:
				return c.field, fmt.Errorf("block %d listed twice", b)
			case !c.ok(b):
				return c.field, fmt.Errorf("block %d is not planned in epoch %d", b, j.Epoch)
			case slices.Contains(c.done, b):
				return c.field, fmt.Errorf("block %d was done before epoch %d", b, j.Epoch)
			}
			seen[b] = true
		}
	}
	return "", nil
}

// report handles one report transport decoded.
func (l *leader) report(rep *pb.Report) *pb.ReportAck {
	c := l.c
	if h := c.hooks.Load(); h != nil && h.report != nil {
		data, _ := proto.Marshal(rep)
		h.report(data)
	}
	if e := validName("job_id", rep.JobId, true); e != nil {
		return l.refuse("malformed", 0, "%v", e)
	}
	if e := validName("worker_id", rep.WorkerId, true); e != nil {
		return l.refuse("malformed", 0, "%v", e)
	}
	if !l.isReady() {
		return ack(pb.ReportStatus_REPORT_STATUS_RETRY, 0, "leader not ready")
	}
	switch res := rep.Result.(type) {
	case *pb.Report_Done:
		j, a := l.shardOwner(rep)
		if a != nil {
			return a
		}
		if err := checkChecksums(writerRank(j.Plan, rep.Rank), res.Done.GetBlocks()); err != nil {
			return l.refuse("bad_checksums", j.State, "done.blocks: %v", err)
		}
		if field, err := checkGradChecksums(j, res.Done); err != nil {
			return l.refuse("bad_checksums", j.State, "done.%s: %v", field, err)
		}
		r, err := c.apply(cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{
			JobId: rep.JobId, Epoch: rep.Epoch, Rank: rep.Rank, WorkerId: rep.WorkerId,
			Blocks: res.Done.GetBlocks(), UnixMs: c.now().UnixMilli(),
			DqBlocks: res.Done.GetDqBlocks(), DkvBlocks: res.Done.GetDkvBlocks(),
		})
		switch {
		case err != nil:
			return ack(pb.ReportStatus_REPORT_STATUS_RETRY, 0, "%v", err)
		case errors.Is(r.Err, ErrStaleEpoch), errors.Is(r.Err, ErrFinished):
			return ack(pb.ReportStatus_REPORT_STATUS_STALE, r.Job.GetState(), "%v", r.Err)
		case r.Err != nil:
			return ack(pb.ReportStatus_REPORT_STATUS_REJECTED, r.Job.GetState(), "%v", r.Err)
		case r.Existing:
			return ack(pb.ReportStatus_REPORT_STATUS_DUPLICATE, r.Job.State, "already recorded")
		}
		j = r.Job
		l.publish(j, pb.JobEventType_JOB_EVENT_TYPE_SHARD_DONE, rep.Rank, rep.WorkerId,
			fmt.Sprintf("rank %d done: %d of %d blocks", rep.Rank, len(j.DoneBlocks), j.BlocksTotal))
		if int64(len(j.DoneBlocks)) == j.BlocksTotal {
			l.wake() // the scheduler checks the outputs and finishes the job
		}
		return ack(pb.ReportStatus_REPORT_STATUS_ACCEPTED, j.State, "committed")
	case *pb.Report_Failed:
		return l.reportFailed(rep, res.Failed)
	default:
		return l.refuse("malformed", 0, "report carries neither done nor failed")
	}
}

// reportFailed records a shard failure. A fatal one fails the job; any
// other is noted for the scheduler, which re-plans the job's unfinished
// blocks without the worker (the ack does not wait for the new epoch).
func (l *leader) reportFailed(rep *pb.Report, f *pb.ShardFailed) *pb.ReportAck {
	c := l.c
	j, a := l.shardOwner(rep)
	if a != nil {
		return a
	}
	why := fmt.Sprintf("rank %d on worker %s: %s", rep.Rank, rep.WorkerId, truncate(f.GetReason(), maxReasonBytes))
	if f.GetBlock() >= 0 {
		why += fmt.Sprintf(" (block %d)", f.GetBlock())
	}
	l.publish(j, pb.JobEventType_JOB_EVENT_TYPE_ERROR, rep.Rank, rep.WorkerId, why)
	if f.GetFatal() {
		r, err := c.apply(cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: j.Id, Reason: why, UnixMs: c.now().UnixMilli()})
		if err != nil {
			return ack(pb.ReportStatus_REPORT_STATUS_RETRY, j.State, "%v", err)
		}
		if r.Err == nil && !r.Existing {
			l.finished(r.Job)
		}
		return ack(pb.ReportStatus_REPORT_STATUS_ACCEPTED, r.Job.GetState(), "job failed")
	}
	now := c.now()
	l.mu.Lock()
	l.suspect[rep.WorkerId] = now.Add(c.cfg.HeartbeatTimeout)
	if _, flagged := l.replan[j.Id]; !flagged || l.replan[j.Id].epoch != j.Epoch {
		l.replan[j.Id] = replanReq{epoch: j.Epoch, reason: why}
	}
	l.mu.Unlock()
	l.wake()
	return ack(pb.ReportStatus_REPORT_STATUS_ACCEPTED, pb.JobState_JOB_STATE_RUNNING, "re-planning")
}

// maxReasonBytes bounds a failure reason a worker sends (it goes into the
// log and the job record).
const maxReasonBytes = 1024

// truncate cuts s to at most n bytes of valid UTF-8.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
