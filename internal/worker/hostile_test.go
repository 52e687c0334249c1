package worker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// reportsFor returns the reports the fake leader received for job.
func (f *fakeLeader) reportsFor(job string) []*pb.Report {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*pb.Report
	for _, r := range f.reports {
		if r.GetJobId() == job {
			out = append(out, r)
		}
	}
	return out
}

func (f *fakeLeader) heartbeatCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.hbs)
}

// ringJob uploads an attention job of `ranks` ranks and returns the
// assignment of each rank, all on worker "pw".
func (e *protoEnv) ringJob(id string, ranks int, seed uint64) []*pb.Assignment {
	e.t.Helper()
	const b, h, n, d, block = 1, 2, 640, 16, 64
	r := testrand.New(seed)
	ctx := context.Background()
	for _, name := range []string{"q", "k", "v"} {
		x := r.Slice(b*h*n*d, testrand.Normal)
		if _, err := e.store.PutTensor(ctx, "in-"+id, name, x, transport.Shape{b, h, n, d}, block, transport.F32); err != nil {
			e.t.Fatal(err)
		}
	}
	p, err := shard.NewPlan(shard.Request{B: b, Hq: h, Hkv: h, D: d, N: n, Nk: n, Block: block, Ranks: ranks,
		Strategy: shard.Contiguous})
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*pb.Assignment
	for rk := range ranks {
		out = append(out, &pb.Assignment{JobId: id, Epoch: 1, Rank: int32(rk), Size: int32(ranks), Plan: planPB(p, "pw"),
			Params:   &pb.KernelParams{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: b, Hq: h, Hkv: h, D: d, Scale: 0.25, WantLse: true},
			InputRef: "in-" + id, OutputRef: id})
	}
	return out
}

// runningRef is the ShardRef of (job, rank) in the last heartbeat, or nil.
func (e *protoEnv) runningRef(job string, rank int32) *pb.ShardRef {
	hb := e.lead.lastHeartbeat()
	for _, r := range hb.GetRunning() {
		if r.GetJobId() == job && r.GetRank() == rank {
			return r
		}
	}
	return nil
}

// waitHeartbeats waits until the fake leader got n more heartbeats.
func (e *protoEnv) waitHeartbeats(n int) {
	e.t.Helper()
	want := e.lead.heartbeatCount() + n
	checkFor(e.t, 5*time.Second, 5*time.Millisecond, func() error {
		if got := e.lead.heartbeatCount(); got < want {
			return fmt.Errorf("%d heartbeats, waiting for %d", got, want)
		}
		return nil
	})
}

// TestWorkerHeartbeatProgress: while a rank works, the heartbeats list it
// with steps_done growing at every ring step (and with the blocks fetched
// and written) up to steps_total. The leader's progress watchdog re-plans a
// rank whose count stops; the old worker sent 0 for both.
func TestWorkerHeartbeatProgress(t *testing.T) {
	e := newProtoEnv(t, 1000, func(c *Config) { c.Slots = 3 }) // RETRY keeps finished shards listed
	at := make(chan int, 8)
	release := make(chan struct{}, 8)
	e.setHooks(func(ctx context.Context, job string, _ uint64, rank int, p ringattn.Progress) bool {
		if job != "prog" || rank != 0 || p.Done || p.Step >= p.Steps {
			return job == "prog"
		}
		at <- p.Step
		select {
		case <-release:
		case <-ctx.Done():
		}
		return true
	}, nil, nil)
	as := e.ringJob("prog", 3, 7)
	for _, a := range as {
		if ack := e.assign(a); !ack.Accepted {
			t.Fatalf("rank %d rejected: %s", a.Rank, ack.Reason)
		}
	}
	steps := int(as[0].Plan.Steps)
	var prev, total int64
	for s := 1; s < steps; s++ {
		select {
		case got := <-at:
			if got != s {
				t.Fatalf("rank 0 held after step %d, want %d", got, s)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("rank 0 never finished step %d", s)
		}
		// Held after step s: the heartbeats sent since show a count above
		// the last step's, and it stays put while the rank is held.
		e.waitHeartbeats(2)
		ref := e.runningRef("prog", 0)
		if ref == nil || ref.GetStepsDone() <= prev {
			t.Fatalf("held after step %d: heartbeat ref %v, want steps_done > %d", s, ref, prev)
		}
		e.waitHeartbeats(2)
		held := e.runningRef("prog", 0)
		if held.GetStepsDone() != ref.GetStepsDone() {
			t.Fatalf("steps_done moved from %d to %d while the rank was held", ref.GetStepsDone(), held.GetStepsDone())
		}
		if total == 0 {
			total = ref.GetStepsTotal()
		}
		if ref.GetStepsTotal() != total || total <= ref.GetStepsDone() {
			t.Fatalf("after step %d: steps %d of %d (first total %d): want a fixed total above done", s, ref.GetStepsDone(), ref.GetStepsTotal(), total)
		}
		t.Logf("held after ring step %d of %d: heartbeat steps_done %d of %d", s, steps, ref.GetStepsDone(), ref.GetStepsTotal())
		prev = ref.GetStepsDone()
		release <- struct{}{}
	}
	// Finished (the report is being retried): done == total, above the
	// last step's count.
	checkFor(t, 30*time.Second, 5*time.Millisecond, func() error {
		ref := e.runningRef("prog", 0)
		if ref == nil || ref.GetStepsDone() != ref.GetStepsTotal() || ref.GetStepsDone() <= prev {
			return fmt.Errorf("heartbeat ref %v: want steps_done == steps_total > %d", ref, prev)
		}
		return nil
	})
}

// TestWorkerPanicContained: a rank that panics inside its computation
// does not take the worker down: the panic is counted, the shard reports
// FAILED with a non-fatal "internal error" (the leader re-plans), and the
// worker heartbeats and computes the next job.
func TestWorkerPanicContained(t *testing.T) {
	for _, step := range []int{0, 1} {
		t.Run(fmt.Sprintf("step%d", step), func(t *testing.T) {
			e := newProtoEnv(t, 0, func(c *Config) { c.PanicFault = &Fault{Job: "boom", Rank: -1, Step: step} })
			if ack := e.assign(e.job("boom", 1, 3)); !ack.Accepted {
				t.Fatalf("rejected: %s", ack.Reason)
			}
			var rep *pb.Report
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				if rs := e.lead.reportsFor("boom"); len(rs) > 0 {
					rep = rs[0]
					return nil
				}
				return errors.New("no report for boom")
			})
			f := rep.GetFailed()
			if f == nil || f.GetFatal() || !strings.HasPrefix(f.GetReason(), "internal error") {
				t.Fatalf("report %v: want FAILED, not fatal, reason \"internal error ...\"", rep)
			}
			if got := counterValue(t, e.w.met.panics); got != 1 {
				t.Fatalf("panics_total = %v, want 1", got)
			}
			t.Logf("report after the injected panic: %v", f)
			if ack := e.assign(e.job("fine", 1, 4)); !ack.Accepted {
				t.Fatalf("next job rejected: %s", ack.Reason)
			}
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				rs := e.lead.reportsFor("fine")
				if len(rs) == 0 || rs[0].GetDone() == nil {
					return fmt.Errorf("reports for fine: %v", rs)
				}
				return nil
			})
			select {
			case <-e.w.Done():
				t.Fatal("worker stopped")
			default:
			}
		})
	}
}

// TestWorkerHandlerPanicsContained: a panic in the assignment handler,
// the job events handler or a heartbeat is recovered and counted; the
// assignment is answered "internal error", and the worker goes on serving
// assignments, events and heartbeats.
func TestWorkerHandlerPanicsContained(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	left := map[string]int{"assign": 1, "job events": 1, "heartbeat": 2}
	e.setHooks(nil, func(where string) {
		e.mu.Lock()
		n := left[where]
		if n > 0 {
			left[where] = n - 1
		}
		e.mu.Unlock()
		if n > 0 {
			panic("test panic in " + where)
		}
	}, nil)
	a := e.job("hold-p", 1, 5)
	if ack := e.assign(a); ack.Accepted || ack.Reason != "internal error" {
		t.Fatalf("assignment during a handler panic: %v, want rejected with \"internal error\"", ack)
	}
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("assignment after the panic: %s", ack.Reason)
	}
	<-e.held
	ev := &pb.JobEvent{JobId: "hold-p", Type: pb.JobEventType_JOB_EVENT_TYPE_FINISHED,
		State: pb.JobState_JOB_STATE_CANCELED}
	// The first event's handler panics; a later one is applied.
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if st := e.shardState("hold-p", 1); st != "" {
			if err := e.conn.PublishEvent(ev); err != nil {
				return err
			}
			return fmt.Errorf("shard still %s", st)
		}
		return nil
	})
	e.waitHeartbeats(2)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if got := counterValue(t, e.w.met.panics); got != 4 {
			return fmt.Errorf("panics_total = %v, want 4", got)
		}
		return nil
	})
	select {
	case <-e.w.Done():
		t.Fatal("worker stopped")
	default:
	}
}

// TestWorkerStoreOpenHoldsNoLock: while a rank opens the store of another
// bucket (a JetStream request that may take long), the worker still
// heartbeats, answers assignments and lists its shards. The old worker
// held its mutex across the opening, so all of that waited on it.
func TestWorkerStoreOpenHoldsNoLock(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	ctx := context.Background()
	other, err := e.conn.OpenStore(ctx, transport.StoreConfig{Bucket: "otherbkt"})
	if err != nil {
		t.Fatal(err)
	}
	a := e.job("elsewhere", 1, 6)
	r := testrand.New(6)
	for _, name := range []string{"q", "k", "v"} {
		if _, err := other.PutTensor(ctx, "in-elsewhere", name, r.Slice(1*2*200*16, testrand.Normal),
			transport.Shape{1, 2, 200, 16}, 64, transport.F32); err != nil {
			t.Fatal(err)
		}
	}
	a.Bucket = "otherbkt"
	opening := make(chan struct{})
	release := make(chan struct{})
	e.setHooks(nil, nil, func(string) {
		close(opening)
		<-release
	})
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("rejected: %s", ack.Reason)
	}
	<-opening
	done := make(chan []ShardStatus, 1)
	go func() { done <- e.w.Shards() }()
	select {
	case sh := <-done:
		if len(sh) != 1 || sh[0].State != "running" {
			t.Fatalf("Shards() = %v while the store opens, want one running", sh)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shards() blocked while a store was being opened")
	}
	// Answered at once (no free slot), not after the opening.
	if ack := e.assign(e.job("second", 1, 7)); ack.Accepted || !strings.Contains(ack.Reason, "no free slot") {
		t.Fatalf("second assignment while the store opens: %v, want rejected for no free slot", ack)
	}
	e.waitHeartbeats(2)
	close(release)
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		rs := e.lead.reportsFor("elsewhere")
		if len(rs) == 0 || rs[0].GetDone() == nil {
			return fmt.Errorf("reports: %v", rs)
		}
		return nil
	})
}

// TestWorkerConfigGFLOPSLimit: 0 (measure) and finite speeds up to
// MaxGFLOPS are accepted; NaN, ±Inf, negative and speeds past the limit
// are refused naming GFLOPS (the old check let +Inf through).
func TestWorkerConfigGFLOPSLimit(t *testing.T) {
	for _, gf := range []float64{0, 1e-3, 1, MaxGFLOPS} {
		cfg := DefaultConfig()
		cfg.GFLOPS = gf
		if err := cfg.Validate(); err != nil {
			t.Errorf("GFLOPS = %v: %v, want accepted", gf, err)
		}
	}
	for _, gf := range []float64{math.Inf(1), math.Inf(-1), math.NaN(), -1, math.Nextafter(MaxGFLOPS, math.Inf(1)), 1e300} {
		cfg := DefaultConfig()
		cfg.GFLOPS = gf
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "GFLOPS") {
			t.Errorf("GFLOPS = %v: %v, want ErrInvalidConfig naming GFLOPS", gf, err)
		}
	}
}

// TestWorkerParseFault: fault specs parse, print back, and bad ones name
// the key at fault.
func TestWorkerParseFault(t *testing.T) {
	for spec, want := range map[string]string{
		"epoch=1,step=1":                "job=*,epoch=1,rank=*,step=1",
		" job=abc , rank=2 ":            "job=abc,epoch=*,rank=2,step=0",
		"job=*,epoch=*,rank=*":          "job=*,epoch=*,rank=*,step=0",
		"job=j-1,epoch=3,rank=0,step=9": "job=j-1,epoch=3,rank=0,step=9",
	} {
		f, err := ParseFault(spec)
		if err != nil || f.String() != want {
			t.Errorf("ParseFault(%q) = %v, %v; want %s", spec, f, err, want)
			continue
		}
		if g, err := ParseFault(f.String()); err != nil || *g != *f {
			t.Errorf("ParseFault(%q) = %v, %v; want %v", f.String(), g, err, f)
		}
	}
	if f, err := ParseFault(""); f != nil || err != nil {
		t.Errorf("ParseFault(\"\") = %v, %v; want no fault", f, err)
	}
	for spec, want := range map[string]string{
		"epoch=0": "epoch", "rank=-1": "rank", "step=x": "step", "job=a.b": "job", "when=now": "when", "epoch": "key=value",
	} {
		if _, err := ParseFault(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseFault(%q) = %v, want an error naming %s", spec, err, want)
		}
	}
	f := &Fault{Epoch: 1, Rank: -1, Step: 2}
	if !f.hits("j", 1, 5, 2) || f.hits("j", 2, 5, 2) || f.hits("j", 1, 5, 1) || (*Fault)(nil).hits("j", 1, 0, 0) {
		t.Error("Fault.hits picks the wrong ranks")
	}
}

// TestWorkerShardGoroutinePanicContained: a panic in a shard's goroutine
// outside its computation frees the slot and fails the shard (not fatal);
// a panic in report delivery leaves the report to be sent again when the
// leader re-issues the assignment.
func TestWorkerShardGoroutinePanicContained(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	left := map[string]int{"shard sg/1/0": 1, "report delivery sg/1/0": 1}
	e.setHooks(nil, func(where string) {
		e.mu.Lock()
		n := left[where]
		if n > 0 {
			left[where] = n - 1
		}
		e.mu.Unlock()
		if n > 0 {
			panic("test panic in " + where)
		}
	}, nil)
	a := e.job("sg", 1, 8)
	if ack := e.assign(a); !ack.Accepted {
		t.Fatalf("rejected: %s", ack.Reason)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if got := counterValue(t, e.w.met.panics); got != 2 {
			return fmt.Errorf("panics_total = %v, want 2", got)
		}
		return nil
	})
	if rs := e.lead.reportsFor("sg"); len(rs) != 0 {
		t.Fatalf("reports %v sent by a delivery that panicked", rs)
	}
	if st := e.shardState("sg", 1); st != "reporting" {
		t.Fatalf("shard is %q, want reporting (failed, report unsent)", st)
	}
	// The panic is counted before the delivery goroutine clears its
	// in-flight mark; a re-issue inside that window is (rightly) ignored.
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		e.w.mu.Lock()
		defer e.w.mu.Unlock()
		for k, s := range e.w.shards {
			if k.job == "sg" && s.delivering {
				return errors.New("report delivery still marked in flight")
			}
		}
		return nil
	})
	// Re-issued: the report goes out now.
	if ack := e.assign(a); !ack.Accepted || ack.Reason != alreadyHeld {
		t.Fatalf("re-issued: %v", ack)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		rs := e.lead.reportsFor("sg")
		if len(rs) == 0 {
			return errors.New("no report yet")
		}
		if f := rs[0].GetFailed(); f == nil || f.GetFatal() || !strings.HasPrefix(f.GetReason(), "internal error") {
			return fmt.Errorf("report %v: want FAILED, not fatal, internal error", rs[0])
		}
		return nil
	})
	// The slot is free again.
	if ack := e.assign(e.job("sg2", 1, 9)); !ack.Accepted {
		t.Fatalf("next job rejected: %s", ack.Reason)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		rs := e.lead.reportsFor("sg2")
		if len(rs) == 0 || rs[0].GetDone() == nil {
			return fmt.Errorf("reports for sg2: %v", rs)
		}
		return nil
	})
}

// TestWorkerMalformedAssignment: bytes on the worker's assignment subject
// that are no assignment, or that are one byte past transport's limit for
// a control message (transport.MaxControlBytes), are refused with a reason
// saying so, never reach the worker's handler, and leave the worker
// serving.
func TestWorkerMalformedAssignment(t *testing.T) {
	e := newProtoEnv(t, 0, nil)
	raw := e.conn.NATS()
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"garbage", []byte{0xff, 0xff, 0xff}, "malformed assignment"},
		{"past the limit", make([]byte, transport.MaxControlBytes+1), "too large"},
	} {
		m, err := raw.Request(e.subj.Assign("pw"), c.data, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var ack pb.AssignmentAck
		if err := proto.Unmarshal(m.Data, &ack); err != nil {
			t.Fatalf("%s: the answer is no AssignmentAck: %v", c.name, err)
		}
		if ack.GetAccepted() || !strings.Contains(ack.GetReason(), c.want) {
			t.Errorf("%s: %v, want refused naming %q", c.name, &ack, c.want)
		}
	}
	if got := counterValue(t, e.w.met.panics); got != 0 {
		t.Fatalf("panics_total = %v, want 0", got)
	}
	if ack := e.assign(e.job("after", 1, 11)); !ack.Accepted {
		t.Fatalf("a valid assignment after the malformed ones: %s", ack.Reason)
	}
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if rs := e.lead.reportsFor("after"); len(rs) == 0 || rs[0].GetDone() == nil {
			return fmt.Errorf("reports for after: %v", rs)
		}
		return nil
	})
}
