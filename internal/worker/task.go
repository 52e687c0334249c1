package worker

import (
	"fmt"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// task is a validated assignment in the algorithm's plain Go types.
type task struct {
	job       string
	epoch     uint64
	rank      int
	plan      *shard.Plan
	params    kernels.Params
	kind      pb.JobKind
	dModel    int
	bias      bool
	wantLSE   bool
	allowNaN  bool
	bf16      bool
	bucket    string
	inputRef  string
	outputRef string
	// Backward ranks (mode BACKWARD): o and lse are read from oLSERef;
	// doneDQ and doneDKV are the blocks an earlier epoch wrote.
	mode            pb.JobMode
	oLSERef         string
	doneDQ, doneDKV []int
	// workers are the plan's worker per rank when every rank names one:
	// the ring then drops frames whose sender is not its rank's worker.
	workers []string
}

// validName reports whether s follows ringattn's one name rule
// (transport.ValidateName): job ids, store namespaces and buckets.
func validName(s string) bool { return transport.ValidateName("name", s) == nil }

func badAssignment(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidAssignment, fmt.Sprintf(format, args...))
}

// newTask validates a against the default job limits (newTaskLimits).
func newTask(a *pb.Assignment, workerID string) (*task, error) {
	return newTaskLimits(a, workerID, shard.DefaultLimits())
}

// newTaskLimits validates a and converts it. The assignment's own fields
// (ids, rank, references, mode, the backward Done lists) are checked here;
// its params and plan are decoded by transport.JobFromPB, the codec the
// coordinator planned with, checked against lim as the coordinator checked
// the spec on submit, so an assignment the coordinator could not have sent
// (with the same limits) is refused and one it could have sent is
// accepted. Every error wraps ErrInvalidAssignment and names the field at
// fault and what was expected; nothing is allocated by a count the
// assignment claims before that count is checked.
func newTaskLimits(a *pb.Assignment, workerID string, lim shard.Limits) (*task, error) {
	t := &task{job: a.GetJobId(), epoch: a.GetEpoch(), rank: int(a.GetRank())}
	switch {
	case !validName(t.job):
		return nil, badAssignment("job_id = %.64q, expected [A-Za-z0-9_-]+", t.job)
	case t.epoch == 0:
		return nil, badAssignment("epoch = 0, expected >= 1")
	case a.GetSize() < 1:
		return nil, badAssignment("size = %d, expected >= 1", a.GetSize())
	case a.GetRank() < 0 || a.GetRank() >= a.GetSize():
		return nil, badAssignment("rank = %d, expected 0..%d", a.GetRank(), a.GetSize()-1)
	case a.GetPlan() == nil:
		return nil, badAssignment("plan is missing")
	case a.GetParams() == nil:
		return nil, badAssignment("params is missing")
	case len(a.GetPlan().GetRanks()) != int(a.GetSize()):
		return nil, badAssignment("plan.ranks has %d entries, expected size = %d", len(a.GetPlan().GetRanks()), a.GetSize())
	}
	if w := a.GetPlan().GetRanks()[t.rank].GetWorkerId(); w != "" && w != workerID {
		return nil, badAssignment("plan.ranks[%d].worker_id = %.64q, expected this worker %q", t.rank, w, workerID)
	}
	t.workers = make([]string, len(a.GetPlan().GetRanks()))
	for i, r := range a.GetPlan().GetRanks() {
		if t.workers[i] = r.GetWorkerId(); !validName(t.workers[i]) {
			t.workers = nil // a plan without worker ids (tests, old leaders)
			break
		}
	}
	t.bucket, t.inputRef, t.outputRef = a.GetBucket(), a.GetInputRef(), a.GetOutputRef()
	if t.outputRef == "" {
		t.outputRef = t.job
	}
	if t.inputRef == "" {
		return nil, badAssignment("input_ref is empty, expected the store namespace of the inputs")
	}
	for _, f := range []struct{ name, v string }{{"input_ref", t.inputRef}, {"output_ref", t.outputRef}} {
		if !validName(f.v) {
			return nil, badAssignment("%s = %.64q, expected [A-Za-z0-9_-]+", f.name, f.v)
		}
	}
	if t.bucket != "" && !validName(t.bucket) {
		return nil, badAssignment("bucket = %.64q, expected [A-Za-z0-9_-]+", t.bucket)
	}

	kp := a.GetParams()
	t.mode = kp.GetMode()
	// A job's mode may be forward+backward; an assignment is one pass of
	// it (JobFromPB accepts the job's modes, so the pass is checked here).
	switch t.mode {
	case pb.JobMode_JOB_MODE_FORWARD:
		if len(a.GetDoneDq()) != 0 || len(a.GetDoneDkv()) != 0 || a.GetOLseRef() != "" {
			return nil, badAssignment("done_dq, done_dkv and o_lse_ref are set on a forward assignment, expected them empty")
		}
	case pb.JobMode_JOB_MODE_BACKWARD:
		t.oLSERef = a.GetOLseRef()
		if t.oLSERef == "" {
			t.oLSERef = t.inputRef
		}
		if !validName(t.oLSERef) {
			return nil, badAssignment("o_lse_ref = %.64q, expected [A-Za-z0-9_-]+", t.oLSERef)
		}
	default:
		return nil, badAssignment("params.mode = %v, expected JOB_MODE_FORWARD or JOB_MODE_BACKWARD (a forward+backward job is assigned pass by pass)", kp.GetMode())
	}
	job, err := transport.JobFromPB(kp, a.GetPlan(), lim)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidAssignment, err)
	}
	t.plan, t.params, t.kind, t.bf16 = job.Plan, job.Params, job.Kind, job.BF16
	t.dModel, t.bias, t.wantLSE = job.Tensors.DModel, job.Tensors.Bias, job.Tensors.LSE
	t.allowNaN = kp.GetAllowNonfinite()
	if t.mode == pb.JobMode_JOB_MODE_BACKWARD {
		plan := t.plan
		if t.doneDQ, err = doneList("done_dq", a.GetDoneDq(), plan.QUnits()); err != nil {
			return nil, err
		}
		if t.doneDKV, err = doneList("done_dkv", a.GetDoneDkv(), plan.KVUnits()); err != nil {
			return nil, err
		}
		// The fencing rule (ringattn DESIGN §7): dK/dV need every query block.
		// Units with head groups (shard.Plan.HeadGroups).
		if len(plan.Planned) != plan.QUnits() && len(t.doneDKV) != plan.KVUnits() {
			return nil, badAssignment("plan covers %d of %d query blocks but done_dkv lists %d of %d key blocks, expected a plan over all query blocks or every key block in done_dkv",
				len(plan.Planned), plan.QUnits(), len(t.doneDKV), plan.KVUnits())
		}
	}
	return t, nil
}

// doneList checks a Done list of a backward assignment: at most count
// distinct blocks, each in 0..count-1 (checked before anything is
// allocated by its length).
func doneList(field string, v []int32, count int) ([]int, error) {
	if len(v) > count {
		return nil, badAssignment("%s has %d blocks, expected at most %d", field, len(v), count)
	}
	seen := make([]bool, count)
	out := make([]int, len(v))
	for i, b := range v {
		if b < 0 || int(b) >= count {
			return nil, badAssignment("%s[%d] = %d, expected a block in 0..%d", field, i, b, count-1)
		}
		if seen[b] {
			return nil, badAssignment("%s[%d] = %d is listed twice, expected distinct blocks", field, i, b)
		}
		seen[b] = true
		out[i] = int(b)
	}
	return out, nil
}
