package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// These system tests bring hostile or broken peers to a cluster of real
// processes: a rank that stops progressing while its worker heartbeats,
// a crash of every coordinator at once, forged ring frames and hostile
// submits and heartbeats. Each ends with every process alive (but those
// the test killed) and the jobs exact.

// assertAlive fails the test for every cluster process not running, but
// those in killed.
func assertAlive(t *testing.T, c *localcluster.Cluster, killed ...*localcluster.Proc) {
	t.Helper()
	for _, p := range c.Procs() {
		if !slices.Contains(killed, p) && !p.Running() {
			t.Errorf("%s died: %v", p.Name, p.ExitError())
		}
	}
}

// logHas reports whether the process's log holds s.
func logHas(t *testing.T, p *localcluster.Proc, s string) bool {
	t.Helper()
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(data, []byte(s))
}

// progressTimeout is the leader's progress watchdog in
// TestSystemProgressWatchdog: above the workers' ring receive timeout
// (fastConfig: 2 s), since a healthy rank waiting on a stalled neighbour
// shows no progress until it falls back to the store.
const progressTimeout = 3 * time.Second

// TestSystemProgressWatchdog: a rank whose computation stalls (the test
// fault RINGATTN_FAULT_STALL holds it after its first ring step) while its
// worker keeps heartbeating is noticed by the leader's progress watchdog
// (coordinator --progress-timeout): the job is re-planned and finishes
// exactly, and the stalled worker stays alive and live. Without the
// watchdog the job waits on the rank forever.
func TestSystemProgressWatchdog(t *testing.T) {
	cfg := fastConfig(t, 2)
	cfg.CoordinatorArgs = append(cfg.CoordinatorArgs, "--progress-timeout", progressTimeout.String())
	// The leader allows a rank ten times its plan's expected step time at
	// the worker's reported speed, at least --progress-timeout: report a
	// speed at which the floor applies (1 GFLOP/s would allow ~20 s).
	cfg.WorkerGFLOPS = 100
	c := startCluster(t, cfg)
	ctx := testCtx(t)
	stalled, err := c.AddWorkerEnv(ctx, "RINGATTN_FAULT_STALL=epoch=1,step=1")
	if err != nil {
		t.Fatal(err)
	}
	l := newLedger(t, c)
	id := l.submit(ctx, newJob(60, 1, 8, 2, 2048, 2048, 64, 256, false))
	st := waitRunning(ctx, t, l, id)
	if st.GetEpoch() != 1 || !slices.Contains(st.GetWorkers(), stalled.Name) {
		t.Fatalf("job %s runs epoch %d on %v: want epoch 1 on all three workers, %s among them", id, st.GetEpoch(), st.GetWorkers(), stalled.Name)
	}
	var at time.Time
	if err := localcluster.Poll(ctx, localcluster.PollInterval, func() error {
		if !logHas(t, stalled, "stalling rank (test fault)") {
			return errors.New("no stall logged yet")
		}
		at = time.Now()
		return nil
	}, stalled.Name+" stalling its rank"); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s stalls its rank of job %s (epoch 1) after ring step 1 and keeps heartbeating", stalled.Name, id)
	// Without a watchdog the job never finishes: bound the wait.
	wctx, cancel := context.WithTimeout(ctx, 10*progressTimeout)
	defer cancel()
	fin := l.wait(wctx, id)
	if fin.GetEpoch() <= st.GetEpoch() {
		t.Fatalf("job %s finished %v in epoch %d: want a re-plan past epoch %d", id, fin.GetState(), fin.GetEpoch(), st.GetEpoch())
	}
	logRecovery(t, l, "rank stalled (no progress, worker heartbeating)", at, fin, st.GetEpoch())
	if rp := l.replannedAt(id, st.GetEpoch()); !rp.IsZero() && rp.Sub(at) < progressTimeout/2 {
		t.Errorf("re-planned %v after the stall: want about the progress timeout %v", round(rp.Sub(at)), progressTimeout)
	}
	live, err := c.LiveWorkers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(live, stalled.Name) {
		t.Errorf("live workers %v: want the stalled but heartbeating %s still live", live, stalled.Name)
	}
	l.verify(ctx)
	assertAlive(t, c)
}

// TestSystemWorkerPanic: a rank that panics inside its computation (the
// test fault RINGATTN_FAULT_PANIC, after its first ring step) does not
// take its worker process down: the worker counts the panic, reports the
// shard FAILED (not fatal, "internal error"), the leader re-plans, and the
// job finishes exactly; the worker stays alive and live.
func TestSystemWorkerPanic(t *testing.T) {
	c := startCluster(t, fastConfig(t, 2))
	ctx := testCtx(t)
	bad, err := c.AddWorkerEnv(ctx, "RINGATTN_FAULT_PANIC=epoch=1,step=1")
	if err != nil {
		t.Fatal(err)
	}
	l := newLedger(t, c)
	id := l.submit(ctx, newJob(61, 1, 8, 2, 2048, 2048, 64, 256, true))
	fin := l.wait(ctx, id)
	if fin.GetEpoch() < 2 {
		t.Fatalf("job %s finished %v in epoch %d: want a re-plan after the panic", id, fin.GetState(), fin.GetEpoch())
	}
	panics, err := c.Metric(ctx, bad, "ringattn_worker_panics_total")
	if err != nil {
		t.Fatal(err)
	}
	if panics != 1 || !logHas(t, bad, "panic recovered") {
		t.Errorf("%s: panics_total = %g, want 1 and a \"panic recovered\" log with the stack", bad.Name, panics)
	}
	t.Logf("%s panicked in its rank of epoch 1 and lives; job %s %v in epoch %d on %v", bad.Name, id, fin.GetState(), fin.GetEpoch(), fin.GetWorkers())
	l.verify(ctx)
	assertAlive(t, c)
	if err := c.WaitWorkers(ctx, bad.Name); err != nil {
		t.Fatal(err)
	}
}

// TestSystemWholeClusterCrash SIGKILLs all three coordinators and a worker
// at once while jobs are queued and running, then starts the coordinators
// again on their data directories: every job submitted ends SUCCEEDED
// exactly once under the one id its submit returned, with exact outputs.
func TestSystemWholeClusterCrash(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	const jobs = 10
	errc := make(chan error, jobs)
	for g := range 5 { // uploads in parallel, so that jobs queue
		go func() {
			for i := g; i < jobs; i += 5 {
				errc <- l.trySubmit(ctx, newJob(uint64(70+i), 1, 4, 2, 3072, 3072, 64, 512, i%2 == 0))
			}
		}()
	}
	for range jobs {
		if err := <-errc; err != nil {
			t.Fatalf("submit: %v", err)
		}
	}
	// The victim worker is computing a shard; some jobs are done, some
	// queued.
	var victim *localcluster.Proc
	if err := localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		if n := l.finishedCount(); n == jobs {
			return localcluster.Permanent(errors.New("every job finished before the crash: make the jobs bigger"))
		} else if n < 1 {
			return fmt.Errorf("%d jobs finished", n)
		}
		for _, w := range c.Workers() {
			if n, err := c.Metric(ctx, w, "ringattn_worker_shards_running"); err == nil && n > 0 {
				victim = w
				return nil
			}
		}
		return errors.New("no worker is running a shard")
	}, "a job finished and a worker running a shard"); err != nil {
		t.Fatal(err)
	}
	states := map[pb.JobState]int{}
	l.mu.Lock()
	ids := make([]string, 0, len(l.jobs))
	for _, j := range l.jobs {
		ids = append(ids, j.id)
	}
	l.mu.Unlock()
	for _, id := range ids {
		if st, err := l.status(ctx, id); err == nil {
			states[st.GetState()]++
		}
	}
	killed := append(slices.Clone(c.Coordinators), victim)
	var wg sync.WaitGroup
	for _, p := range killed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Kill(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	at := time.Now()
	t.Logf("SIGKILL every coordinator and %s with jobs %v", victim.Name, states)
	if states[pb.JobState_JOB_STATE_QUEUED] == 0 {
		t.Logf("note: no job was queued at the crash")
	}
	for _, p := range c.Coordinators {
		if err := p.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range c.Coordinators {
		if err := c.WaitCoordinator(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("coordinators restarted on their data; %s leads after %v", leader.Name, round(time.Since(at)))
	final := l.waitAll(ctx)
	var last time.Time
	for _, st := range final {
		if f := finishedAt(st); f.After(last) {
			last = f
		}
	}
	t.Logf("FAULT whole control plane and a worker SIGKILLed: every job finished %v after the crash", round(last.Sub(at)))
	l.verify(ctx)
	assertAlive(t, c, victim)
}

// hostileHeader is one forged ring message: headers over a valid frame's,
// or a replacement set (raw).
type hostileHeader struct {
	name string
	set  map[string]string
	raw  bool
}

// forgedRing publishes forged messages on rank `rank`'s ring subjects of
// job/epoch: data pieces whose headers hold huge, negative or malformed
// numbers (a 4-byte piece at offset MaxInt64 among them), acks and
// control messages with out-of-range senders and sequences. Each data
// piece comes from a fresh session so that it passes the sequence check
// and reaches the header parsing. It returns how many it published.
func forgedRing(t *testing.T, nc *nats.Conn, subj transport.Subjects, job string, epoch uint64, rank, size int) int {
	t.Helper()
	data := []byte{0, 0, 0x80, 0x3f} // 1.0f
	crc := strconv.FormatUint(uint64(transport.CRC32C(data)), 16)
	const maxI = "9223372036854775807"
	from := strconv.Itoa((rank - 1 + size) % size)
	cases := []hostileHeader{
		{name: "offset MaxInt64", set: map[string]string{"Ra-Off": maxI}},
		{name: "offset -1", set: map[string]string{"Ra-Off": "-1"}},
		{name: "offset past the tensor", set: map[string]string{"Ra-Off": "1"}},
		{name: "tensor MaxInt64", set: map[string]string{"Ra-Tensor": maxI}},
		{name: "tensor 1 of 1", set: map[string]string{"Ra-Tensor": "1"}},
		{name: "piece MaxInt64", set: map[string]string{"Ra-Piece": maxI, "Ra-Count": maxI}},
		{name: "count MaxInt64", set: map[string]string{"Ra-Count": maxI}},
		{name: "count 0", set: map[string]string{"Ra-Count": "0"}},
		{name: "piece -1", set: map[string]string{"Ra-Piece": "-1"}},
		{name: "kind MaxInt64", set: map[string]string{"Ra-Kind": maxI}},
		{name: "kind 2^32+1", set: map[string]string{"Ra-Kind": "4294967297"}},
		{name: "kind partial", set: map[string]string{"Ra-Kind": "2"}},
		{name: "step MaxInt64", set: map[string]string{"Ra-Step": maxI}},
		{name: "step -1", set: map[string]string{"Ra-Step": "-1"}},
		{name: "block MaxInt64", set: map[string]string{"Ra-Block": maxI}},
		{name: "shape MaxInt64", set: map[string]string{"Ra-Shape": maxI}},
		{name: "shape 2x2^31", set: map[string]string{"Ra-Shape": "2147483648,2147483648"}},
		{name: "shape -1", set: map[string]string{"Ra-Shape": "-1"}},
		{name: "shape many tensors", set: map[string]string{"Ra-Shape": strings.Repeat("1,", 100000) + "1"}},
		{name: "shape empty with data", set: map[string]string{"Ra-Shape": ""}},
		{name: "bf16 odd values", set: map[string]string{"Ra-Enc": "bf16"}},
		{name: "unknown encoding", set: map[string]string{"Ra-Enc": "f64"}},
		{name: "bad crc", set: map[string]string{"Ra-Crc": "zz"}},
		{name: "wrong crc", set: map[string]string{"Ra-Crc": "1"}},
		{name: "crc 2^64", set: map[string]string{"Ra-Crc": "ffffffffffffffffff"}},
		{name: "from MaxInt64", set: map[string]string{"Ra-From": maxI}},
		{name: "from -1", set: map[string]string{"Ra-From": "-1"}},
		{name: "seq max", set: map[string]string{"Ra-Seq": "18446744073709551615"}},
		{name: "seq 0", set: map[string]string{"Ra-Seq": "0"}},
		{name: "huge session", set: map[string]string{"Ra-Sess": strings.Repeat("s", 64<<10)}},
		{name: "probe", set: map[string]string{"Ra-Probe": "1"}},
		{name: "no headers", raw: true, set: map[string]string{}},
	}
	n := 0
	pub := func(subject string, h map[string]string, payload []byte) {
		m := nats.NewMsg(subject)
		for k, v := range h {
			m.Header.Set(k, v)
		}
		m.Data = payload
		if err := nc.PublishMsg(m); err != nil {
			t.Errorf("publishing a forged message to %s: %v", subject, err)
		}
		n++
	}
	for i, tc := range cases {
		h := map[string]string{}
		if !tc.raw {
			h = map[string]string{
				"Ra-Job": job, "Ra-Epoch": strconv.FormatUint(epoch, 10), "Ra-From": from,
				"Ra-Sess": fmt.Sprintf("forged%d", i), "Ra-Seq": "1",
				"Ra-Kind": "1", "Ra-Step": "1", "Ra-Block": "0", "Ra-Piece": "0", "Ra-Count": "1",
				"Ra-Tensor": "0", "Ra-Off": "0", "Ra-Shape": "1", "Ra-Enc": "f32", "Ra-Crc": crc,
			}
		}
		for k, v := range tc.set {
			h[k] = v
		}
		pub(subj.Ring(job, epoch, rank), h, data)
	}
	// Acks and control messages with hostile senders, sessions, sequences
	// and frame keys.
	for _, h := range []map[string]string{
		{"Ra-From": maxI, "Ra-Sess": "x", "Ra-Seq": "1"},
		{"Ra-From": "-1", "Ra-Sess": "x", "Ra-Seq": "1"},
		{"Ra-From": from, "Ra-Sess": "x", "Ra-Seq": "18446744073709551615"},
		{"Ra-From": from, "Ra-Sess": strings.Repeat("s", 64<<10), "Ra-Seq": "1"},
		{},
	} {
		h["Ra-Job"], h["Ra-Epoch"] = job, strconv.FormatUint(epoch, 10)
		pub(subj.RingAck(job, epoch, rank), h, data)
	}
	for _, ctl := range []string{"end", "drop", "gone", "zz", ""} {
		for _, extra := range []map[string]string{
			{"Ra-Seq": "18446744073709551615", "Ra-Kind": maxI, "Ra-Step": maxI, "Ra-Block": maxI},
			{"Ra-Seq": "-1", "Ra-Kind": "1", "Ra-Step": "-1", "Ra-Block": "-1"},
			{"Ra-From": maxI},
		} {
			h := map[string]string{"Ra-Job": job, "Ra-Epoch": strconv.FormatUint(epoch, 10), "Ra-From": from,
				"Ra-Sess": "forged-ctl", "Ra-Ctl": ctl, "Ra-Rsess": "forged-r"}
			for k, v := range extra {
				h[k] = v
			}
			pub(subj.RingCtl(job, epoch, rank), h, nil)
		}
	}
	return n
}

// TestSystemHostileRingFrame publishes forged ring messages — a 4-byte
// piece at offset MaxInt64, huge and negative counts, kinds, steps,
// shapes, bad checksums, acks and control messages from senders out of
// range — on every rank's ring subjects of a job running on real worker
// processes, from a raw NATS connection. No worker dies, and the job
// finishes exactly (a forged session may cost the ranks a store fallback).
func TestSystemHostileRingFrame(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(80, false))
	st := waitRunning(ctx, t, l, id)
	w := c.Worker(st.GetWorkers()[0])
	st = waitMidJob(ctx, t, l, id, w, base[w.Name])
	nc, err := nats.Connect(c.URL(), nats.Name("forger"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subj := c.NATSConfig("forger").Subjects()
	size := len(st.GetWorkers())
	// A burst to every rank now, and again every 50 ms until the job is
	// done, so forged messages keep arriving while the rings are open.
	forge := func() int {
		n := 0
		for rank := range size {
			n += forgedRing(t, nc, subj, id, st.GetEpoch(), rank, size)
		}
		if err := nc.Flush(); err != nil {
			t.Error(err)
		}
		return n
	}
	n, bursts := forge(), 1
	t.Logf("published %d forged ring messages to the %d ranks of job %s epoch %d (%d/%d blocks done)",
		n, size, id, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	stop, forged := make(chan struct{}), make(chan int, 1)
	var once sync.Once
	more := 0
	halt := func() int { // stops the bursts; the number sent after the first
		once.Do(func() { close(stop); more = <-forged })
		return more
	}
	defer halt()
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		b := 0
		for {
			select {
			case <-stop:
				forged <- b
				return
			case <-tick.C:
				forge()
				b++
			}
		}
	}()
	fin := l.wait(ctx, id)
	bursts += halt()
	t.Logf("%d bursts of forged messages while the job ran", bursts)
	assertAlive(t, c)
	var fallbacks float64
	for _, w := range c.Workers() {
		if v, err := c.Metric(ctx, w, "ringattn_worker_panics_total"); err == nil && v > 0 {
			t.Errorf("%s recovered %g panics: a forged frame reached a bug", w.Name, v)
		}
		v, _ := c.Metric(ctx, w, "ringattn_worker_store_fallbacks_total")
		fallbacks += v
	}
	t.Logf("job %s %v in epoch %d on %v; store fallbacks %g", id, fin.GetState(), fin.GetEpoch(), fin.GetWorkers(), fallbacks)
	l.verify(ctx)
}

// internalPrefix matches an internal package's error prefix, which a
// user-facing message must not carry.
var internalPrefix = regexp.MustCompile(`\b(kernels|shard|transport|coordinator|worker|client|ringattn|tensor): (invalid|ErrInvalid)`)

// runCLI runs the ringattn CLI and returns its exit code and stderr.
func runCLI(ctx context.Context, t *testing.T, args ...string) (int, string) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, ringattnCLI(t), args...)
	cmd.Env = localcluster.ChildEnv(nil)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	}
	t.Fatalf("ringattn %v: %v", args, err)
	return 0, ""
}

// TestSystemHostileSubmit: hostile requests against real processes. The
// CLI refuses, with exit 2 and one line naming the field, a submit whose
// key document lengths sum past int64 (1 + 2·MaxInt64 + 5 on 4 tokens)
// and --ranks 0, and the leader refuses the same spec submitted raw. A
// heartbeat claiming +Inf (NaN, negative, absurd) GFLOP/s, sent raw, is
// refused or taken with the speed unknown, never listed with it. Every
// coordinator stays alive and a normal job right after is exact (the old
// leader planned it weighted by +Inf and failed it).
func TestSystemHostileSubmit(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	dir := t.TempDir()
	paths := map[string]string{}
	for i, name := range []string{"q", "k", "v"} {
		paths[name] = filepath.Join(dir, name+".npy")
		x := []float32{1, 0, 0, 1, float32(i), 1, 0.5, -0.5}
		if err := tensor.WriteNPY(paths[name], tensor.New(x, 4, 2)); err != nil {
			t.Fatal(err)
		}
	}
	files := []string{"-q", paths["q"], "-k", paths["k"], "-v", paths["v"], "-o", filepath.Join(dir, "o.npy")}
	const maxI = "9223372036854775807"
	for _, tc := range []struct {
		name  string
		args  []string
		field []string // the error line names one of these
	}{
		{"seqlens-k summing past int64",
			append([]string{"attend", "--nats", c.URL(), "--block", "2", "--seqlens", "1,1,1,1",
				"--seqlens-k", "1," + maxI + "," + maxI + ",5"}, files...), []string{"seqlens-k", "seqlens_k"}},
		{"--ranks 0", append([]string{"attend", "--ranks", "0"}, files...), []string{"--ranks"}},
	} {
		code, out := runCLI(ctx, t, tc.args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		named := slices.ContainsFunc(tc.field, func(f string) bool { return strings.Contains(out, f) })
		internal := internalPrefix.FindString(out)
		if code != 2 || !named || len(lines) != 1 || internal != "" {
			t.Errorf("ringattn %s: exit %d, output %q; want exit 2 and one line naming %s (no internal package prefix)",
				tc.name, code, out, tc.field[0])
		} else {
			t.Logf("ringattn %s: exit 2: %s", tc.name, lines[0])
		}
		assertAlive(t, c)
	}

	// The same shape submitted raw through the API (no CLI check): the
	// leader refuses it naming the field, and so a spec of absurd sizes.
	store, err := l.cl.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ref := "in-hostile"
	for _, name := range []string{transport.TensorQ, transport.TensorK, transport.TensorV} {
		if _, err := store.PutTensor(ctx, ref, name, []float32{1, 0, 0, 1, 1, 1, 0.5, -0.5},
			transport.Shape{1, 1, 4, 2}, 2, transport.F32); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		spec  *pb.JobSpec
		field string
	}{
		{"seqlens_k summing past int64", &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 1, Hkv: 1, N: 4, Nk: 4, D: 2,
			Block: 2, WantLse: true, InputRef: ref, Mask: &pb.Mask{Seqlens: []int64{1, 1, 1, 1},
				SeqlensK: []int64{1, math.MaxInt64, math.MaxInt64, 5}}}, "seqlens_k"},
		{"n = MaxInt64", &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 1, Hkv: 1, N: math.MaxInt64, Nk: 4, D: 2,
			Block: 2, InputRef: ref, Mask: &pb.Mask{}}, "n"},
	} {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := l.cl.Submit(sctx, tc.spec)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("API submit %s: job %v, error %v; want refused naming %s", tc.name, st.GetId(), err, tc.field)
		} else {
			t.Logf("API submit %s refused: %v", tc.name, err)
		}
		assertAlive(t, c)
	}

	// Forged heartbeats, each from a worker id of its own.
	nc, err := nats.Connect(c.URL(), nats.Name("forger"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subj := c.NATSConfig("forger").Subjects()
	forged := map[string]float64{"evil-inf": math.Inf(1), "evil-nan": math.NaN(), "evil-neg": -1, "evil-huge": 1e300}
	for id, gf := range forged {
		data, err := proto.Marshal(&pb.Heartbeat{WorkerId: id, Slots: 1, Gflops: gf, Version: "forged",
			SentUnixMs: time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		// A request: once answered (or timed out) the leader has dealt
		// with it. A leader may refuse it without an answer.
		if _, err := nc.Request(subj.Heartbeat(), data, 2*time.Second); err != nil {
			t.Logf("forged heartbeat %s (gflops %v): %v", id, gf, err)
		}
	}
	// Refused, or taken with the speed unknown: never listed with a speed
	// a plan could be weighted by.
	ws, err := c.WorkerInfos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if _, bad := forged[w.GetId()]; bad {
			if gf := w.GetGflops(); !(gf >= 0 && gf <= 1e6) {
				t.Errorf("the leader lists forged worker %s with gflops %v", w.GetId(), gf)
			} else {
				t.Logf("the leader lists forged worker %s with its speed as %v", w.GetId(), gf)
			}
		}
	}
	assertAlive(t, c)
	j := newJob(90, 1, 4, 2, 1024, 1024, 32, 128, true)
	id := l.submit(ctx, j)
	fin := l.wait(ctx, id)
	t.Logf("job %s after the forged heartbeats: %v in epoch %d on %v", id, fin.GetState(), fin.GetEpoch(), fin.GetWorkers())
	l.verify(ctx)
	assertAlive(t, c)
}
