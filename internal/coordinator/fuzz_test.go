package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Fuzz targets for every decoder the coordinator runs on bytes it did not
// produce: client API requests, worker heartbeats and reports (the
// network), and Raft log entries and snapshots (disk, peers). Seeds are
// committed under testdata/fuzz/<target>/; RINGATTN_WRITE_SEEDS=1 rewrites
// them from the f.Add calls below.

// addSeeds adds each seed (one value per fuzz argument) and, when
// RINGATTN_WRITE_SEEDS=1, writes it as a corpus file.
func addSeeds(f *testing.F, seeds ...[]any) {
	f.Helper()
	write := os.Getenv("RINGATTN_WRITE_SEEDS") == "1"
	dir := filepath.Join("testdata", "fuzz", f.Name())
	if write {
		noErr(f, os.MkdirAll(dir, 0o755))
	}
	for i, s := range seeds {
		f.Add(s...)
		if !write {
			continue
		}
		var b bytes.Buffer
		b.WriteString("go test fuzz v1\n")
		for _, v := range s {
			switch x := v.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", x)
			case uint8:
				fmt.Fprintf(&b, "byte(%q)\n", x)
			default:
				f.Fatalf("seed type %T", v)
			}
		}
		noErr(f, os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), b.Bytes(), 0o644))
	}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	noErr(t, err)
	return b
}

func mustCommand(t testing.TB, typ cpb.CommandType, m proto.Message) []byte {
	t.Helper()
	b, err := encodeCommand(typ, m)
	noErr(t, err)
	return b
}

// fuzzPlan is the plan of the running job the fuzz targets know.
func fuzzPlan() *pb.Plan {
	return &pb.Plan{Strategy: "contiguous", N: 256, Nk: 256, Block: 64, QBlockCount: 4, KBlockCount: 4, Steps: 2,
		Ranks: []*pb.RankPlan{{WorkerId: "w1", QBlocks: []int32{0, 1}, KvBlocks: []int32{0, 1}, Cost: 1e6},
			{WorkerId: "w2", QBlocks: []int32{2, 3}, KvBlocks: []int32{2, 3}, Cost: 1e6}}}
}

// fuzzState holds a queued job j-q and a job j-fuzz running epoch 1 of
// fuzzPlan with rank 0 done.
func fuzzState(t testing.TB) *State {
	st := NewState()
	for i, c := range []struct {
		typ cpb.CommandType
		m   proto.Message
	}{
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-q", Spec: attnSpec("q", 256), UnixMs: 1}},
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-fuzz", Spec: attnSpec("fuzz", 256), UnixMs: 1}},
		{cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fuzz", Epoch: 1, Plan: fuzzPlan(), UnixMs: 2}},
		{cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fuzz", Epoch: 1, Rank: 0, WorkerId: "w1", UnixMs: 3}},
	} {
		cmd, err := decodeEntry(uint64(i+1), mustCommand(t, c.typ, c.m))
		noErr(t, err)
		r, err := st.Apply(uint64(i+1), cmd)
		noErr(t, err)
		noErr(t, r.Err)
	}
	return st
}

func FuzzRaftCommand(f *testing.F) {
	add := func(typ cpb.CommandType, m proto.Message) []any { return []any{mustCommand(f, typ, m)} }
	addSeeds(f,
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-new", Spec: attnSpec("new", 512), UnixMs: 5}),
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-other", Spec: attnSpec("fuzz", 512)}),
		add(cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-q", Epoch: 1, Plan: fuzzPlan()}),
		add(cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fuzz", Epoch: 2, Plan: &pb.Plan{Ranks: []*pb.RankPlan{{QBlocks: []int32{9}}}}}),
		add(cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fuzz", Epoch: 1, Rank: 1, WorkerId: "w2",
			Blocks: []*pb.BlockChecksum{{Block: 2, Crc32CO: 1}, {Block: 3, Crc32CO: 2}}}),
		add(cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fuzz", Epoch: 1, Rank: -1}),
		add(cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "j-fuzz"}),
		add(cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "j-fuzz", Reason: "x"}),
		add(cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "j-q"}),
		add(cpb.CommandType_COMMAND_TYPE_EXPIRE, &cpb.Expire{JobIds: []string{"j-q", "j-fuzz"}, PurgeIds: []string{"j-q"}}),
		add(cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j-fuzz", Epoch: 1, Blocks: []int32{1, 0}, Reason: "missing"}),
		add(cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j-fuzz", Epoch: 1, Blocks: []int32{4}}),
		[]any{mustMarshal(f, &cpb.Command{Type: 99, Payload: []byte{1}})},
		[]any{mustMarshal(f, &cpb.Command{Type: cpb.CommandType_COMMAND_TYPE_SUBMIT, Payload: []byte{0xff}})},
		[]any{[]byte{0xff, 0xff, 0xff}},
		[]any{[]byte{}},
		// The queue limit decided in Apply: full, and not.
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-full", Spec: attnSpec("full", 512), UnixMs: 5, MaxQueued: 1}),
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-room", Spec: attnSpec("room", 512), UnixMs: 5, MaxQueued: 1 << 40}),
		// Backward jobs: a submit, a backward epoch with Done lists, and
		// gradient reports.
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-bwd", Spec: bwdSpec("bwd"), UnixMs: 5}),
		add(cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fuzz", Epoch: 2, Plan: fuzzPlan(),
			Mode: pb.JobMode_JOB_MODE_BACKWARD, DoneDq: []int32{1}, DoneDkv: []int32{0, 1}}),
		add(cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fuzz", Epoch: 1, Rank: 1, WorkerId: "w2",
			DqBlocks: []*pb.GradChecksum{{Block: 2, Crc32C: 1}}, DkvBlocks: []*pb.GradChecksum{{Block: 3, Crc32C: 2, Crc32CDv: 3}}}),
		// Tenants: another tenant's submit with a key the default tenant
		// uses; the default tenant at its active-jobs quota (j-q queued,
		// j-fuzz running), and with room.
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-alice", Spec: attnSpec("q", 256), UnixMs: 5, Owner: "alice"}),
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-quota", Spec: attnSpec("quota", 256), UnixMs: 5,
			Owner: "default", MaxActivePerTenant: 2}),
		add(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-quota", Spec: attnSpec("quota", 256), UnixMs: 5,
			Owner: "bob", MaxActivePerTenant: 1}),
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		st := fuzzState(t)
		cmd, err := decodeEntry(10, data)
		if err != nil {
			if !errors.Is(err, ErrCorruptEntry) {
				t.Fatalf("decode error %v does not wrap ErrCorruptEntry", err)
			}
			return
		}
		r, err := st.Apply(10, cmd)
		if err != nil {
			if !errors.Is(err, ErrCorruptEntry) || r != nil {
				t.Fatalf("apply: %v, %v", r, err)
			}
			return
		}
		if r == nil {
			t.Fatal("nil result without error")
		}
		var buf bytes.Buffer
		noErr(t, st.WriteSnapshot(&buf, 0))
		if back, err := ReadState(&buf); err == nil && !back.Equal(st) {
			t.Fatal("snapshot round trip changed the state")
		}
	})
}

func snapshotOf(t testing.TB, st *State) []byte {
	var buf bytes.Buffer
	noErr(t, st.WriteSnapshot(&buf, 7))
	return buf.Bytes()
}

func FuzzSnapshotRestore(f *testing.F) {
	good := snapshotOf(f, fuzzState(f))
	empty := snapshotOf(f, NewState())
	addSeeds(f,
		[]any{good}, []any{empty}, []any{good[:len(good)/2]}, []any{good[:3]},
		[]any{append(append([]byte{}, empty...), 0xff, 0xff, 0xff, 0xff, 0x1f)}, // a record claiming 64+ MiB
		[]any{append(append([]byte{}, good...), good[len(empty):]...)},          // every job twice
		[]any{[]byte{}},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		fs := newFSM(func(err error) { t.Fatalf("fatal: %v", err) })
		err := fs.Restore(io.NopCloser(bytes.NewReader(data)))
		if err != nil {
			if !errors.Is(err, ErrSnapshot) {
				t.Fatalf("restore error %v does not wrap ErrSnapshot", err)
			}
			if fs.st.Len() != 0 {
				t.Fatal("a failed restore changed the state")
			}
			return
		}
		for _, j := range fs.st.jobs {
			noErr(t, checkJob(j))
		}
		back, err := ReadState(bytes.NewReader(snapshotOf(t, fs.st)))
		noErr(t, err)
		if !back.Equal(fs.st) {
			t.Fatal("restored state does not survive another snapshot")
		}
	})
}

// A corrupt length prefix does not make restore allocate what it claims.
func TestFSMRestoreDoesNotTrustLengths(t *testing.T) {
	data := append(snapshotOf(t, NewState()), 0xff, 0xff, 0xff, 0x1f) // a 64 MiB record, no bytes
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadState(bytes.NewReader(data))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrSnapshot) {
		t.Fatalf("err = %v", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Fatalf("reading a 10-byte snapshot allocated %d bytes", d)
	}
	over := append(snapshotOf(t, NewState()), 0x81, 0x80, 0x80, 0x20) // 64 MiB + 1
	if _, err := ReadState(bytes.NewReader(over)); err == nil || !bytes.Contains([]byte(err.Error()), []byte("want at most")) {
		t.Fatalf("oversized record: %v", err)
	}
}

// fuzzLeader is a one-node cluster's serving leader whose state holds the
// jobs of fuzzState (committed through Raft, so the seeds can name them).
func fuzzLeader(f *testing.F) *leader {
	tc := newCluster(f, 1, func(c *Config) { c.HeartbeatTimeout = time.Hour })
	tc.leader()
	c := tc.nodes[0]
	for _, x := range []struct {
		typ cpb.CommandType
		m   proto.Message
	}{
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-fuzz", Spec: attnSpec("fuzz", 256), UnixMs: 1}},
		{cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fuzz", Epoch: 1, Plan: fuzzPlan(), UnixMs: 2}},
	} {
		r, err := c.apply(x.typ, x.m)
		noErr(f, err)
		noErr(f, r.Err)
	}
	l := c.currentLeader()
	if l == nil || !l.isReady() {
		f.Fatal("no serving leader")
	}
	return l
}

func FuzzHeartbeat(f *testing.F) {
	hb := func(h *pb.Heartbeat) []any { return []any{mustMarshal(f, h)} }
	addSeeds(f,
		hb(&pb.Heartbeat{WorkerId: "w1", Slots: 2, Gflops: 12.5, Version: "v1",
			Running: []*pb.ShardRef{{JobId: "j-fuzz", Epoch: 1, Rank: 0, StepsDone: 3, StepsTotal: 8}}}),
		hb(&pb.Heartbeat{WorkerId: "w2", Gflops: math.Inf(1), Slots: -1,
			Running: []*pb.ShardRef{{JobId: "j-fuzz", Epoch: 1, Rank: 0}, {JobId: "gone", Epoch: 4, Rank: 2}}}),
		hb(&pb.Heartbeat{WorkerId: "w3", Gflops: math.NaN(), Leaving: true}),
		hb(&pb.Heartbeat{WorkerId: "bad.id", Gflops: 1}),
		hb(&pb.Heartbeat{}),
		[]any{[]byte{0x0a, 0xff}},
	)
	l := fuzzLeader(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		a := heartbeatBytes(l, data)
		if a != nil {
			mustMarshal(t, a)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.workers) > maxWorkers {
			t.Fatalf("%d workers registered", len(l.workers))
		}
		for id, w := range l.workers {
			g := w.hb.Gflops
			if validName("worker_id", id, true) != nil || math.IsNaN(g) || g < 0 || g > maxGflops ||
				w.hb.Slots < 0 || w.hb.Slots > maxSlots || len(w.hb.Running) > maxRunning || len(w.hb.Version) > maxVersionBytes {
				t.Fatalf("registry holds an unsanitized heartbeat: %v", w.hb)
			}
		}
		for k := range l.progress {
			if k.job != "j-fuzz" || k.epoch != 1 || k.rank < 0 || k.rank > 1 {
				t.Fatalf("progress tracked for a shard no plan has: %v", k)
			}
		}
	})
}

func FuzzReport(f *testing.F) {
	rep := func(r *pb.Report) []any { return []any{mustMarshal(f, r)} }
	done := func(blocks ...int32) *pb.Report_Done {
		d := &pb.ShardDone{}
		for _, b := range blocks {
			d.Blocks = append(d.Blocks, &pb.BlockChecksum{Block: b, Crc32CO: uint32(b)})
		}
		return &pb.Report_Done{Done: d}
	}
	addSeeds(f,
		rep(&pb.Report{WorkerId: "w1", JobId: "j-fuzz", Epoch: 1, Rank: 0, Result: done(0, 1)}),
		rep(&pb.Report{WorkerId: "w2", JobId: "j-fuzz", Epoch: 1, Rank: 1, Result: done(2, 3)}),
		rep(&pb.Report{WorkerId: "w2", JobId: "j-fuzz", Epoch: 1, Rank: 1, Result: done(2, 2, 7)}),
		rep(&pb.Report{WorkerId: "w2", JobId: "j-fuzz", Epoch: 1, Rank: 1,
			Result: &pb.Report_Failed{Failed: &pb.ShardFailed{Reason: "oom", Block: -1}}}),
		rep(&pb.Report{WorkerId: "mallory", JobId: "j-fuzz", Epoch: 1, Rank: 0, Result: done(0)}),
		rep(&pb.Report{JobId: "j-fuzz", Epoch: 1, Rank: 0, Result: done(0)}),
		rep(&pb.Report{WorkerId: "w1", JobId: "j-fuzz", Epoch: 9, Rank: -4}),
		rep(&pb.Report{WorkerId: "w1", JobId: "nope", Epoch: 1, Result: done()}),
		[]any{[]byte{0x12, 0x80}},
		rep(&pb.Report{WorkerId: "w2", JobId: "j-fuzz", Epoch: 1, Rank: 1, Result: &pb.Report_Done{Done: &pb.ShardDone{
			DqBlocks: []*pb.GradChecksum{{Block: 2, Crc32C: 1}, {Block: 2}}, DkvBlocks: []*pb.GradChecksum{{Block: -1}}}}}),
	)
	l := fuzzLeader(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		a := reportBytes(l, data)
		if a == nil || a.Status == pb.ReportStatus_REPORT_STATUS_UNSPECIFIED {
			t.Fatalf("ack %v", a)
		}
		mustMarshal(t, a)
	})
}

func FuzzAPIRequest(f *testing.F) {
	req := func(ep uint8, m proto.Message) []any { return []any{ep, mustMarshal(f, m)} }
	eps := []string{EndpointSubmit, EndpointGet, EndpointCancel, EndpointList, EndpointCluster}
	big := attnSpec("fz-big", 1<<20)
	big.Mask.Seqlens = []int64{1 << 19, 1 << 19}
	addSeeds(f,
		req(0, &pb.SubmitRequest{Spec: attnSpec("fz-1", 256)}),
		req(0, &pb.SubmitRequest{Spec: big}),
		req(0, &pb.SubmitRequest{Spec: &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_MHA, B: 1, Hq: 2, Hkv: 2, N: 64, Nk: 64, D: 8, DModel: 16, InputRef: "fz-mha"}}),
		req(0, &pb.SubmitRequest{Spec: func() *pb.JobSpec { s := attnSpec("fz-2", 256); s.InputRef = "in-fuzz"; return s }()}),
		req(0, &pb.SubmitRequest{}),
		req(1, &pb.GetRequest{JobId: "j-fuzz"}),
		req(1, &pb.GetRequest{JobId: "a.b"}),
		req(2, &pb.CancelRequest{JobId: "j-fuzz", Reason: "fuzz"}),
		req(3, &pb.ListRequest{Limit: 3, States: []pb.JobState{pb.JobState_JOB_STATE_RUNNING, 99}}),
		req(3, &pb.ListRequest{Limit: -1}),
		req(4, &pb.ClusterRequest{}),
		[]any{uint8(1), []byte{0xff, 0x01}},
	)
	l := fuzzLeader(f)
	h := l.apiHandlers()
	f.Fuzz(func(t *testing.T, ep uint8, data []byte) {
		name := eps[int(ep)%len(eps)]
		if len(data) > l.c.cfg.Limits.MaxRequestBytes {
			return // refused before decoding (transport's serve)
		}
		var (
			reply proto.Message
			err   error
		)
		switch name {
		case EndpointSubmit:
			reply, err = apiBytes(t, h.Submit, data)
		case EndpointGet:
			reply, err = apiBytes(t, h.Get, data)
		case EndpointCancel:
			reply, err = apiBytes(t, h.Cancel, data)
		case EndpointList:
			reply, err = apiBytes(t, h.List, data)
		default:
			reply, err = apiBytes(t, h.Cluster, data)
		}
		if err != nil {
			ae := transport.APIErrorOf(err)
			if ae.Code == pb.ErrorCode_ERROR_CODE_INTERNAL || ae.Code == pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
				t.Fatalf("%s: %v", name, err)
			}
			reply = ae.Proto()
		}
		if reply == nil || !reply.ProtoReflect().IsValid() {
			t.Fatalf("%s: no reply and no error", name)
		}
		mustMarshal(t, reply)
	})
}

// apiBytes decodes data as transport's ServeAPI does (a request that does
// not decode is refused before the handler) and runs handler h on it.
func apiBytes[Req interface {
	*R
	proto.Message
}, R any, Rep proto.Message](t *testing.T, h func(context.Context, Req) (Rep, error), data []byte) (proto.Message, error) {
	req := Req(new(R))
	if proto.Unmarshal(data, req) != nil {
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT}, nil
	}
	rep, err := h(context.Background(), req)
	if err != nil {
		return nil, err
	}
	return rep, nil
}

func FuzzAssignmentAck(f *testing.F) {
	addSeeds(f,
		[]any{mustMarshal(f, &pb.AssignmentAck{Accepted: true})},
		[]any{mustMarshal(f, &pb.AssignmentAck{Reason: "no free slot"})},
		[]any{mustMarshal(f, &pb.AssignmentAck{Reason: strings.Repeat("é", 2000)})},
		[]any{[]byte{0x12, 0xff}},
	)
	f.Fuzz(func(t *testing.T, data []byte) {
		var ack pb.AssignmentAck
		if len(data) > transport.MaxControlBytes || proto.Unmarshal(data, &ack) != nil {
			return // transport refuses it before the leader sees it
		}
		err := assignmentError(&ack)
		if err != nil && len(err.Error()) > maxReasonBytes+64 {
			t.Fatalf("error of %d bytes", len(err.Error()))
		}
	})
}

// bwdSpec is a forward+backward attention job's spec.
func bwdSpec(key string) *pb.JobSpec {
	s := attnSpec(key, 512)
	s.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	return s
}

// heartbeatBytes hands data to the leader's heartbeat handler as
// transport's ServeHeartbeats does: larger than MaxHeartbeatBytes or not a
// heartbeat, it is dropped before the handler.
func heartbeatBytes(l *leader, data []byte) *pb.HeartbeatAck {
	var hb pb.Heartbeat
	if len(data) > transport.MaxHeartbeatBytes || proto.Unmarshal(data, &hb) != nil {
		return nil
	}
	return l.onHeartbeat(&hb)
}

// reportBytes hands data to the leader's report handler as transport's
// ServeReports does: a report larger than MaxControlBytes or malformed is
// REJECTED before the handler.
func reportBytes(l *leader, data []byte) *pb.ReportAck {
	var rep pb.Report
	if len(data) > transport.MaxControlBytes || proto.Unmarshal(data, &rep) != nil {
		return &pb.ReportAck{Status: pb.ReportStatus_REPORT_STATUS_REJECTED}
	}
	return l.handleReport(&rep)
}
