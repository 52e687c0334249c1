package client

import (
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// TestClientMeterRate: the rate is the window's, not the average since the
// start: a slow start (upload, queue) does not drag it down.
func TestClientMeterRate(t *testing.T) {
	var m Meter
	m.Observe(at(0), 0, 1000, UnitSteps, 1)
	if _, ok := m.Rate(at(0)); ok {
		t.Fatal("a rate from one observation")
	}
	// 20 s at 1 step/s, then 100 steps/s.
	m.Observe(at(20000), 20, 1000, UnitSteps, 1)
	for i := 1; i <= 12; i++ {
		m.Observe(at(20000+1000*i), int64(20+100*i), 1000, UnitSteps, 1)
	}
	r, ok := m.Rate(at(32000))
	if !ok || math.Abs(r-100) > 1e-9 {
		t.Fatalf("rate %v ok %v, want 100 over the window", r, ok)
	}
	eta, ok := m.ETA(at(32000), 1000-180)
	if !ok || eta != 1800*time.Millisecond {
		t.Fatalf("ETA %v ok %v, want 1.8s", eta, ok)
	}
}

// TestClientMeterNoRateTooEarly: two observations closer than MinSpan, or
// without progress, give no rate and no ETA (the old bar showed "ETA ?"
// for a whole job, or a rate from a single block).
func TestClientMeterNoRateTooEarly(t *testing.T) {
	var m Meter
	m.Observe(at(0), 0, 100, UnitSteps, 1)
	m.Observe(at(500), 10, 100, UnitSteps, 1)
	if _, ok := m.Rate(at(500)); ok {
		t.Error("a rate from 500 ms of observations (MinSpan 900 ms)")
	}
	if _, ok := m.ETA(at(500), 10); ok {
		t.Error("an ETA without a rate")
	}
	m.Observe(at(900), 20, 100, UnitSteps, 1)
	if r, ok := m.Rate(at(900)); !ok || math.Abs(r-20/0.9) > 1e-9 {
		t.Errorf("rate at MinSpan %v ok %v, want %v", r, ok, 20/0.9)
	}
	var still Meter
	still.Observe(at(0), 5, 100, UnitSteps, 1)
	still.Observe(at(3000), 5, 100, UnitSteps, 1)
	if _, ok := still.Rate(at(3000)); ok {
		t.Error("a rate without progress")
	}
}

// TestClientMeterResets: a re-plan (new epoch), a new total or unit, or
// progress going backwards starts the window afresh.
func TestClientMeterResets(t *testing.T) {
	for _, c := range []struct {
		name        string
		done, total int64
		unit        string
		epoch       uint64
	}{
		{"epoch", 60, 100, UnitSteps, 2},
		{"total", 60, 200, UnitSteps, 1},
		{"unit", 60, 100, UnitBlocks, 1},
		{"backwards", 10, 100, UnitSteps, 1},
	} {
		var m Meter
		m.Observe(at(0), 0, 100, UnitSteps, 1)
		m.Observe(at(2000), 50, 100, UnitSteps, 1)
		if _, ok := m.Rate(at(2000)); !ok {
			t.Fatalf("%s: no rate before the change", c.name)
		}
		m.Observe(at(2500), c.done, c.total, c.unit, c.epoch)
		if r, ok := m.Rate(at(2500)); ok {
			t.Errorf("%s: rate %v right after the change, want none", c.name, r)
		}
	}
}

// TestClientMeterStall: silence well past the reporting interval lowers
// the rate; past the window there is no rate at all.
func TestClientMeterStall(t *testing.T) {
	var m Meter
	for i := 0; i <= 4; i++ {
		m.Observe(at(1000*i), int64(10*i), 100, UnitSteps, 1)
	}
	r0, _ := m.Rate(at(4000))
	r1, ok := m.Rate(at(8000))
	if !ok || !(r1 < r0) {
		t.Fatalf("rate after 4 s of silence %v (ok %v), want below %v", r1, ok, r0)
	}
	if _, ok := m.Rate(at(4000 + 11000)); ok {
		t.Fatal("a rate 11 s after the last progress (window 10 s)")
	}
	// Repeated observations of the same count do not stretch the window.
	var n Meter
	n.Observe(at(0), 0, 100, UnitSteps, 1)
	n.Observe(at(1000), 10, 100, UnitSteps, 1)
	n.Observe(at(1500), 10, 100, UnitSteps, 1)
	if r, _ := n.Rate(at(1500)); math.Abs(r-10) > 1e-9 {
		t.Fatalf("rate %v after a repeated count, want 10", r)
	}
}

// TestClientMeterWindowLimit: observations older than the window are
// dropped, but two always remain.
func TestClientMeterWindowLimit(t *testing.T) {
	m := Meter{Window: 2 * time.Second}
	for i := 0; i <= 10; i++ {
		m.Observe(at(1000*i), int64(i*i), 1000, UnitSteps, 1)
	}
	if len(m.samples) != 3 {
		t.Fatalf("%d samples in a 2 s window of 1 s observations, want 3", len(m.samples))
	}
	r, ok := m.Rate(at(10000))
	if want := float64(100-64) / 2; !ok || math.Abs(r-want) > 1e-9 {
		t.Fatalf("rate %v, want %v", r, want)
	}
	m2 := Meter{Window: time.Second}
	m2.Observe(at(0), 0, 10, UnitSteps, 1)
	m2.Observe(at(5000), 5, 10, UnitSteps, 1)
	if len(m2.samples) != 2 {
		t.Fatalf("%d samples, want the last two kept", len(m2.samples))
	}
}

// decodeProgressEvent is what WatchProgress does with the bytes on a job's
// event subject: transport decodes them (a message that does not decode is
// dropped), progressEvent checks the event.
func decodeProgressEvent(data []byte, id string) (*pb.JobEvent, bool) {
	var ev pb.JobEvent
	if err := proto.Unmarshal(data, &ev); err != nil {
		return nil, false
	}
	return progressEvent(&ev, id)
}

// TestClientParseProgressEvent: only well-formed PROGRESS events of the job
// count; other jobs' events and impossible counters are ignored.
func TestClientParseProgressEvent(t *testing.T) {
	enc := func(ev *pb.JobEvent) []byte {
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	prog := pb.JobEventType_JOB_EVENT_TYPE_PROGRESS
	for _, c := range []struct {
		name   string
		data   []byte
		ev, ok bool
	}{
		{"progress", enc(&pb.JobEvent{Type: prog, JobId: "j", BlocksDone: 3, BlocksTotal: 10}), true, true},
		{"done = total", enc(&pb.JobEvent{Type: prog, JobId: "j", BlocksDone: 10, BlocksTotal: 10}), true, true},
		{"done past total", enc(&pb.JobEvent{Type: prog, JobId: "j", BlocksDone: 11, BlocksTotal: 10}), true, false},
		{"negative", enc(&pb.JobEvent{Type: prog, JobId: "j", BlocksDone: -1, BlocksTotal: 10}), true, false},
		{"no total", enc(&pb.JobEvent{Type: prog, JobId: "j"}), true, false},
		{"other type", enc(&pb.JobEvent{Type: pb.JobEventType_JOB_EVENT_TYPE_SHARD_DONE, JobId: "j", BlocksDone: 1, BlocksTotal: 2}), true, false},
		{"other job", enc(&pb.JobEvent{Type: prog, JobId: "x", BlocksDone: 1, BlocksTotal: 2}), false, false},
		{"garbage", []byte{0xff, 0xff, 0xff}, false, false},
	} {
		ev, ok := decodeProgressEvent(c.data, "j")
		if (ev != nil) != c.ev || ok != c.ok {
			t.Errorf("%s: event %v ok %v, want event %v ok %v", c.name, ev != nil, ok, c.ev, c.ok)
		}
	}
}

// FuzzClientProgressEvent: any bytes on a job's event subject decode
// without panic, and an accepted event has 0 <= done <= total, total > 0.
func FuzzClientProgressEvent(f *testing.F) {
	for _, ev := range []*pb.JobEvent{
		{Type: pb.JobEventType_JOB_EVENT_TYPE_PROGRESS, JobId: "j", BlocksDone: 3, BlocksTotal: 10, Epoch: 1},
		{Type: pb.JobEventType_JOB_EVENT_TYPE_PROGRESS, JobId: "j", BlocksDone: 11, BlocksTotal: 10},
		{Type: pb.JobEventType_JOB_EVENT_TYPE_FINISHED, JobId: "j", State: pb.JobState_JOB_STATE_SUCCEEDED},
	} {
		b, _ := proto.Marshal(ev)
		f.Add(b)
	}
	f.Add([]byte{0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, ok := decodeProgressEvent(data, "j")
		if ok && (ev.GetBlocksTotal() <= 0 || ev.GetBlocksDone() < 0 || ev.GetBlocksDone() > ev.GetBlocksTotal()) {
			t.Fatalf("accepted %v", ev)
		}
		if ev != nil && ev.GetJobId() != "" && ev.GetJobId() != "j" {
			t.Fatalf("accepted another job's event %v", ev)
		}
		var m Meter
		if ok {
			m.Observe(t0, ev.GetBlocksDone(), ev.GetBlocksTotal(), UnitSteps, ev.GetEpoch())
			m.Observe(t0.Add(time.Second), ev.GetBlocksTotal(), ev.GetBlocksTotal(), UnitSteps, ev.GetEpoch())
			if r, ok := m.Rate(t0.Add(time.Second)); ok && (r < 0 || math.IsNaN(r) || math.IsInf(r, 0)) {
				t.Fatalf("rate %v", r)
			}
		}
	})
}

// TestClientStatusProgress: a status's ring-step counters are used when
// known and sane, blocks otherwise.
func TestClientStatusProgress(t *testing.T) {
	for _, c := range []struct {
		st          *pb.JobStatus
		done, total int64
		unit        string
	}{
		{&pb.JobStatus{BlocksDone: 1, BlocksTotal: 4}, 1, 4, UnitBlocks},
		{&pb.JobStatus{BlocksDone: 1, BlocksTotal: 4, StepsDone: 30, StepsTotal: 64}, 30, 64, UnitSteps},
		{&pb.JobStatus{BlocksDone: 1, BlocksTotal: 4, StepsDone: 64, StepsTotal: 64}, 64, 64, UnitSteps},
		{&pb.JobStatus{BlocksDone: 1, BlocksTotal: 4, StepsDone: 65, StepsTotal: 64}, 1, 4, UnitBlocks},
		{&pb.JobStatus{BlocksDone: 1, BlocksTotal: 4, StepsDone: -1, StepsTotal: 64}, 1, 4, UnitBlocks},
		{nil, 0, 0, UnitBlocks},
	} {
		d, tot, u := StatusProgress(c.st)
		if d != c.done || tot != c.total || u != c.unit {
			t.Errorf("%v: %d/%d %s, want %d/%d %s", c.st, d, tot, u, c.done, c.total, c.unit)
		}
	}
}
