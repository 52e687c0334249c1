package coordinator

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// A Raft log and snapshot outlive the build that wrote them: a node
// upgraded in place replays its old log. testdata/raftlog holds a log and
// a snapshot written by the coordinator before its log schema was split
// from the wire schema (commit 'coordinator: raft log fixture'); these
// tests check that this build replays them to the state the same commands
// give it today.

const (
	fixtureDir = "testdata/raftlog"
	// RINGATTN_WRITE_LOG_FIXTURE=v1 rewrites the v1 fixture (only ever
	// with the build that wrote it first: the point is old bytes).
	writeFixtureEnv = "RINGATTN_WRITE_LOG_FIXTURE"
)

type logCommand struct {
	typ cpb.CommandType
	m   proto.Message
}

// fixtureCommands are the commands of the fixture: every command type and
// every field a command carries set to something other than its zero
// value, over five jobs that end SUCCEEDED, FAILED, CANCELED, EXPIRED and
// RUNNING (a forward+backward job in its backward pass, after a redo).
func fixtureCommands() []logCommand {
	full := &pb.JobSpec{
		Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 2, Hq: 4, Hkv: 2, N: 300, Nk: 300, D: 16,
		Mask:  &pb.Mask{Causal: true, Windowed: true, WindowLeft: 64, WindowRight: -1, Seqlens: []int64{100, 200}, SeqlensK: []int64{150, 150}},
		Scale: 0.25, WireDtype: pb.WireDType_WIRE_DTYPE_BF16, Block: 100, Strategy: "zigzag", Parallelism: 2,
		Priority: 3, DeadlineUnixMs: 9_000_000, IdempotencyKey: "k-full", AllowNonfinite: true, WantLse: true,
		InputRef: "in-full",
	}
	mha := &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_MHA, B: 1, Hq: 2, Hkv: 2, N: 300, Nk: 300, D: 8, DModel: 16,
		MhaBias: true, Block: 100, IdempotencyKey: "k-mha", WireDtype: pb.WireDType_WIRE_DTYPE_F32}
	fb := testSpec("k-fb")
	fb.Mode = pb.JobMode_JOB_MODE_FORWARD_BACKWARD
	plan := func(ranks ...[]int32) *pb.Plan {
		p := testPlan(ranks...)
		p.Imbalance = 1.25
		for i, rk := range p.Ranks {
			rk.Cost, rk.Bytes = 1e6*float64(i+1), int64(4096*(i+1))
		}
		return p
	}
	sums := func(blocks ...int32) []*pb.BlockChecksum {
		var out []*pb.BlockChecksum
		for _, b := range blocks {
			out = append(out, &pb.BlockChecksum{Block: b, Crc32CO: 1000 + uint32(b), Crc32CLse: 2000 + uint32(b)})
		}
		return out
	}
	return []logCommand{
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-full", Spec: full, UnixMs: 100, MaxQueued: 10}},
		{cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-full", Epoch: 1, Plan: plan([]int32{0}, []int32{1, 2}), UnixMs: 110}},
		{cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-full", Epoch: 1, Rank: 0, WorkerId: "w0", Blocks: sums(0), UnixMs: 120}},
		{cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-full", Epoch: 1, Rank: 1, WorkerId: "w1", Blocks: sums(1, 2), UnixMs: 121}},
		{cpb.CommandType_COMMAND_TYPE_JOB_SUCCEEDED, &cpb.JobSucceeded{JobId: "j-full", UnixMs: 130}},
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-mha", Spec: mha, UnixMs: 140}},
		{cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "j-mha", Reason: "cannot plan", UnixMs: 150}},
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-cancel", Spec: testSpec("k-cancel"), UnixMs: 160}},
		{cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: "j-cancel", Reason: "changed my mind", UnixMs: 170}},
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-fb", Spec: fb, UnixMs: 180}},
		{cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fb", Epoch: 1, Plan: plan([]int32{0, 1}, []int32{2}), UnixMs: 190,
			Mode: pb.JobMode_JOB_MODE_FORWARD}},
		{cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fb", Epoch: 1, Rank: 0, WorkerId: "w0", Blocks: sums(0, 1), UnixMs: 200}},
		{cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fb", Epoch: 1, Rank: 1, WorkerId: "w1", Blocks: sums(2), UnixMs: 201}},
		{cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fb", Epoch: 2, Plan: plan([]int32{0, 1}, []int32{2}), UnixMs: 210,
			Mode: pb.JobMode_JOB_MODE_BACKWARD}},
		{cpb.CommandType_COMMAND_TYPE_SHARD_DONE, &cpb.ShardDone{JobId: "j-fb", Epoch: 2, Rank: 0, WorkerId: "w0", UnixMs: 220,
			DqBlocks: gradSums(0, 1), DkvBlocks: gradSums(0, 1)}},
		{cpb.CommandType_COMMAND_TYPE_START_EPOCH, &cpb.StartEpoch{JobId: "j-fb", Epoch: 3, Plan: plan([]int32{2}), UnixMs: 230,
			Mode: pb.JobMode_JOB_MODE_BACKWARD, DoneDq: []int32{0, 1}, DoneDkv: []int32{0, 1}}},
		{cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: "j-fb", Epoch: 3, Blocks: []int32{4}, Reason: "dk missing", UnixMs: 240}},
		{cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j-old", Spec: testSpec("k-old"), UnixMs: 250}},
		{cpb.CommandType_COMMAND_TYPE_JOB_FAILED, &cpb.JobFailed{JobId: "j-old", Reason: "deadline", UnixMs: 260}},
		{cpb.CommandType_COMMAND_TYPE_EXPIRE, &cpb.Expire{JobIds: []string{"j-old", "j-cancel"}, UnixMs: 270}},
		{cpb.CommandType_COMMAND_TYPE_EXPIRE, &cpb.Expire{PurgeIds: []string{"j-cancel"}, UnixMs: 280}},
	}
}

// buildFixture applies the fixture's commands through the FSM (as raft
// would) and returns the entries' bytes and the state they give.
func buildFixture(t *testing.T) ([][]byte, *fsm) {
	t.Helper()
	f := newFSM(nil)
	var entries [][]byte
	for i, c := range fixtureCommands() {
		data, err := encodeCommand(c.typ, c.m)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(*Result)
		if r == nil || r.Err != nil {
			t.Fatalf("fixture command %d (%v): %v", i+1, c.typ, r)
		}
		entries = append(entries, data)
	}
	return entries, f
}

// writeEntries writes entries varint-length-delimited.
func writeEntries(w io.Writer, entries [][]byte) error {
	for _, e := range entries {
		if _, err := w.Write(binary.AppendUvarint(nil, uint64(len(e)))); err != nil {
			return err
		}
		if _, err := w.Write(e); err != nil {
			return err
		}
	}
	return nil
}

func readEntries(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(bytes.NewReader(data))
	var out [][]byte
	for {
		n, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil || n > 1<<20 {
			t.Fatalf("%s: entry %d: length %d: %v", path, len(out), n, err)
		}
		e := make([]byte, n)
		if _, err := io.ReadFull(br, e); err != nil {
			t.Fatalf("%s: entry %d: %v", path, len(out), err)
		}
		out = append(out, e)
	}
}

// TestFSMReplaysV1LogFixture: the v1 log replays, entry by entry, to the
// state today's encoding of the same commands gives; the v1 snapshot
// restores to it too; and that state snapshots and restores to itself.
func TestFSMReplaysV1LogFixture(t *testing.T) {
	logPath, snapPath := filepath.Join(fixtureDir, "v1.log"), filepath.Join(fixtureDir, "v1.snapshot")
	if os.Getenv(writeFixtureEnv) == "v1" {
		entries, f := buildFixture(t)
		var lb, sb bytes.Buffer
		if err := writeEntries(&lb, entries); err != nil {
			t.Fatal(err)
		}
		if err := f.st.WriteSnapshot(&sb, 300); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(fixtureDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(logPath, lb.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(snapPath, sb.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d entries, %d bytes) and %s (%d bytes)", logPath, len(entries), lb.Len(), snapPath, sb.Len())
	}
	_, today := buildFixture(t)

	old := newFSM(nil)
	for i, data := range readEntries(t, logPath) {
		r, _ := old.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data}).(*Result)
		if r == nil || r.Err != nil {
			t.Fatalf("v1 entry %d: %v", i+1, r)
		}
	}
	if !old.st.Equal(today.st) {
		t.Fatalf("the v1 log replays to another state than today's commands:\nv1:    %v\ntoday: %v", old.st.Jobs(nil), today.st.Jobs(nil))
	}
	snap, err := os.ReadFile(snapPath)
	if err != nil {
		t.Fatal(err)
	}
	restored, err := ReadState(bytes.NewReader(snap))
	if err != nil {
		t.Fatalf("v1 snapshot: %v", err)
	}
	if !restored.Equal(today.st) {
		t.Fatalf("the v1 snapshot restores to another state:\nv1:    %v\ntoday: %v", restored.Jobs(nil), today.st.Jobs(nil))
	}
	var buf bytes.Buffer
	if err := today.st.WriteSnapshot(&buf, 300); err != nil {
		t.Fatal(err)
	}
	again, err := ReadState(&buf)
	if err != nil || !again.Equal(today.st) {
		t.Fatalf("today's snapshot round trip: %v", err)
	}
	// Spot checks that the fields the fixture sets arrived.
	j := today.st.Job("j-full")
	if j.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || j.GetSpec().GetMask().GetSeqlensK()[1] != 150 ||
		j.GetPlan().GetRanks()[1].GetBytes() != 8192 || j.GetChecksums()[2].GetCrc32CLse() != 2002 || j.GetSpec().GetPriority() != 3 {
		t.Fatalf("j-full: %v", j)
	}
	if j := today.st.Job("j-fb"); j.GetEpochMode() != pb.JobMode_JOB_MODE_BACKWARD || len(j.GetDkvChecksums()) != 1 || j.GetRedos() != 1 {
		t.Fatalf("j-fb: %v", j)
	}
	for _, j := range old.st.Jobs(nil) {
		if j.GetOwner() != transport.DefaultTenant {
			t.Fatalf("v1 job %s: owner %q, want %q", j.Id, j.GetOwner(), transport.DefaultTenant)
		}
	}
	if restored.Job("j-full").GetOwner() != transport.DefaultTenant {
		t.Fatalf("v1 snapshot job owner %q", restored.Job("j-full").GetOwner())
	}
	if today.st.Job("j-cancel") != nil || today.st.Job("j-old").GetState() != pb.JobState_JOB_STATE_EXPIRED {
		t.Fatalf("expiry: %v", today.st.Jobs(nil))
	}
}

// fill sets every field of m (recursively) to a non-zero value: numbers
// from seed, strings, bools true, enums their value 1, two items in every
// list.
func fill(m protoreflect.Message, seed int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		seed++
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			for k := range 2 {
				if fd.Kind() == protoreflect.MessageKind {
					e := l.NewElement()
					fill(e.Message(), seed*10+k)
					l.Append(e)
				} else {
					l.Append(scalar(fd, seed*10+k))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			fill(m.Mutable(fd).Message(), seed*10)
		default:
			m.Set(fd, scalar(fd, seed))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, seed int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(seed))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(seed) << 33)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(seed))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(seed) << 34)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(seed) + 0.5)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(seed) + 0.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("s%d", seed))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(seed)})
	}
	panic("unhandled kind " + fd.Kind().String())
}

// TestFSMLogSchemaCarriesEveryField: every field of the in-memory
// records and commands (wire types included) survives the trip through
// the log's own messages, and the log form has no field the conversion
// leaves unset. A field added to the wire (or to state.proto) fails here
// until the log schema and logschema.go carry it.
func TestFSMLogSchemaCarriesEveryField(t *testing.T) {
	// in is filled; there is its log form, back in turned there and back.
	check := func(name string, in proto.Message, there proto.Message, back proto.Message) {
		t.Helper()
		if !proto.Equal(in, back) {
			t.Errorf("%s: lost on the way through the log:\nin:   %v\nback: %v", name, in, back)
		}
		// Every log field is set, so none was forgotten on the way there.
		unset := []string{}
		fields := there.ProtoReflect().Descriptor().Fields()
		for i := range fields.Len() {
			if fd := fields.Get(i); !there.ProtoReflect().Has(fd) {
				unset = append(unset, string(fd.Name()))
			}
		}
		if len(unset) > 0 {
			t.Errorf("%s: log fields left unset: %v", name, unset)
		}
	}
	job := &cpb.Job{}
	fill(job.ProtoReflect(), 0)
	check("job", job, jobToLog(job), jobFromLog(jobToLog(job)))
	sub := &cpb.Submit{}
	fill(sub.ProtoReflect(), 0)
	check("submit", sub, submitToLog(sub), submitFromLog(submitToLog(sub)))
	se := &cpb.StartEpoch{}
	fill(se.ProtoReflect(), 0)
	check("start epoch", se, startEpochToLog(se), startEpochFromLog(startEpochToLog(se)))
	sd := &cpb.ShardDone{}
	fill(sd.ProtoReflect(), 0)
	check("shard done", sd, shardDoneToLog(sd), shardDoneFromLog(shardDoneToLog(sd)))

	// The log's messages read v1 bytes (the wire messages) field for
	// field: same numbers, same types.
	spec := &pb.JobSpec{}
	fill(spec.ProtoReflect(), 3)
	data, err := proto.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	var ls cpb.LogJobSpec
	if err := proto.Unmarshal(data, &ls); err != nil || len(ls.ProtoReflect().GetUnknown()) > 0 || !proto.Equal(specFromLog(&ls), spec) {
		t.Fatalf("v1 spec bytes as a LogJobSpec: %v, unknown %d bytes", err, len(ls.ProtoReflect().GetUnknown()))
	}
	// Entries and records written before v3 name no owner: the default
	// tenant's, with no active-jobs limit.
	if sub := submitFromLog(&cpb.LogSubmit{JobId: "x"}); sub.GetOwner() != transport.DefaultTenant || sub.GetMaxActivePerTenant() != 0 {
		t.Fatalf("a v2 submit reads as %v, want owner %q", sub, transport.DefaultTenant)
	}
	if j := jobFromLog(&cpb.LogJob{Id: "x"}); j.GetOwner() != transport.DefaultTenant {
		t.Fatalf("a v2 job record reads as %v, want owner %q", j, transport.DefaultTenant)
	}
}

// An entry of a newer log format stops the node (ErrCorruptEntry) rather
// than be applied by rules that may not be its own; version 0 (entries
// before the field) and this build's are applied.
func TestFSMLogVersion(t *testing.T) {
	payload, err := proto.Marshal(submitToLog(&cpb.Submit{JobId: "j", Spec: testSpec("")}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		version uint32
		ok      bool
	}{{0, true}, {1, true}, {LogVersion, true}, {LogVersion + 1, false}} {
		s := NewState()
		_, err := s.Apply(1, &cpb.Command{Type: cpb.CommandType_COMMAND_TYPE_SUBMIT, Payload: payload, Version: c.version})
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrCorruptEntry)) {
			t.Errorf("version %d: %v", c.version, err)
		}
	}
	data, err := encodeCommand(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: "j", Spec: testSpec("")})
	if err != nil {
		t.Fatal(err)
	}
	var cmd cpb.Command
	if err := proto.Unmarshal(data, &cmd); err != nil || cmd.Version != LogVersion {
		t.Fatalf("written version %d: %v", cmd.Version, err)
	}
}
