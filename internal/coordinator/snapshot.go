package coordinator

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Snapshots: the state written as LogJob records (logschema.go) and read
// back trusting nothing (DESIGN.md, "Snapshots").

// WriteSnapshot writes the state: a SnapshotHeader, then one
// SnapshotRecord per job, each length-delimited, in submission order.
func (s *State) WriteSnapshot(w io.Writer, unixMs int64) error {
	bw := bufio.NewWriter(w)
	hdr := &cpb.SnapshotHeader{Version: SnapshotVersion, Jobs: uint64(len(s.jobs)), UnixMs: unixMs}
	if _, err := protodelim.MarshalTo(bw, hdr); err != nil {
		return fmt.Errorf("snapshot header: %w", err)
	}
	ids := make([]*cpb.Job, 0, len(s.jobs))
	for _, j := range s.jobs {
		ids = append(ids, j)
	}
	slices.SortFunc(ids, func(a, b *cpb.Job) int { return cmp.Compare(a.Seq, b.Seq) })
	for _, j := range ids {
		rec := &cpb.SnapshotRecord{Record: &cpb.SnapshotRecord_Job{Job: jobToLog(j)}}
		if _, err := protodelim.MarshalTo(bw, rec); err != nil {
			return fmt.Errorf("snapshot job %s: %w", j.Id, err)
		}
	}
	return bw.Flush()
}

// maxSnapshotRecord bounds one snapshot record (a job with its plan and
// checksums).
const maxSnapshotRecord = 64 << 20

// readDelimited reads one varint-length-prefixed message. Memory grows
// with the bytes actually read, never with the length a corrupt prefix
// claims. It returns io.EOF only at a clean end (no byte of a new record).
func readDelimited(br *bufio.Reader, m proto.Message) error {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return err
	}
	if n > maxSnapshotRecord {
		return fmt.Errorf("record of %d bytes: want at most %d", n, maxSnapshotRecord)
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, br, int64(n)); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return proto.Unmarshal(buf.Bytes(), m)
}

// checkJob checks the invariants Apply maintains for one job record, so
// that a restored state is one the leader can trust (it indexes plans by
// the ranks and blocks recorded here).
func checkJob(j *cpb.Job) error {
	if e := validName("id", j.GetId(), true); e != nil {
		return e
	}
	if j.State < pb.JobState_JOB_STATE_QUEUED || j.State > pb.JobState_JOB_STATE_EXPIRED {
		return fmt.Errorf("job %s: state %v", j.Id, j.State)
	}
	if j.BlocksTotal < 0 || j.BlocksTotal > math.MaxInt32 {
		return fmt.Errorf("job %s: %d blocks: want 0..%d", j.Id, j.BlocksTotal, math.MaxInt32)
	}
	if j.State == pb.JobState_JOB_STATE_RUNNING && len(j.Plan.GetRanks()) == 0 {
		return fmt.Errorf("job %s: running without a plan", j.Id)
	}
	for r, rk := range j.Plan.GetRanks() {
		for _, b := range rk.GetQBlocks() {
			if units := j.BlocksTotal * int64(headGroups(j.Plan)); b < 0 || int64(b) >= units {
				return fmt.Errorf("job %s: rank %d: query block %d outside [0,%d)", j.Id, r, b, units)
			}
		}
	}
	if err := checkSet(j.DoneBlocks, int64(j.BlocksTotal)); err != nil {
		return fmt.Errorf("job %s: done blocks: %v", j.Id, err)
	}
	if err := checkSet(j.DoneRanks, int64(len(j.Plan.GetRanks()))); err != nil {
		return fmt.Errorf("job %s: done ranks: %v", j.Id, err)
	}
	return nil
}

// checkSet checks a sorted set of int32 in [0, n).
func checkSet(xs []int32, n int64) error {
	for i, x := range xs {
		if x < 0 || int64(x) >= n {
			return fmt.Errorf("%d outside [0,%d)", x, n)
		}
		if i > 0 && xs[i-1] >= x {
			return fmt.Errorf("not strictly increasing at %d", x)
		}
	}
	return nil
}

// ReadState builds a new state from a snapshot written by WriteSnapshot.
// Any damage (a short or corrupt record, a record of unknown type, a
// duplicate job or idempotency key, a job breaking Apply's invariants, a
// count other than the header's) is an error; nothing is half-restored.
func ReadState(r io.Reader) (*State, error) {
	br := bufio.NewReader(r)
	var hdr cpb.SnapshotHeader
	if err := readDelimited(br, &hdr); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrSnapshot, err)
	}
	if hdr.Version == 0 || hdr.Version > SnapshotVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads 1..%d", ErrSnapshot, hdr.Version, SnapshotVersion)
	}
	s := NewState()
	for {
		var rec cpb.SnapshotRecord
		err := readDelimited(br, &rec)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: %v", ErrSnapshot, len(s.jobs), err)
		}
		switch x := rec.Record.(type) {
		case *cpb.SnapshotRecord_Job:
			j := jobFromLog(x.Job)
			if err := checkJob(j); err != nil {
				return nil, fmt.Errorf("%w: record %d: %v", ErrSnapshot, len(s.jobs), err)
			}
			if _, dup := s.jobs[j.Id]; dup {
				return nil, fmt.Errorf("%w: job %s twice", ErrSnapshot, j.Id)
			}
			s.jobs[j.Id] = j
			if key := j.GetSpec().GetIdempotencyKey(); key != "" {
				if other, dup := s.byKey[tenantKey(j.Owner, key)]; dup {
					return nil, fmt.Errorf("%w: idempotency key %q of tenant %q: jobs %s and %s", ErrSnapshot, key, j.Owner, other, j.Id)
				}
				s.byKey[tenantKey(j.Owner, key)] = j.Id
			}
		default:
			return nil, fmt.Errorf("%w: record %d of unknown type", ErrSnapshot, len(s.jobs))
		}
		if uint64(len(s.jobs)) > hdr.Jobs {
			return nil, fmt.Errorf("%w: more job records than the header's %d", ErrSnapshot, hdr.Jobs)
		}
	}
	if uint64(len(s.jobs)) != hdr.Jobs {
		return nil, fmt.Errorf("%w: %d job records, header says %d", ErrSnapshot, len(s.jobs), hdr.Jobs)
	}
	return s, nil
}
