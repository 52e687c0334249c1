package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func testSpec(key string) *pb.JobSpec {
	return &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 4, Hkv: 2, N: 300, Nk: 300, D: 16, Block: 100, IdempotencyKey: key}
}

func testPlan(ranks ...[]int32) *pb.Plan {
	p := &pb.Plan{Strategy: "contiguous", N: 300, Nk: 300, Block: 100, QBlockCount: 3, KBlockCount: 3, Steps: int32(len(ranks))}
	for i, q := range ranks {
		p.Ranks = append(p.Ranks, &pb.RankPlan{QBlocks: q, KvBlocks: q, WorkerId: "w" + string(rune('0'+i))})
	}
	return p
}

// applyT applies a command through the FSM adapter, as raft would.
func applyT(t *testing.T, f *fsm, index uint64, typ cpb.CommandType, m proto.Message) *Result {
	t.Helper()
	data, err := encodeCommand(typ, m)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := f.Apply(&raft.Log{Index: index, Type: raft.LogCommand, Data: data}).(*Result)
	if r == nil {
		t.Fatalf("apply %v returned no result", typ)
	}
	return r
}

func wantErr(t *testing.T, r *Result, target error) {
	t.Helper()
	if !errors.Is(r.Err, target) {
		t.Fatalf("err = %v, want %v", r.Err, target)
	}
}

func wantOK(t *testing.T, r *Result) {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("unexpected error: %v", r.Err)
	}
}

func TestFSMSubmitIdempotent(t *testing.T) {
	f := newFSM(nil)
	r := applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec("k1"), UnixMs: 10})
	wantOK(t, r)
	if r.Existing || r.Job.State != pb.JobState_JOB_STATE_QUEUED || r.Job.BlocksTotal != 3 || r.Job.Seq != 1 || r.Job.CreatedUnixMs != 10 {
		t.Fatalf("submitted job = %v existing=%v", r.Job, r.Existing)
	}
	// Same key, new id: the first job comes back.
	r = applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "b", Spec: testSpec("k1"), UnixMs: 11})
	wantOK(t, r)
	if !r.Existing || r.Job.Id != "a" {
		t.Fatalf("retry = %v existing=%v, want job a", r.Job.GetId(), r.Existing)
	}
	// Same key, different spec: refused, naming the job.
	other := testSpec("k1")
	other.N = 400
	r = applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "c", Spec: other})
	wantErr(t, r, ErrIdempotencyConflict)
	// Same id: refused.
	wantErr(t, applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec("")}), ErrExists)
	// No key: always new.
	wantOK(t, applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "d", Spec: testSpec("")}))
	wantOK(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "e", Spec: testSpec("")}))
	f.view(func(s *State) {
		if s.Len() != 3 || s.JobByKey(transport.DefaultTenant, "k1").GetId() != "a" {
			t.Fatalf("state has %d jobs, key k1 -> %v", s.Len(), s.JobByKey(transport.DefaultTenant, "k1").GetId())
		}
		ids := []string{}
		for _, j := range s.Jobs(nil) {
			ids = append(ids, j.Id)
		}
		if strings.Join(ids, ",") != "a,d,e" {
			t.Fatalf("submission order = %v", ids)
		}
	})
	wantErr(t, applyT(t, f, 7, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "x"}), ErrBadCommand)
}

func TestFSMEpochsAndShardDone(t *testing.T) {
	f := newFSM(nil)
	wantOK(t, applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec("")}))
	// Epoch must be current+1.
	wantErr(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 2, Plan: testPlan([]int32{0, 1, 2})}), ErrStaleEpoch)
	wantErr(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 1, Plan: &pb.Plan{}}), ErrBadCommand)
	wantErr(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 1, Plan: testPlan([]int32{0, 3})}), ErrBadCommand)
	wantErr(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "zz", Epoch: 1, Plan: testPlan([]int32{0})}), ErrNotFound)
	r := applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 1, Plan: testPlan([]int32{0}, []int32{1, 2}), UnixMs: 50})
	wantOK(t, r)
	if r.Job.State != pb.JobState_JOB_STATE_RUNNING || r.Job.Epoch != 1 || r.Job.StartedUnixMs != 50 {
		t.Fatalf("after start: %v", r.Job)
	}
	// Rank 0 done; twice is a duplicate; a wrong epoch is stale; a wrong rank refused.
	r = applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 0, Blocks: []*pb.BlockChecksum{{Block: 0, Crc32CO: 7}}})
	wantOK(t, r)
	if r.Existing || len(r.Job.DoneBlocks) != 1 || len(r.Job.Checksums) != 1 {
		t.Fatalf("after shard done: %v", r.Job)
	}
	if r = applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 0}); r.Err != nil || !r.Existing {
		t.Fatalf("duplicate shard done: existing=%v err=%v", r.Existing, r.Err)
	}
	wantErr(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 2, Rank: 1}), ErrStaleEpoch)
	wantErr(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 2}), ErrBadCommand)
	wantErr(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 1, WorkerId: "w0"}), ErrBadCommand)
	// Cannot succeed with blocks 1,2 unfinished.
	wantErr(t, applyT(t, f, 7, cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "a"}), ErrNotDone)
	// Rank 1's worker died: epoch 2 re-plans only blocks 1 and 2.
	r = applyT(t, f, 8, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 2, Plan: testPlan([]int32{1}, []int32{2}), UnixMs: 60})
	wantOK(t, r)
	if r.Job.Epoch != 2 || len(r.Job.DoneRanks) != 0 || len(r.Job.DoneBlocks) != 1 || r.Job.StartedUnixMs != 50 {
		t.Fatalf("after re-plan: %v", r.Job)
	}
	// A late report from epoch 1 is stale.
	wantErr(t, applyT(t, f, 9, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 1}), ErrStaleEpoch)
	wantOK(t, applyT(t, f, 10, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 2, Rank: 0}))
	wantOK(t, applyT(t, f, 11, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 2, Rank: 1}))
	r = applyT(t, f, 12, cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "a", UnixMs: 70})
	wantOK(t, r)
	if r.Job.State != pb.JobState_JOB_STATE_SUCCEEDED || r.Job.FinishedUnixMs != 70 || len(r.Job.DoneBlocks) != 3 {
		t.Fatalf("after success: %v", r.Job)
	}
	if r = applyT(t, f, 13, cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "a"}); !r.Existing || r.Err != nil {
		t.Fatalf("second success: %v %v", r.Existing, r.Err)
	}
	// Finished jobs take no more shard reports, epochs, cancels or failures.
	wantErr(t, applyT(t, f, 14, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 2, Rank: 0}), ErrFinished)
	wantErr(t, applyT(t, f, 15, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 3, Plan: testPlan([]int32{0})}), ErrFinished)
	wantErr(t, applyT(t, f, 16, cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "a"}), ErrFinished)
	wantErr(t, applyT(t, f, 17, cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "a"}), ErrFinished)
}

func TestFSMSplitKVDoneAtRoot(t *testing.T) {
	f := newFSM(nil)
	wantOK(t, applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec("")}))
	p := testPlan([]int32{0, 1, 2}, []int32{0, 1, 2})
	p.Strategy = "splitkv"
	wantOK(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 1, Plan: p}))
	r := applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 1})
	wantOK(t, r)
	if len(r.Job.DoneBlocks) != 0 {
		t.Fatalf("a non-root split-KV rank finished blocks %v", r.Job.DoneBlocks)
	}
	r = applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 0})
	wantOK(t, r)
	if len(r.Job.DoneBlocks) != 3 {
		t.Fatalf("root done: blocks %v", r.Job.DoneBlocks)
	}
}

func TestFSMFailCancelExpire(t *testing.T) {
	f := newFSM(nil)
	for i, id := range []string{"a", "b", "c"} {
		wantOK(t, applyT(t, f, uint64(i+1), cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: id, Spec: testSpec("key-" + id)}))
	}
	r := applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "a", Reason: "deadline exceeded", UnixMs: 5})
	wantOK(t, r)
	if r.Job.State != pb.JobState_JOB_STATE_FAILED || r.Job.Reason != "deadline exceeded" {
		t.Fatalf("failed job = %v", r.Job)
	}
	wantOK(t, applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "b", Epoch: 1, Plan: testPlan([]int32{0, 1, 2})}))
	r = applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "b", Reason: "user", UnixMs: 6})
	wantOK(t, r)
	if r.Job.State != pb.JobState_JOB_STATE_CANCELED {
		t.Fatalf("canceled job = %v", r.Job)
	}
	if r = applyT(t, f, 7, cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "b"}); !r.Existing || r.Err != nil {
		t.Fatalf("second cancel: %v %v", r.Existing, r.Err)
	}
	wantErr(t, applyT(t, f, 8, cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "nope"}), ErrNotFound)
	// Expire: c is still queued and is left alone; a and b become tombstones.
	wantOK(t, applyT(t, f, 9, cpb.CommandType_COMMAND_TYPE_EXPIRE, &cpb.Expire{JobIds: []string{"a", "b", "c", "nope"}, UnixMs: 100}))
	f.view(func(s *State) {
		if a := s.Job("a"); a.State != pb.JobState_JOB_STATE_EXPIRED || a.Plan != nil || a.ExpiredUnixMs != 100 || a.Spec.GetIdempotencyKey() != "key-a" || a.Spec.GetN() != 0 {
			t.Fatalf("tombstone = %v", a)
		}
		if s.Job("c").State != pb.JobState_JOB_STATE_QUEUED {
			t.Fatalf("queued job expired")
		}
	})
	// A late retry of an expired job's key returns the tombstone, never reruns it.
	r = applyT(t, f, 10, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a2", Spec: testSpec("key-a")})
	if r.Err != nil || !r.Existing || r.Job.Id != "a" {
		t.Fatalf("retry after expiry = %v %v %v", r.Job.GetId(), r.Existing, r.Err)
	}
	// Purge removes tombstones (and only tombstones).
	wantOK(t, applyT(t, f, 11, cpb.CommandType_COMMAND_TYPE_EXPIRE, &cpb.Expire{PurgeIds: []string{"a", "c"}}))
	f.view(func(s *State) {
		if s.Job("a") != nil || s.JobByKey(transport.DefaultTenant, "key-a") != nil || s.Job("c") == nil || s.Len() != 2 {
			t.Fatalf("after purge: a=%v c=%v len=%d", s.Job("a"), s.Job("c"), s.Len())
		}
	})
}

func TestFSMSnapshotRoundTrip(t *testing.T) {
	f := newFSM(nil)
	wantOK(t, applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec("k")}))
	wantOK(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "b", Spec: testSpec("")}))
	wantOK(t, applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "a", Epoch: 1, Plan: testPlan([]int32{0}, []int32{1, 2})}))
	wantOK(t, applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "a", Epoch: 1, Rank: 1, Blocks: []*pb.BlockChecksum{{Block: 1, Crc32CO: 3}}}))
	wantOK(t, applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "b", Reason: "x"}))

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Apply continues after the snapshot is taken; the snapshot must not see it.
	wantOK(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "c", Spec: testSpec("")}))
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil || !sink.closed {
		t.Fatalf("persist: %v closed=%v", err, sink.closed)
	}
	g := newFSM(nil)
	wantOK(t, applyT(t, g, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "junk", Spec: testSpec("")}))
	if err := g.Restore(readCloser{bytes.NewReader(sink.Bytes())}); err != nil {
		t.Fatal(err)
	}
	var want *State
	f.view(func(s *State) { want = s.Clone() })
	delete(want.jobs, "c")
	g.view(func(s *State) {
		if !s.Equal(want) || s.Job("junk") != nil || s.JobByKey(transport.DefaultTenant, "k").GetId() != "a" {
			t.Fatalf("restored state differs: %d jobs", s.Len())
		}
	})
	// The restored replica goes on exactly like the original.
	r := applyT(t, g, 6, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "c", Spec: testSpec("")})
	wantOK(t, r)
	f.view(func(fs *State) {
		g.view(func(gs *State) {
			if !fs.Equal(gs) {
				t.Fatal("replicas differ after the same command")
			}
		})
	})

	// Bad snapshots fail without touching the live state.
	for name, data := range map[string][]byte{
		"empty":     nil,
		"truncated": sink.Bytes()[:len(sink.Bytes())-3],
		"future":    futureSnapshot(t),
	} {
		if err := g.Restore(readCloser{bytes.NewReader(data)}); !errors.Is(err, ErrSnapshot) {
			t.Fatalf("%s snapshot: err = %v", name, err)
		}
		g.view(func(s *State) {
			if s.Len() != 3 {
				t.Fatalf("%s snapshot changed live state", name)
			}
		})
	}
	// A failing sink is canceled.
	bad := &memSink{fail: true}
	if err := snap.Persist(bad); err == nil || !bad.canceled {
		t.Fatalf("persist to failing sink: err=%v canceled=%v", err, bad.canceled)
	}
}

func futureSnapshot(t *testing.T) []byte {
	var buf bytes.Buffer
	s := NewState()
	if err := s.WriteSnapshot(&buf, 0); err != nil {
		t.Fatal(err)
	}
	hdr, _ := proto.Marshal(&cpb.SnapshotHeader{Version: SnapshotVersion + 1})
	return append([]byte{byte(len(hdr))}, hdr...)
}

func TestFSMCorruptEntryStopsNode(t *testing.T) {
	for name, data := range map[string][]byte{
		"garbage":      {0xff, 0xff, 0xff, 0x01},
		"unknown type": mustMarshal(t, &cpb.Command{Type: 999}),
		"zero type":    mustMarshal(t, &cpb.Command{}),
		"bad payload":  mustMarshal(t, &cpb.Command{Type: cpb.CommandType_COMMAND_TYPE_SUBMIT, Payload: []byte{0x0a, 0x7f}}),
	} {
		t.Run(name, func(t *testing.T) {
			var stopped error
			f := newFSM(func(err error) { stopped = err; panic(err) })
			applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "a", Spec: testSpec("")})
			func() {
				defer func() { _ = recover() }()
				f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
			}()
			if !errors.Is(stopped, ErrCorruptEntry) || !strings.Contains(stopped.Error(), "index 2") {
				t.Fatalf("node not stopped: %v", stopped)
			}
			f.view(func(s *State) {
				if s.Len() != 1 {
					t.Fatalf("corrupt entry changed state")
				}
			})
		})
	}
	// Default: panic.
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("default fatal did not panic")
		}
	}()
	newFSM(nil).Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{0xff}})
}

type memSink struct {
	bytes.Buffer
	fail, closed, canceled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.fail {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.canceled = true; return nil }

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

// TestFSMReplayDeterministic applies one random command sequence (valid
// and invalid commands mixed) to a replica straight through, and to another
// that snapshots and restores half-way: both end identical.
func TestFSMReplayDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []string{"a", "b", "c", "d", "e"}
	var cmds []*raft.Log
	for i := range 400 {
		id := ids[rng.IntN(len(ids))]
		var (
			typ cpb.CommandType
			m   proto.Message
		)
		switch rng.IntN(7) {
		case 0:
			typ, m = cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: id + fmt.Sprint(rng.IntN(3)), Spec: testSpec(fmt.Sprint("k", rng.IntN(8))), UnixMs: int64(i)}
		case 1:
			typ, m = cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: id + "0", Epoch: uint64(rng.IntN(4)), Plan: testPlan([]int32{0}, []int32{1, 2}), UnixMs: int64(i)}
		case 2:
			typ, m = cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: id + "0", Epoch: uint64(rng.IntN(4)), Rank: int32(rng.IntN(3)), UnixMs: int64(i)}
		case 3:
			typ, m = cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: id + "0", UnixMs: int64(i)}
		case 4:
			typ, m = cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: id + "1", Reason: "r", UnixMs: int64(i)}
		case 5:
			typ, m = cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: id + "2", UnixMs: int64(i)}
		case 6:
			typ, m = cpb.CommandType_COMMAND_TYPE_EXPIRE, &cpb.Expire{JobIds: []string{id + "1"}, PurgeIds: []string{id + "2"}, UnixMs: int64(i)}
		}
		data, err := encodeCommand(typ, m)
		noErr(t, err)
		cmds = append(cmds, &raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data})
	}
	a, b := newFSM(nil), newFSM(nil)
	for _, l := range cmds {
		a.Apply(l)
	}
	for _, l := range cmds[:200] {
		b.Apply(l)
	}
	snap, err := b.Snapshot()
	noErr(t, err)
	sink := &memSink{}
	noErr(t, snap.Persist(sink))
	c := newFSM(nil)
	noErr(t, c.Restore(readCloser{bytes.NewReader(sink.Bytes())}))
	for _, l := range cmds[200:] {
		c.Apply(l)
	}
	var sa, sc *State
	a.view(func(s *State) { sa = s.Clone() })
	c.view(func(s *State) { sc = s.Clone() })
	if !sa.Equal(sc) || sa.Len() == 0 {
		t.Fatalf("replicas differ (%d vs %d jobs)", sa.Len(), sc.Len())
	}
	counts := sa.Counts()
	t.Logf("final states: %v", counts)
}

func TestFSMRedoBlocks(t *testing.T) {
	f := newFSM(nil)
	wantOK(t, applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j", Spec: testSpec("k")}))
	wantOK(t, applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j", Epoch: 1, Plan: testPlan([]int32{0, 1}, []int32{2})}))
	wantOK(t, applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j", Epoch: 1, Rank: 0, WorkerId: "w0",
		Blocks: []*pb.BlockChecksum{{Block: 0, Crc32CO: 10}, {Block: 1, Crc32CO: 11}}}))
	wantOK(t, applyT(t, f, 4, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j", Epoch: 1, Rank: 1, WorkerId: "w1",
		Blocks: []*pb.BlockChecksum{{Block: 2, Crc32CO: 12}}}))
	wantErr(t, applyT(t, f, 5, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 2, Blocks: []int32{1}}), ErrStaleEpoch)
	wantErr(t, applyT(t, f, 6, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 1, Blocks: []int32{3}}), ErrBadCommand)
	wantErr(t, applyT(t, f, 7, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 1}), ErrBadCommand)
	r := applyT(t, f, 8, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 1, Blocks: []int32{1}})
	wantOK(t, r)
	j := r.Job
	if fmt.Sprint(j.DoneBlocks) != "[0 2]" || len(j.Checksums) != 2 || j.Checksums[1].Block != 2 || j.Redos != 1 || r.Existing {
		t.Fatalf("after redo: %v", j)
	}
	// A repeat changes nothing; succeeding is refused until block 1 is done.
	r = applyT(t, f, 9, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 1, Blocks: []int32{1}})
	if !r.Existing || r.Job.Redos != 1 {
		t.Fatalf("repeated redo: %v", r)
	}
	wantErr(t, applyT(t, f, 10, cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "j"}), ErrNotDone)
	wantOK(t, applyT(t, f, 11, cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j", Epoch: 2, Plan: testPlan([]int32{1})}))
	wantOK(t, applyT(t, f, 12, cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j", Epoch: 2, Rank: 0, WorkerId: "w0",
		Blocks: []*pb.BlockChecksum{{Block: 1, Crc32CO: 21}}}))
	r = applyT(t, f, 13, cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "j"})
	wantOK(t, r)
	if r.Job.State != pb.JobState_JOB_STATE_SUCCEEDED || r.Job.Checksums[1].Crc32CO != 21 {
		t.Fatalf("after re-plan: %v", r.Job)
	}
	wantErr(t, applyT(t, f, 14, cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j", Epoch: 2, Blocks: []int32{1}}), ErrFinished)
}

// A retried submit names a fresh upload namespace: the same job, not a
// conflict; any other difference is still a conflict.
func TestFSMSubmitIgnoresInputRef(t *testing.T) {
	f := newFSM(nil)
	a := testSpec("k")
	a.InputRef = "up-1"
	wantOK(t, applyT(t, f, 1, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j", Spec: a}))
	b := testSpec("k")
	b.InputRef = "up-2"
	r := applyT(t, f, 2, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j2", Spec: b})
	if r.Err != nil || !r.Existing || r.Job.Id != "j" || r.Job.Spec.InputRef != "up-1" {
		t.Fatalf("retry with another namespace: %v", r)
	}
	b.N = 400
	wantErr(t, applyT(t, f, 3, cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j3", Spec: b}), ErrIdempotencyConflict)
	if user := f.st.inputUser(transport.DefaultTenant, "up-1"); user == nil || user.Id != "j" {
		t.Fatalf("inputUser(up-1) = %v", user)
	}
	if f.st.inputUser(transport.DefaultTenant, "up-2") != nil || f.st.inputUser(transport.DefaultTenant, "") != nil {
		t.Fatal("inputUser found a job for a namespace nobody reads")
	}
}
