package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// bigJob is a job long enough (a few seconds on three single-threaded
// workers) for a fault to land in the middle of it; its outputs are
// checked on a sample of rows.
func bigJob(seed uint64, causal bool) *job {
	if causal {
		return newJob(seed, 1, 8, 2, 6144, 6144, 64, 512, true)
	}
	return newJob(seed, 1, 8, 2, 5120, 5120, 64, 512, false)
}

// testCtx is the context of one system test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// logRecovery logs a fault's recovery time: fault -> job finished, and
// fault -> re-plan when there was one.
func logRecovery(t *testing.T, l *ledger, fault string, at time.Time, st *pb.JobStatus, epochBefore uint64) {
	t.Helper()
	msg := fmt.Sprintf("FAULT %s: job %s %v in epoch %d on %v; recovery (fault -> job finished) %v",
		fault, st.GetId(), st.GetState(), st.GetEpoch(), st.GetWorkers(), round(finishedAt(st).Sub(at)))
	if rp := l.replannedAt(st.GetId(), epochBefore); !rp.IsZero() {
		msg += fmt.Sprintf("; fault -> re-plan %v", round(rp.Sub(at)))
	}
	t.Log(msg)
}

// TestSystemHealthy runs a job on a healthy 3-worker cluster: the
// baseline the fault tests compare their timings with.
func TestSystemHealthy(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	j := bigJob(1, false)
	start := time.Now()
	id := l.submit(ctx, j)
	st := l.wait(ctx, id)
	el := time.Since(start)
	t.Logf("no fault: %v %v in %v (%.2f GFLOP/s) in epoch %d on %v", j, st.GetState(), round(el),
		j.gflop()/el.Seconds(), st.GetEpoch(), st.GetWorkers())
	l.verify(ctx)
}

// TestSystemWorkerKilled SIGKILLs a worker in the middle of its ring: the
// leader misses its heartbeats, re-plans the unfinished blocks over the
// two others, and the job finishes exactly without it.
func TestSystemWorkerKilled(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(2, false))
	st := waitRunning(ctx, t, l, id)
	victim := c.Worker(st.GetWorkers()[1])
	st = waitMidJob(ctx, t, l, id, victim, base[victim.Name])
	at := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s (rank 1 of epoch %d) with %d/%d blocks done", victim.Name, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	fin := l.wait(ctx, id)
	logRecovery(t, l, "worker SIGKILLed mid-job", at, fin, st.GetEpoch())
	if fin.GetEpoch() <= st.GetEpoch() || slices.Contains(fin.GetWorkers(), victim.Name) {
		t.Errorf("job finished in epoch %d on %v: want a re-plan without %s", fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	}
	l.verify(ctx)
}

// TestSystemWorkerHung SIGSTOPs a worker mid-shard (a hang: connections
// open, no heartbeats, no frames; its rank is stalled after one ring step
// by a test fault, so the hang surely lands mid-shard). The leader
// removes it after the heartbeat timeout and re-plans; the job finishes
// exactly without it. Then the worker is continued: its stale rank ends
// (aborted, or answered STALE) and no report of it is accepted, the job
// stays SUCCEEDED in its epoch with exact outputs, and the worker rejoins
// as a live worker.
func TestSystemWorkerHung(t *testing.T) {
	cfg := fastConfig(t, 2)
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	// The victim's rank stalls after one ring step: the hang lands
	// mid-shard, and the rank cannot finish on its own after SIGCONT.
	victim, err := c.AddWorkerEnv(ctx, stallAfterFirstStep)
	if err != nil {
		t.Fatal(err)
	}
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(3, true))
	st := waitRunning(ctx, t, l, id)
	if !slices.Contains(st.GetWorkers(), victim.Name) {
		t.Fatalf("job %s planned on %v, without %s: the fault cannot land", id, st.GetWorkers(), victim.Name)
	}
	st = waitMidJob(ctx, t, l, id, victim, base[victim.Name])
	// The victim's counters of ended shards and reports just before the
	// hang: after SIGCONT its stale rank must end as aborted or STALE, and
	// never be accepted.
	before := lateCounters(ctx, t, c, victim)
	at := time.Now()
	if err := victim.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGSTOP %s (stalled mid-shard in epoch %d) with %d/%d blocks done", victim.Name, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	fin := l.wait(ctx, id)
	logRecovery(t, l, "worker SIGSTOPped mid-job", at, fin, st.GetEpoch())
	if fin.GetEpoch() <= st.GetEpoch() || slices.Contains(fin.GetWorkers(), victim.Name) {
		t.Fatalf("job finished in epoch %d on %v: want a re-plan without %s", fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	}
	// The hang is found by the missed heartbeats, long before the
	// progress watchdog would re-plan the stalled rank.
	if rp := l.replannedAt(id, st.GetEpoch()); rp.IsZero() || rp.Sub(at) > 3*cfg.HeartbeatTimeout {
		t.Fatalf("re-plan %v after SIGSTOP: want within a few heartbeat timeouts (%v): the hang was not detected",
			round(rp.Sub(at)), cfg.HeartbeatTimeout)
	}
	l.verify(ctx)

	if err := victim.Cont(); err != nil {
		t.Fatal(err)
	}
	cont := time.Now()
	// The continued worker ends its stale shard (aborted, or finished and
	// answered STALE) and is a live worker again.
	err = localcluster.Poll(ctx, localcluster.PollInterval, func() error {
		n, err := c.Metric(ctx, victim, "ringattn_worker_shards_running")
		if err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%s still runs %g shards", victim.Name, n)
		}
		return nil
	}, victim.Name+" done with its stale shard")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitWorkers(ctx, victim.Name); err != nil {
		t.Fatal(err)
	}
	after := lateCounters(ctx, t, c, victim)
	t.Logf("SIGCONT %s: stale shard over and worker live again after %v (before the hang: %+v; after: %+v)",
		victim.Name, round(time.Since(cont)), before, after)
	if after.accepted != before.accepted {
		t.Errorf("%s had %g reports accepted after SIGCONT: its stale rank's report must not be accepted",
			victim.Name, after.accepted-before.accepted)
	}
	if ended := (after.aborted - before.aborted) + (after.stale - before.stale); ended < 1 {
		t.Errorf("%s's stale rank ended neither aborted by the leader nor answered STALE after SIGCONT (%+v -> %+v)",
			victim.Name, before, after)
	}
	now, err := l.status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if now.GetState() != pb.JobState_JOB_STATE_SUCCEEDED || now.GetEpoch() != fin.GetEpoch() ||
		now.GetFinishedUnixMs() != fin.GetFinishedUnixMs() {
		t.Fatalf("after SIGCONT the job is %v in epoch %d finished at %d, want unchanged (SUCCEEDED, epoch %d, %d)",
			now.GetState(), now.GetEpoch(), now.GetFinishedUnixMs(), fin.GetEpoch(), fin.GetFinishedUnixMs())
	}
	l.verify(ctx) // the outputs are still exact after the late worker ran
}

// TestSystemLeaderKilled SIGKILLs the coordinator leader mid-job: a new
// leader is elected, reloads the job from the replicated log and
// re-issues its epoch; the job finishes exactly. The old leader is then
// restarted (same data directory and ports) and catches up.
func TestSystemLeaderKilled(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(4, false))
	st := waitRunning(ctx, t, l, id)
	w := c.Worker(st.GetWorkers()[0])
	st = waitMidJob(ctx, t, l, id, w, base[w.Name])
	at := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL leader %s with job %s in epoch %d, %d/%d blocks done", leader.Name, id, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	next, err := c.WaitLeader(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FAULT leader SIGKILLed mid-job: kill -> new leader %s serving the API %v", next.Name, round(time.Since(at)))
	fin := l.wait(ctx, id)
	logRecovery(t, l, "leader SIGKILLed mid-job", at, fin, st.GetEpoch())
	l.verify(ctx)

	restart := time.Now()
	if err := c.RestartAndWait(ctx, leader); err != nil {
		t.Fatal(err)
	}
	err = localcluster.Poll(ctx, localcluster.PollInterval, func() error {
		r, err := c.ClusterInfo(ctx, leader)
		if err != nil {
			return err
		}
		if r.GetJobsByState()["succeeded"] != 1 {
			return fmt.Errorf("%s sees jobs %v", leader.Name, r.GetJobsByState())
		}
		return nil
	}, leader.Name+" caught up")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("old leader %s restarted with its data and caught up in %v", leader.Name, round(time.Since(restart)))
}

// TestSystemNATSRestarted SIGKILLs the NATS server mid-ring and starts it
// again on the same port with the same JetStream store: every process
// reconnects and the job finishes exactly in its epoch. One worker of the
// job reconnects late (its link refuses connections for two ring receive
// timeouts, less than the heartbeat timeout), after its first ring step,
// so that frames of its later steps are lost with the server: the ranks
// waiting for them must fall back to the store. The ring's flow control
// keeps frames that were not yet sent from being lost, so a restart may
// lose none; the scenario runs again, up to 3 times, until one did.
func TestSystemNATSRestarted(t *testing.T) {
	cfg := fastConfig(t, 3)
	cfg.ProxyWorkers = true
	cfg.RecvTimeout = time.Second
	cfg.HeartbeatTimeout = 4 * time.Second // the late worker is slow to return, not dead
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	const attempts = 3
	fell := false
	for attempt := 1; attempt <= attempts && !fell; attempt++ {
		fell = natsRestartOnce(ctx, t, c, l, cfg, uint64(5+100*attempt))
		if !fell {
			t.Logf("attempt %d: no ring frame was lost across the restart (none was in flight); again", attempt)
		}
	}
	if !fell {
		t.Errorf("in %d NATS restarts mid-ring no ring step fell back to the store (ringattn_worker_store_fallbacks_total unchanged)", attempts)
	}
	l.verify(ctx)
}

// natsRestartOnce runs one job, restarts NATS after one of its workers
// finished its first ring step, lets that worker reconnect late, and
// reports whether ring steps fell back to the store.
func natsRestartOnce(ctx context.Context, t *testing.T, c *localcluster.Cluster, l *ledger, cfg localcluster.Config, seed uint64) bool {
	t.Helper()
	base := stepCounts(ctx, c)
	fallbacksBefore := storeFallbacks(ctx, t, c)
	// One ring over every worker: the planner could otherwise split the
	// heads into groups whose rings never cross the late worker's link.
	j := bigJob(seed, false)
	j.strategy = "contiguous"
	id := l.submit(ctx, j)
	st := waitRunning(ctx, t, l, id)
	late := c.Worker(st.GetWorkers()[1])
	px := c.Proxy(late.Name)
	// Mid-ring: the late worker has finished exactly its first ring step,
	// so frames of later steps are still to cross its link (after the
	// last step it only writes outputs, and nothing could fall back).
	err := localcluster.Poll(ctx, 2*time.Millisecond, func() error {
		steps := ringSteps(ctx, c, late)
		switch {
		case steps == base[late.Name]+1:
			return nil
		case steps > base[late.Name]+1:
			return localcluster.Permanent(fmt.Errorf("%s finished %g ring steps between two polls: make the job bigger", late.Name, steps-base[late.Name]))
		}
		return fmt.Errorf("%s: %g ring steps (base %g)", late.Name, steps, base[late.Name])
	}, late.Name+" after its first ring step")
	if err != nil {
		t.Fatal(err)
	}
	if st, err = l.status(ctx, id); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	px.SetRefuse(true)
	if err := c.NATS.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartAndWait(ctx, c.NATS); err != nil {
		t.Fatal(err)
	}
	t.Logf("NATS SIGKILLed and serving again after %v (job %s was in epoch %d, %d/%d blocks done)",
		round(time.Since(at)), id, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	// The others reconnect now; the late worker after 2 receive timeouts.
	lateFor := 2 * cfg.RecvTimeout
	timer := time.AfterFunc(lateFor, func() { px.SetRefuse(false) })
	defer timer.Stop()
	fin := l.wait(ctx, id)
	logRecovery(t, l, "NATS server restarted mid-job", at, fin, st.GetEpoch())
	if fin.GetEpoch() != st.GetEpoch() {
		t.Errorf("job finished in epoch %d, want %d: a NATS restart must not cost a re-plan", fin.GetEpoch(), st.GetEpoch())
	}
	if err := c.WaitWorkers(ctx, late.Name); err != nil {
		t.Fatal(err)
	}
	fallbacks := storeFallbacks(ctx, t, c) - fallbacksBefore
	t.Logf("%s reconnected %v after NATS; ring frames fetched from the store instead: %g", late.Name, lateFor, fallbacks)
	return fallbacks >= 1
}

// TestSystemWorkerTerminated SIGTERMs a worker mid-shard (Kubernetes
// scale-down): it tells the leader it is leaving, so the leader re-plans
// without waiting for the heartbeat timeout and aborts the victim's
// shard; the victim exits 0 well within its drain timeout, and the job
// finishes exactly without it. The victim's rank is stalled after its
// first ring step (a test fault), so it cannot finish its shard during
// the drain: the re-plan must happen.
func TestSystemWorkerTerminated(t *testing.T) {
	cfg := fastConfig(t, 2)
	cfg.HeartbeatTimeout = 3 * time.Second // a re-plan must not wait for it
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	victim, err := c.AddWorkerEnv(ctx, stallAfterFirstStep)
	if err != nil {
		t.Fatal(err)
	}
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(6, true))
	st := waitRunning(ctx, t, l, id)
	if !slices.Contains(st.GetWorkers(), victim.Name) {
		t.Fatalf("job %s planned on %v, without %s: the fault cannot land", id, st.GetWorkers(), victim.Name)
	}
	st = waitMidJob(ctx, t, l, id, victim, base[victim.Name])
	at := time.Now()
	ps, err := victim.Terminate(cfg.DrainTimeout + 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	exited := time.Since(at)
	if ps.ExitCode() != 0 {
		t.Fatalf("%s exited with %v after SIGTERM, want 0", victim.Name, ps)
	}
	t.Logf("SIGTERM %s (stalled mid-shard in epoch %d, %d/%d blocks done): exited 0 after %v",
		victim.Name, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal(), round(exited))
	if exited >= cfg.DrainTimeout || logContains(t, victim, "drain timeout") {
		t.Errorf("%s took %v to exit (drain timeout %v): the leader should have aborted its shard after the re-plan",
			victim.Name, round(exited), cfg.DrainTimeout)
	}
	fin := l.wait(ctx, id)
	logRecovery(t, l, "worker SIGTERMed mid-shard (drain)", at, fin, st.GetEpoch())
	rp := l.replannedAt(id, st.GetEpoch())
	switch {
	case rp.IsZero():
		t.Errorf("job %s finished in epoch %d on %v with no re-plan after SIGTERM: want a re-plan without %s",
			id, fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	case rp.Sub(at) >= cfg.HeartbeatTimeout:
		t.Errorf("re-plan %v after SIGTERM: want < the heartbeat timeout %v (the worker said it was leaving)", rp.Sub(at), cfg.HeartbeatTimeout)
	}
	if fin.GetEpoch() <= st.GetEpoch() || slices.Contains(fin.GetWorkers(), victim.Name) {
		t.Errorf("job finished in epoch %d on %v: want a re-plan without %s", fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	}
	if err := c.WaitWorkerGone(ctx, victim.Name); err != nil {
		t.Fatal(err)
	}
	l.verify(ctx)
}

// TestSystemWorkerDrainTimeout takes the drain-timeout path: a worker
// whose rank is stalled mid-shard is SIGTERMed while its link to NATS is
// cut, so it cannot tell the leader it leaves and no abort reaches it.
// It must abandon its shard when its drain timeout passes and exit 0; the
// leader re-plans after the heartbeat timeout and the job finishes
// exactly without it.
func TestSystemWorkerDrainTimeout(t *testing.T) {
	cfg := fastConfig(t, 2)
	cfg.ProxyWorkers = true
	cfg.DrainTimeout = 1500 * time.Millisecond
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	victim, err := c.AddWorkerEnv(ctx, stallAfterFirstStep)
	if err != nil {
		t.Fatal(err)
	}
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(9, false))
	st := waitRunning(ctx, t, l, id)
	if !slices.Contains(st.GetWorkers(), victim.Name) {
		t.Fatalf("job %s planned on %v, without %s: the fault cannot land", id, st.GetWorkers(), victim.Name)
	}
	st = waitMidJob(ctx, t, l, id, victim, base[victim.Name])
	px := c.Proxy(victim.Name)
	px.SetRefuse(true)
	px.DropConnections()
	at := time.Now()
	ps, err := victim.Terminate(cfg.DrainTimeout + 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	exited := time.Since(at)
	if ps.ExitCode() != 0 {
		t.Fatalf("%s exited with %v after SIGTERM, want 0 after its drain timeout", victim.Name, ps)
	}
	t.Logf("SIGTERM %s (stalled mid-shard in epoch %d, link cut): exited 0 after %v (drain timeout %v)",
		victim.Name, st.GetEpoch(), round(exited), cfg.DrainTimeout)
	const exitSlack = 3 * time.Second
	switch {
	case exited < cfg.DrainTimeout:
		t.Errorf("%s exited %v after SIGTERM, before its drain timeout %v: its stalled shard cannot have finished",
			victim.Name, round(exited), cfg.DrainTimeout)
	case exited > cfg.DrainTimeout+exitSlack:
		t.Errorf("%s exited %v after SIGTERM: want within its drain timeout %v (+%v): a drain must bound the exit even when NATS is unreachable",
			victim.Name, round(exited), cfg.DrainTimeout, exitSlack)
	}
	if !logContains(t, victim, "drain timeout: abandoning shards") {
		t.Errorf("%s's log does not show the drain timeout abandoning its shard", victim.Name)
	}
	fin := l.wait(ctx, id)
	logRecovery(t, l, "worker SIGTERMed mid-shard, drain timed out", at, fin, st.GetEpoch())
	if fin.GetEpoch() <= st.GetEpoch() || slices.Contains(fin.GetWorkers(), victim.Name) {
		t.Errorf("job finished in epoch %d on %v: want a re-plan without %s", fin.GetEpoch(), fin.GetWorkers(), victim.Name)
	}
	l.verify(ctx)
}

// TestSystemWorkerJoinsMidQueue: one worker is busy with a long job and
// small jobs queue behind it; a worker that joins gets the queued work.
func TestSystemWorkerJoinsMidQueue(t *testing.T) {
	c := startCluster(t, fastConfig(t, 1))
	l := newLedger(t, c)
	ctx := testCtx(t)
	w0 := c.Workers()[0]
	// A long job keeps the only worker busy; small jobs queue behind it.
	ids := []string{l.submit(ctx, newJob(10, 1, 8, 2, 4096, 4096, 64, 512, false))}
	waitRunning(ctx, t, l, ids[0])
	for i := range 4 {
		ids = append(ids, l.submit(ctx, newJob(uint64(11+i), 1, 4, 2, 1024, 1024, 64, 256, i%2 == 0)))
	}
	queued := 0
	for _, id := range ids[1:] {
		st, err := l.status(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetState() == pb.JobState_JOB_STATE_QUEUED {
			queued++
		}
	}
	if queued < 2 {
		t.Fatalf("only %d jobs queued behind the running one: make the first job bigger", queued)
	}
	at := time.Now()
	w1, err := c.AddWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s joined (live at the leader after %v) while job %s ran on %s and %d more were queued",
		w1.Name, round(time.Since(at)), ids[0], w0.Name, queued)
	var first time.Time
	err = localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		for _, id := range ids {
			st, err := l.status(ctx, id)
			if err != nil {
				return err
			}
			if slices.Contains(st.GetWorkers(), w1.Name) {
				first = time.Now()
				return nil
			}
		}
		return fmt.Errorf("no job planned on %s yet", w1.Name)
	}, "a job on "+w1.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("FAULT worker joined mid-queue: join -> first job planned on it %v", round(first.Sub(at)))
	l.verify(ctx)
	final := l.waitAll(ctx)
	on := 0
	for _, id := range ids {
		if slices.Contains(final[id].GetWorkers(), w1.Name) {
			on++
		}
	}
	if on == 0 {
		t.Fatalf("no job ran on the joined worker %s", w1.Name)
	}
	t.Logf("%d of %d jobs ran on the joined worker", on, len(ids))
}

// TestSystemManyJobsWorkerAndLeaderKilled runs 40 concurrent jobs over 4
// workers. One worker stalls its first-epoch ranks after one ring step (a
// test fault), so it is SIGKILLed while it surely holds a shard mid-ring:
// every job running on it then must be re-planned without it. The leader
// is SIGKILLed after 20 jobs finished, with jobs still in flight. Every
// job ends SUCCEEDED exactly once with exact outputs.
func TestSystemManyJobsWorkerAndLeaderKilled(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	victim, err := c.AddWorkerEnv(ctx, stallAfterFirstStep)
	if err != nil {
		t.Fatal(err)
	}
	base := ringSteps(ctx, c, victim)
	const jobs = 40
	var all []*job
	for i := range jobs {
		n := 256 + 64*(i%8)
		nk := n + 64*(i%3) // cross attention too (bottom-right causal)
		hq := []int{2, 4}[i%2]
		all = append(all, newJob(uint64(100+i), 1, hq, 2, n, nk, 32, 128, i%3 == 0))
	}
	start := time.Now()
	errc := make(chan error, jobs)
	for g := range 8 {
		go func() {
			for i := g; i < jobs; i += 8 {
				errc <- l.trySubmit(ctx, all[i])
			}
		}()
	}
	for range jobs {
		if err := <-errc; err != nil {
			t.Fatalf("submit: %v", err)
		}
	}
	t.Logf("%d jobs submitted in %v", jobs, round(time.Since(start)))
	// The victim holds a stalled shard: it finished a ring step and runs
	// a shard that cannot end before it is aborted.
	if err := localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		if !victim.Running() {
			return localcluster.Permanent(fmt.Errorf("%s exited before it held a shard", victim.Name))
		}
		steps, err := c.Metric(ctx, victim, "ringattn_worker_ring_step_seconds_count")
		if err != nil {
			return err
		}
		running, err := c.Metric(ctx, victim, "ringattn_worker_shards_running")
		if err != nil {
			return err
		}
		if steps <= base || running < 1 {
			if l.finishedCount() == jobs {
				return localcluster.Permanent(fmt.Errorf("every job finished without a shard on %s", victim.Name))
			}
			return fmt.Errorf("%s: %g ring steps (base %g), %g shards running", victim.Name, steps, base, running)
		}
		return nil
	}, victim.Name+" stalled mid-shard"); err != nil {
		t.Fatal(err)
	}
	// The jobs running on the victim now: its ranks in them cannot finish.
	onVictim := map[string]uint64{}
	for _, j := range all {
		st, err := l.status(ctx, j.id)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetState() == pb.JobState_JOB_STATE_RUNNING && st.GetEpoch() == 1 && slices.Contains(st.GetWorkers(), victim.Name) {
			onVictim[j.id] = st.GetEpoch()
		}
	}
	workerAt := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL %s holding a stalled shard, after %d jobs finished; %d jobs were running on it",
		victim.Name, l.finishedCount(), len(onVictim))
	if len(onVictim) == 0 {
		t.Fatalf("no running job was planned on %s when it was killed", victim.Name)
	}
	waitFinished := func(n int) {
		t.Helper()
		if err := localcluster.Poll(ctx, 5*time.Millisecond, func() error {
			if got := l.finishedCount(); got < n {
				return fmt.Errorf("%d jobs finished", got)
			}
			return nil
		}, fmt.Sprintf("%d jobs finished", n)); err != nil {
			t.Fatal(err)
		}
	}
	waitFinished(20)
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leaderAt := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	done := l.finishedCount()
	if done == jobs {
		t.Fatal("every job finished before the leader was killed: make the jobs bigger")
	}
	next, err := c.WaitLeader(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL leader %s after %d jobs finished; new leader %s serving after %v", leader.Name, done, next.Name, round(time.Since(leaderAt)))
	final := l.waitAll(ctx)
	var last time.Time
	replanned, afterLeader := 0, 0
	for _, st := range final {
		if f := finishedAt(st); f.After(last) {
			last = f
		}
		if finishedAt(st).After(leaderAt) {
			afterLeader++
		}
		if st.GetEpoch() > 1 {
			replanned++
		}
	}
	for id, epoch := range onVictim {
		st := final[id]
		if st.GetEpoch() <= epoch || slices.Contains(st.GetWorkers(), victim.Name) {
			t.Errorf("job %s ran on %s when it was killed but finished in epoch %d on %v: want a re-plan without it",
				id, victim.Name, st.GetEpoch(), st.GetWorkers())
		}
	}
	if afterLeader == 0 {
		t.Errorf("no job finished after the leader was killed: the fault did not land mid-flight")
	}
	t.Logf("FAULT worker and leader SIGKILLed during 40 jobs: all finished %v after the worker kill, %v after the leader kill (%d jobs finished under the new leader); %d jobs re-planned (%d were on the killed worker); whole run %v",
		round(last.Sub(workerAt)), round(last.Sub(leaderAt)), afterLeader, replanned, len(onVictim), round(last.Sub(start)))
	l.verify(ctx)
}

// TestSystemCorruptBlock overwrites an input block in the object store
// with bad bytes (its checksum no longer matches): the worker that reads
// it fetches it again, finds it still corrupt, and the job FAILS naming
// the block (DESIGN §5). A healthy job next to it is not harmed.
func TestSystemCorruptBlock(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)
	bad := newJob(20, 1, 4, 2, 1024, 1024, 32, 128, false)
	bad.wantFailed = `tensor "k" block 3`
	good := newJob(21, 1, 4, 2, 1024, 1024, 32, 128, true)

	store, err := l.cl.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ref := "in-corrupt-" + fmt.Sprint(time.Now().UnixNano())
	p := bad.ref
	for _, in := range []struct {
		name string
		x    []float32
		sh   transport.Shape
	}{
		{transport.TensorQ, bad.q, transport.Shape{p.B, p.Hq, p.N, p.D}},
		{transport.TensorK, bad.k, transport.Shape{p.B, p.Hkv, p.Nk, p.D}},
		{transport.TensorV, bad.v, transport.Shape{p.B, p.Hkv, p.Nk, p.D}},
	} {
		if _, err := store.PutTensor(ctx, ref, in.name, in.x, in.sh, bad.block, transport.F32); err != nil {
			t.Fatal(err)
		}
	}
	// Rewrite k block 3 through the object store API: same metadata (the
	// CRC32C of the good bytes), one bit flipped in the data.
	obs := store.ObjectStore()
	name := transport.BlockName(ref, transport.TensorK, 3)
	info, err := obs.GetInfo(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := obs.GetBytes(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x10
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name, Metadata: info.Metadata}, bytes.NewReader(raw)); err != nil {
		t.Fatal(err)
	}
	t.Logf("corrupted object %s (one bit flipped, checksum metadata kept)", name)
	start := time.Now()
	st, err := l.cl.Submit(ctx, &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: int64(p.B), Hq: int64(p.Hq),
		Hkv: int64(p.Hkv), N: int64(p.N), Nk: int64(p.Nk), D: int64(p.D), Block: int64(bad.block), WantLse: true,
		Mask: &pb.Mask{}, InputRef: ref, IdempotencyKey: ref})
	if err != nil {
		t.Fatal(err)
	}
	l.add(bad, st.GetId())
	l.submit(ctx, good)
	fin := l.wait(ctx, bad.id)
	t.Logf("FAULT corrupted input block: job %s %v %v after submit: %s", bad.id, fin.GetState(),
		round(finishedAt(fin).Sub(start)), fin.GetReason())
	l.verify(ctx)
	// The worker that read the block fetched it a second time before
	// failing the job.
	refetched := false
	for _, w := range c.Workers() {
		data, err := os.ReadFile(w.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), "corrupt block, fetching again") && strings.Contains(string(data), ref) {
			refetched = true
			t.Logf("%s refetched the corrupt block before failing", w.Name)
		}
	}
	if !refetched {
		t.Errorf("no worker log shows a refetch of the corrupt block")
	}
}

// TestSystemSlowLink adds 200 ms of latency each way on one worker's link
// to NATS (through the proxy): heartbeats, ring frames and store reads
// all cross it. Jobs stay exact; the test reports the slowdown against
// the same job on the undisturbed link.
func TestSystemSlowLink(t *testing.T) {
	cfg := fastConfig(t, 3)
	cfg.ProxyWorkers = true
	cfg.HeartbeatTimeout = 3 * time.Second // 400 ms round trips are slow, not dead
	cfg.RequestTimeout = 2 * time.Second
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	run := func(seed uint64) (*pb.JobStatus, time.Duration) {
		j := newJob(seed, 1, 8, 2, 3072, 3072, 64, 512, true)
		start := time.Now()
		id := l.submit(ctx, j)
		st := l.wait(ctx, id)
		return st, time.Since(start)
	}
	_, fast := run(30)
	slow := c.Workers()[1]
	px := c.Proxy(slow.Name)
	px.SetDelay(200 * time.Millisecond)
	// The slow worker is still live (its heartbeats cross the delay) when
	// the job is planned.
	if err := c.WaitWorkers(ctx, slow.Name); err != nil {
		t.Fatal(err)
	}
	pre := px.Stats()
	st, took := run(31)
	if !slices.Contains(st.GetWorkers(), slow.Name) || st.GetEpoch() != 1 {
		t.Errorf("the job ran in epoch %d on %v: want epoch 1 with %s, whose link is slow (slow is not dead)",
			st.GetEpoch(), st.GetWorkers(), slow.Name)
	}
	if post := px.Stats(); post.Down-pre.Down < 256<<10 {
		t.Errorf("only %d bytes reached %s over its slow link during the job: its ring did not cross the link", post.Down-pre.Down, slow.Name)
	}
	t.Logf("FAULT 200 ms added latency on %s's link: job %v in epoch %d on %v in %v (undisturbed: %v, x%.2f); proxy %+v",
		slow.Name, st.GetState(), st.GetEpoch(), st.GetWorkers(), round(took), round(fast), took.Seconds()/fast.Seconds(), px.Stats())
	px.SetDelay(0)
	l.verify(ctx)
}

// TestSystemWorkerLinkDropped cuts one worker's TCP connection to NATS
// (through its proxy) in the middle of its ring, twice: the worker
// reconnects, lost ring pieces are resent or read from the store, and the
// job finishes exactly.
func TestSystemWorkerLinkDropped(t *testing.T) {
	cfg := fastConfig(t, 3)
	cfg.ProxyWorkers = true
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(7, false))
	st := waitRunning(ctx, t, l, id)
	victim := c.Worker(st.GetWorkers()[1])
	px := c.Proxy(victim.Name)
	st = waitMidJob(ctx, t, l, id, victim, base[victim.Name])
	at := time.Now()
	n := px.DropConnections()
	// Cut again as soon as the worker is back (a second reset mid-ring).
	if err := localcluster.Poll(ctx, 5*time.Millisecond, func() error {
		if px.Stats().Accepted < 2 {
			return errors.New("not reconnected")
		}
		return nil
	}, victim.Name+" reconnected"); err != nil {
		t.Fatal(err)
	}
	back := time.Since(at)
	n += px.DropConnections()
	t.Logf("cut %s's NATS connection twice (%d connections; it reconnected after %v) with job %s in epoch %d, %d/%d blocks done",
		victim.Name, n, round(back), id, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	fin := l.wait(ctx, id)
	logRecovery(t, l, "worker's NATS connection dropped twice mid-job", at, fin, st.GetEpoch())
	l.verify(ctx)
}

// TestSystemWorkerLinkThrottled caps one worker's link to NATS at 2 MiB/s
// in each direction from the middle of a job: the job finishes exactly,
// slower.
func TestSystemWorkerLinkThrottled(t *testing.T) {
	cfg := fastConfig(t, 3)
	cfg.ProxyWorkers = true
	cfg.HeartbeatTimeout = 3 * time.Second // heartbeats queue behind ring pieces
	c := startCluster(t, cfg)
	l := newLedger(t, c)
	ctx := testCtx(t)
	base := stepCounts(ctx, c)
	id := l.submit(ctx, bigJob(8, true))
	st := waitRunning(ctx, t, l, id)
	victim := c.Worker(st.GetWorkers()[0])
	px := c.Proxy(victim.Name)
	st = waitMidJob(ctx, t, l, id, victim, base[victim.Name])
	at := time.Now()
	const rate = 2 << 20
	px.SetBandwidth(rate)
	t.Logf("capped %s's link at %d MiB/s with job %s in epoch %d, %d/%d blocks done", victim.Name, rate>>20, id,
		st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	fin := l.wait(ctx, id)
	px.SetBandwidth(0)
	logRecovery(t, l, "worker's link capped at 2 MiB/s mid-job", at, fin, st.GetEpoch())
	t.Logf("proxy of %s: %+v", victim.Name, px.Stats())
	l.verify(ctx)
}
