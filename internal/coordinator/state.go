package coordinator

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// SnapshotVersion is the snapshot format this code writes; it reads any
// version up to it. 1: records were the wire's messages; 2: raft.proto's
// own LogJob, with 1's field numbers (logschema.go); 3: LogJob.owner (a
// v2 build must not drop it; a record without it is the default tenant's).
const SnapshotVersion = 3

// State is the replicated state: every job record and the idempotency-key
// index (per owner: two tenants may use one key). It is changed only by Apply, deterministically from the command
// and the log index (times come inside commands, never from the clock).
// State is not safe for concurrent use; the FSM adapter serialises access.
type State struct {
	jobs  map[string]*cpb.Job
	byKey map[string]string // tenantKey(owner, idempotency key) -> job id
}

// NewState returns an empty state.
func NewState() *State {
	return &State{jobs: map[string]*cpb.Job{}, byKey: map[string]string{}}
}

// Result is the outcome of one applied command.
type Result struct {
	// Job is a copy of the job record after the command (nil if none).
	Job *cpb.Job
	// Existing: the command changed nothing because it had already been
	// applied (submit with a known idempotency key, a duplicate shard done,
	// cancel of a canceled job).
	Existing bool
	// Err is the business error, if the command was refused.
	Err error
}

// Apply applies one committed command at log index. The returned error is
// not a business error (those are in Result.Err): it means the entry
// cannot be understood, and the caller must stop rather than diverge.
func (s *State) Apply(index uint64, cmd *cpb.Command) (*Result, error) {
	var (
		r   *Result
		err error
	)
	if v := logVersionOf(cmd); v > LogVersion {
		return nil, fmt.Errorf("%w: index %d: %v", ErrCorruptEntry, index, errLogVersion(v))
	}
	switch cmd.GetType() {
	case cpb.CommandType_COMMAND_TYPE_SUBMIT:
		var c cpb.LogSubmit
		if err = decode(cmd, &c); err == nil {
			r = s.applySubmit(index, submitFromLog(&c))
		}
	case cpb.CommandType_COMMAND_TYPE_START_EPOCH:
		var c cpb.LogStartEpoch
		if err = decode(cmd, &c); err == nil {
			r = s.applyStartEpoch(startEpochFromLog(&c))
		}
	case cpb.CommandType_COMMAND_TYPE_SHARD_DONE:
		var c cpb.LogShardDone
		if err = decode(cmd, &c); err == nil {
			r = s.applyShardDone(shardDoneFromLog(&c))
		}
	case cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED:
		var c cpb.JobSucceeded
		if err = decode(cmd, &c); err == nil {
			r = s.applySucceeded(&c)
		}
	case cpb.CommandType_COMMAND_TYPE_JOB_FAILED:
		var c cpb.JobFailed
		if err = decode(cmd, &c); err == nil {
			r = s.applyFailed(&c)
		}
	case cpb.CommandType_COMMAND_TYPE_JOB_CANCELED:
		var c cpb.JobCanceled
		if err = decode(cmd, &c); err == nil {
			r = s.applyCanceled(&c)
		}
	case cpb.CommandType_COMMAND_TYPE_EXPIRE:
		var c cpb.Expire
		if err = decode(cmd, &c); err == nil {
			r = s.applyExpire(&c)
		}
	case cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS:
		var c cpb.RedoBlocks
		if err = decode(cmd, &c); err == nil {
			r = s.applyRedo(&c)
		}
	default:
		return nil, fmt.Errorf("%w: index %d: unknown command type %d", ErrCorruptEntry, index, cmd.GetType())
	}
	if err != nil {
		return nil, fmt.Errorf("%w: index %d: %v", ErrCorruptEntry, index, err)
	}
	return r, nil
}

func decode(cmd *cpb.Command, m proto.Message) error {
	if err := proto.Unmarshal(cmd.GetPayload(), m); err != nil {
		return fmt.Errorf("%v payload: %w", cmd.GetType(), err)
	}
	return nil
}

func fail(err error, format string, args ...any) *Result {
	return &Result{Err: fmt.Errorf("%w: "+format, append([]any{err}, args...)...)}
}

func ok(j *cpb.Job, existing bool) *Result {
	return &Result{Job: proto.CloneOf(j), Existing: existing}
}

// Terminal reports whether a job state is final (or expired).
func Terminal(st pb.JobState) bool {
	switch st {
	case pb.JobState_JOB_STATE_SUCCEEDED, pb.JobState_JOB_STATE_FAILED,
		pb.JobState_JOB_STATE_CANCELED, pb.JobState_JOB_STATE_EXPIRED:
		return true
	}
	return false
}

// BlockCount is the number of query (output) blocks of a spec.
func BlockCount(spec *pb.JobSpec) int64 {
	b := spec.GetBlock()
	if b <= 0 {
		b = shard.DefaultBlock
	}
	return (spec.GetN() + b - 1) / b
}

func (s *State) applySubmit(index uint64, c *cpb.Submit) *Result {
	if c.GetJobId() == "" || c.GetSpec() == nil {
		return fail(ErrBadCommand, "submit without job id or spec")
	}
	owner := ownerOf(c.GetOwner())
	if key := c.GetSpec().GetIdempotencyKey(); key != "" {
		if id, ok2 := s.byKey[tenantKey(owner, key)]; ok2 {
			j := s.jobs[id]
			if j.GetState() != pb.JobState_JOB_STATE_EXPIRED && !sameSpec(j.GetSpec(), c.GetSpec()) {
				return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: key %q is job %s", ErrIdempotencyConflict, key, id)}
			}
			return ok(j, true)
		}
	}
	if _, dup := s.jobs[c.GetJobId()]; dup {
		return fail(ErrExists, "job %s", c.GetJobId())
	}
	// The queue limit is decided here, in log order, so concurrent submits
	// cannot overshoot it (a check before proposing reads a state the
	// other proposals have not changed yet). Counting is O(jobs), and only
	// when there are at least as many jobs as the limit.
	if limit := c.GetMaxQueued(); limit > 0 && int64(len(s.jobs)) >= limit {
		if n := s.count(pb.JobState_JOB_STATE_QUEUED); int64(n) >= limit {
			return fail(ErrQueueFull, "%d jobs queued, want fewer than %d (Limits.MaxQueued); retry later", n, limit)
		}
	}
	// The owner's active-jobs quota, decided here for the same reason.
	if limit := c.GetMaxActivePerTenant(); limit > 0 && int64(len(s.jobs)) >= limit {
		if n := s.active(owner); int64(n) >= limit {
			return fail(ErrTenantQuota, "tenant %q has %d active jobs (queued or running), want fewer than %d (--max-active-per-tenant); wait for one to finish", owner, n, limit)
		}
	}
	// Only backward jobs are new here (old log entries never hit this).
	if c.GetSpec().GetMode() == pb.JobMode_JOB_MODE_BACKWARD && blocksTotal(c.GetSpec()) > math.MaxInt32 {
		return fail(ErrBadCommand, "job %s: %d blocks, want at most %d", c.GetJobId(), blocksTotal(c.GetSpec()), math.MaxInt32)
	}
	j := &cpb.Job{
		Id:            c.GetJobId(),
		Spec:          proto.CloneOf(c.GetSpec()),
		State:         pb.JobState_JOB_STATE_QUEUED,
		BlocksTotal:   blocksTotal(c.GetSpec()),
		CreatedUnixMs: c.GetUnixMs(),
		Seq:           index,
		Owner:         owner,
	}
	s.jobs[j.Id] = j
	if key := j.Spec.GetIdempotencyKey(); key != "" {
		s.byKey[tenantKey(owner, key)] = j.Id
	}
	return ok(j, false)
}

// sameSpec reports whether two submits of one idempotency key ask for the
// same job. input_ref is not compared: a client uploads each attempt under
// a fresh namespace, so a retry names another one (its upload is an orphan
// the sweeper deletes); the job keeps reading the first attempt's inputs.
func sameSpec(a, b *pb.JobSpec) bool {
	if a.GetInputRef() == b.GetInputRef() {
		return proto.Equal(a, b)
	}
	a2, b2 := proto.CloneOf(a), proto.CloneOf(b)
	a2.InputRef, b2.InputRef = "", ""
	return proto.Equal(a2, b2)
}

// specInputRef is the store namespace a spec reads its inputs from.
func specInputRef(s *pb.JobSpec) string {
	if r := s.GetInputRef(); r != "" {
		return r
	}
	return s.GetIdempotencyKey()
}

// inputUser returns a job of owner that is not expired and reads its
// inputs from namespace ref of owner's bucket (nil if none).
func (s *State) inputUser(owner, ref string) *cpb.Job {
	if ref == "" {
		return nil
	}
	for _, j := range s.jobs {
		if j.State != pb.JobState_JOB_STATE_EXPIRED && j.Owner == owner && specInputRef(j.Spec) == ref {
			return proto.CloneOf(j)
		}
	}
	return nil
}

func (s *State) applyStartEpoch(c *cpb.StartEpoch) *Result {
	j, ok2 := s.jobs[c.GetJobId()]
	if !ok2 {
		return fail(ErrNotFound, "job %s", c.GetJobId())
	}
	if Terminal(j.State) {
		return fail(ErrFinished, "job %s is %v", j.Id, j.State)
	}
	if c.GetEpoch() != j.Epoch+1 {
		return fail(ErrStaleEpoch, "job %s: start epoch %d, current %d", j.Id, c.GetEpoch(), j.Epoch)
	}
	if len(c.GetPlan().GetRanks()) == 0 {
		return fail(ErrBadCommand, "job %s epoch %d: plan without ranks", j.Id, c.GetEpoch())
	}
	qb := qBlocks(j.Spec)
	if g := c.GetPlan().GetHeadGroups(); g < 0 || int64(g) > max(1, j.Spec.GetHkv()) ||
		(g > 1 && (int64(c.GetPlan().GetQBlockCount()) != qb || int64(c.GetPlan().GetKBlockCount()) != kBlocks(j.Spec))) {
		return fail(ErrBadCommand, "job %s epoch %d: %d head groups in a plan of %d/%d blocks, the job has %d/%d", j.Id, c.GetEpoch(), g,
			c.GetPlan().GetQBlockCount(), c.GetPlan().GetKBlockCount(), qb, kBlocks(j.Spec))
	}
	units := qb * int64(headGroups(c.GetPlan())) // heads.go
	for r, rk := range c.GetPlan().GetRanks() {
		for _, b := range rk.GetQBlocks() {
			if b < 0 || int64(b) >= units {
				return fail(ErrBadCommand, "job %s epoch %d rank %d: query block %d outside [0,%d)", j.Id, c.GetEpoch(), r, b, units)
			}
		}
	}
	switch mode := c.GetMode(); {
	case mode == pb.JobMode_JOB_MODE_FORWARD:
		if j.Spec.GetMode() == pb.JobMode_JOB_MODE_BACKWARD || inBackward(j) || len(c.GetDoneDq())+len(c.GetDoneDkv()) > 0 {
			return fail(ErrBadCommand, "job %s epoch %d: a forward epoch of a %v job in its %s phase", j.Id, c.GetEpoch(), j.Spec.GetMode(), phaseName(j))
		}
	case mode == pb.JobMode_JOB_MODE_BACKWARD:
		if j.Spec.GetMode() == pb.JobMode_JOB_MODE_FORWARD {
			return fail(ErrBadCommand, "job %s epoch %d: a backward epoch of a forward job", j.Id, c.GetEpoch())
		}
		if forwardOfFB(j) && (j.Epoch == 0 || int64(len(j.DoneBlocks)) != j.BlocksTotal) {
			return fail(ErrBadCommand, "job %s epoch %d: backward before the forward pass is done (%d of %d blocks)", j.Id, c.GetEpoch(), len(j.DoneBlocks), j.BlocksTotal)
		}
		// With head groups the done lists are units of every group (heads.go).
		if err := checkSet(c.GetDoneDq(), units); err != nil {
			return fail(ErrBadCommand, "job %s epoch %d: done_dq: %v", j.Id, c.GetEpoch(), err)
		}
		if err := checkSet(c.GetDoneDkv(), kBlocks(j.Spec)*int64(headGroups(c.GetPlan()))); err != nil {
			return fail(ErrBadCommand, "job %s epoch %d: done_dkv: %v", j.Id, c.GetEpoch(), err)
		}
		if !inBackward(j) {
			// The backward phase starts: its blocks are gradient units.
			j.BlocksTotal = qb + kBlocks(j.Spec)
			j.DoneBlocks = nil
		}
	default:
		return fail(ErrBadCommand, "job %s epoch %d: mode %v", j.Id, c.GetEpoch(), mode)
	}
	j.EpochMode = c.GetMode()
	j.EpochDoneDq = slices.Clone(c.GetDoneDq())
	j.EpochDoneDkv = slices.Clone(c.GetDoneDkv())
	j.State = pb.JobState_JOB_STATE_RUNNING
	j.Epoch = c.GetEpoch()
	j.Plan = proto.CloneOf(c.GetPlan())
	j.DoneRanks = nil
	if j.StartedUnixMs == 0 {
		j.StartedUnixMs = c.GetUnixMs()
	}
	return ok(j, false)
}

func (s *State) applyShardDone(c *cpb.ShardDone) *Result {
	j, ok2 := s.jobs[c.GetJobId()]
	if !ok2 {
		return fail(ErrNotFound, "job %s", c.GetJobId())
	}
	if Terminal(j.State) {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s is %v", ErrFinished, j.Id, j.State)}
	}
	if j.State != pb.JobState_JOB_STATE_RUNNING || c.GetEpoch() != j.Epoch {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s: report for epoch %d, current %d", ErrStaleEpoch, j.Id, c.GetEpoch(), j.Epoch)}
	}
	ranks := j.Plan.GetRanks()
	if c.GetRank() < 0 || int(c.GetRank()) >= len(ranks) {
		return fail(ErrBadCommand, "job %s epoch %d: rank %d outside [0,%d)", j.Id, j.Epoch, c.GetRank(), len(ranks))
	}
	if w := ranks[c.GetRank()].GetWorkerId(); c.GetWorkerId() != "" && c.GetWorkerId() != w {
		return fail(ErrBadCommand, "job %s epoch %d: rank %d belongs to worker %s, reported by %s", j.Id, j.Epoch, c.GetRank(), w, c.GetWorkerId())
	}
	if _, found := slices.BinarySearch(j.DoneRanks, c.GetRank()); found {
		return ok(j, true)
	}
	if inBackward(j) {
		return s.applyGradDone(j, c)
	}
	if len(c.GetDqBlocks())+len(c.GetDkvBlocks()) > 0 {
		return fail(ErrBadCommand, "job %s epoch %d: gradient checksums in a forward epoch", j.Id, j.Epoch)
	}
	j.DoneRanks = insertSorted(j.DoneRanks, c.GetRank())
	// A split-KV plan's output is complete only at the root of its
	// reduction tree; the other ranks hand partials up and own no rows.
	if shard.Strategy(j.Plan.GetStrategy()) != shard.SplitKV || c.GetRank() == 0 {
		for _, b := range writtenBlocks(j.Plan, c.GetRank()) { // heads.go: its q_blocks, or the blocks it writes
			j.DoneBlocks = insertSorted(j.DoneBlocks, b)
		}
		for _, bc := range c.GetBlocks() {
			i, found := slices.BinarySearchFunc(j.Checksums, bc.GetBlock(), func(x *pb.BlockChecksum, b int32) int { return cmp.Compare(x.GetBlock(), b) })
			if found {
				j.Checksums[i] = proto.CloneOf(bc)
			} else {
				j.Checksums = slices.Insert(j.Checksums, i, proto.CloneOf(bc))
			}
		}
	}
	return ok(j, false)
}

// applyGradDone records a backward rank's written gradient blocks: each
// becomes a done unit with its checksum (a later epoch's complete write of
// the same block replaces it: the store keeps the last write).
func (s *State) applyGradDone(j *cpb.Job, c *cpb.ShardDone) *Result {
	qb, kb := int32(qBlocks(j.Spec)), int32(kBlocks(j.Spec))
	if len(c.GetBlocks()) > 0 {
		return fail(ErrBadCommand, "job %s epoch %d: output checksums in a backward epoch", j.Id, j.Epoch)
	}
	for _, g := range c.GetDqBlocks() {
		if g.GetBlock() < 0 || g.GetBlock() >= qb {
			return fail(ErrBadCommand, "job %s epoch %d: dq block %d outside [0,%d)", j.Id, j.Epoch, g.GetBlock(), qb)
		}
	}
	for _, g := range c.GetDkvBlocks() {
		if g.GetBlock() < 0 || g.GetBlock() >= kb {
			return fail(ErrBadCommand, "job %s epoch %d: dk/dv block %d outside [0,%d)", j.Id, j.Epoch, g.GetBlock(), kb)
		}
	}
	j.DoneRanks = insertSorted(j.DoneRanks, c.GetRank())
	for _, g := range c.GetDqBlocks() {
		j.DoneBlocks = insertSorted(j.DoneBlocks, g.GetBlock())
		j.DqChecksums = upsertGrad(j.DqChecksums, proto.CloneOf(g))
	}
	for _, g := range c.GetDkvBlocks() {
		j.DoneBlocks = insertSorted(j.DoneBlocks, qb+g.GetBlock())
		j.DkvChecksums = upsertGrad(j.DkvChecksums, proto.CloneOf(g))
	}
	return ok(j, false)
}

func insertSorted(xs []int32, x int32) []int32 {
	i, found := slices.BinarySearch(xs, x)
	if found {
		return xs
	}
	return slices.Insert(xs, i, x)
}

func (s *State) applyRedo(c *cpb.RedoBlocks) *Result {
	j, ok2 := s.jobs[c.GetJobId()]
	if !ok2 {
		return fail(ErrNotFound, "job %s", c.GetJobId())
	}
	if Terminal(j.State) {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s is %v", ErrFinished, j.Id, j.State)}
	}
	if j.State != pb.JobState_JOB_STATE_RUNNING || c.GetEpoch() != j.Epoch {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s: redo for epoch %d, current %d", ErrStaleEpoch, j.Id, c.GetEpoch(), j.Epoch)}
	}
	if len(c.GetBlocks()) == 0 {
		return fail(ErrBadCommand, "job %s: redo of no blocks", j.Id)
	}
	for _, b := range c.GetBlocks() {
		if b < 0 || int64(b) >= j.BlocksTotal {
			return fail(ErrBadCommand, "job %s: redo block %d outside [0,%d)", j.Id, b, j.BlocksTotal)
		}
	}
	if !slices.ContainsFunc(c.GetBlocks(), func(b int32) bool { _, done := slices.BinarySearch(j.DoneBlocks, b); return done }) {
		return ok(j, true) // a repeat: none of them is done any more
	}
	for _, b := range c.GetBlocks() {
		if i, found := slices.BinarySearch(j.DoneBlocks, b); found {
			j.DoneBlocks = slices.Delete(j.DoneBlocks, i, i+1)
		}
		if inBackward(j) {
			if qb := int32(qBlocks(j.Spec)); b < qb {
				j.DqChecksums = deleteGrad(j.DqChecksums, b)
			} else {
				j.DkvChecksums = deleteGrad(j.DkvChecksums, b-qb)
			}
			continue
		}
		if i, found := slices.BinarySearchFunc(j.Checksums, b, func(x *pb.BlockChecksum, b int32) int { return cmp.Compare(x.GetBlock(), b) }); found {
			j.Checksums = slices.Delete(j.Checksums, i, i+1)
		}
	}
	j.Redos++
	return ok(j, false)
}

func (s *State) applySucceeded(c *cpb.JobSucceeded) *Result {
	j, ok2 := s.jobs[c.GetJobId()]
	if !ok2 {
		return fail(ErrNotFound, "job %s", c.GetJobId())
	}
	if j.State == pb.JobState_JOB_STATE_SUCCEEDED {
		return ok(j, true)
	}
	if Terminal(j.State) || j.State != pb.JobState_JOB_STATE_RUNNING {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s is %v", ErrFinished, j.Id, j.State)}
	}
	if int64(len(j.DoneBlocks)) != j.BlocksTotal {
		return fail(ErrNotDone, "job %s: %d of %d blocks done", j.Id, len(j.DoneBlocks), j.BlocksTotal)
	}
	j.State = pb.JobState_JOB_STATE_SUCCEEDED
	j.FinishedUnixMs = c.GetUnixMs()
	return ok(j, false)
}

func (s *State) applyFailed(c *cpb.JobFailed) *Result {
	j, ok2 := s.jobs[c.GetJobId()]
	if !ok2 {
		return fail(ErrNotFound, "job %s", c.GetJobId())
	}
	if j.State == pb.JobState_JOB_STATE_FAILED {
		return ok(j, true)
	}
	if Terminal(j.State) {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s is %v", ErrFinished, j.Id, j.State)}
	}
	j.State = pb.JobState_JOB_STATE_FAILED
	j.Reason = c.GetReason()
	j.FinishedUnixMs = c.GetUnixMs()
	return ok(j, false)
}

func (s *State) applyCanceled(c *cpb.JobCanceled) *Result {
	j, ok2 := s.jobs[c.GetJobId()]
	if !ok2 {
		return fail(ErrNotFound, "job %s", c.GetJobId())
	}
	if j.State == pb.JobState_JOB_STATE_CANCELED {
		return ok(j, true)
	}
	if Terminal(j.State) {
		return &Result{Job: proto.CloneOf(j), Err: fmt.Errorf("%w: job %s is %v", ErrFinished, j.Id, j.State)}
	}
	j.State = pb.JobState_JOB_STATE_CANCELED
	j.Reason = c.GetReason()
	j.FinishedUnixMs = c.GetUnixMs()
	return ok(j, false)
}

func (s *State) applyExpire(c *cpb.Expire) *Result {
	for _, id := range c.GetJobIds() {
		j, ok2 := s.jobs[id]
		if !ok2 || !Terminal(j.State) || j.State == pb.JobState_JOB_STATE_EXPIRED {
			continue
		}
		// The tombstone keeps the id, final state and the idempotency key
		// (a late retry must not run the job again); everything else goes.
		s.jobs[id] = &cpb.Job{
			Id:             j.Id,
			Spec:           &pb.JobSpec{IdempotencyKey: j.Spec.GetIdempotencyKey()},
			State:          pb.JobState_JOB_STATE_EXPIRED,
			Epoch:          j.Epoch,
			Reason:         fmt.Sprintf("%v: %s", j.State, j.Reason),
			BlocksTotal:    j.BlocksTotal,
			CreatedUnixMs:  j.CreatedUnixMs,
			StartedUnixMs:  j.StartedUnixMs,
			FinishedUnixMs: j.FinishedUnixMs,
			ExpiredUnixMs:  c.GetUnixMs(),
			Seq:            j.Seq,
			Owner:          j.Owner,
		}
	}
	for _, id := range c.GetPurgeIds() {
		j, ok2 := s.jobs[id]
		if !ok2 || j.State != pb.JobState_JOB_STATE_EXPIRED {
			continue
		}
		delete(s.jobs, id)
		if key := tenantKey(j.Owner, j.Spec.GetIdempotencyKey()); j.Spec.GetIdempotencyKey() != "" && s.byKey[key] == id {
			delete(s.byKey, key)
		}
	}
	return &Result{}
}

// Job returns a copy of one job record, or nil.
func (s *State) Job(id string) *cpb.Job {
	j, ok2 := s.jobs[id]
	if !ok2 {
		return nil
	}
	return proto.CloneOf(j)
}

// JobByKey returns a copy of the job owner's idempotency key names, or
// nil.
func (s *State) JobByKey(owner, key string) *cpb.Job {
	if id, ok2 := s.byKey[tenantKey(owner, key)]; ok2 {
		return s.Job(id)
	}
	return nil
}

// Jobs returns copies of the jobs for which keep returns true (all when
// keep is nil), in submission order.
func (s *State) Jobs(keep func(*cpb.Job) bool) []*cpb.Job {
	var out []*cpb.Job
	for _, j := range s.jobs {
		if keep == nil || keep(j) {
			out = append(out, proto.CloneOf(j))
		}
	}
	slices.SortFunc(out, func(a, b *cpb.Job) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

// Len is the number of job records (tombstones included).
func (s *State) Len() int { return len(s.jobs) }

// count returns the number of jobs in state st.
func (s *State) count(st pb.JobState) int {
	n := 0
	for _, j := range s.jobs {
		if j.State == st {
			n++
		}
	}
	return n
}

// Counts returns the number of jobs in each state.
func (s *State) Counts() map[pb.JobState]int {
	m := map[pb.JobState]int{}
	for _, j := range s.jobs {
		m[j.State]++
	}
	return m
}

// Clone returns a deep copy (what a snapshot persists while Apply goes on).
func (s *State) Clone() *State {
	c := NewState()
	for id, j := range s.jobs {
		c.jobs[id] = proto.CloneOf(j)
	}
	for k, v := range s.byKey {
		c.byKey[k] = v
	}
	return c
}

// Equal reports whether two states hold the same records.
func (s *State) Equal(o *State) bool {
	if len(s.jobs) != len(o.jobs) || len(s.byKey) != len(o.byKey) {
		return false
	}
	for id, j := range s.jobs {
		if !proto.Equal(j, o.jobs[id]) {
			return false
		}
	}
	for k, v := range s.byKey {
		if o.byKey[k] != v {
			return false
		}
	}
	return true
}
