package coordinator

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/internal/xlog"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func TestCoordinatorPartitionAndHeal(t *testing.T) {
	tc := newCluster(t, 3, nil)
	nc := connect(t, tc.url)
	old := tc.leader()
	a := submit(t, nc, attnSpec("before", 256))

	// Cut the leader off from both followers.
	oldAddr := tc.trans[old].LocalAddr()
	tc.trans[old].DisconnectAll()
	for i, tr := range tc.trans {
		if i != old {
			tr.Disconnect(oldAddr)
		}
	}
	var next int
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, c := range tc.nodes {
			if i != old && c.IsLeader() && c.Serving() {
				next = i
				return nil
			}
		}
		return fmt.Errorf("no leader in the majority yet")
	})
	// The cut-off node steps down (its leader lease runs out) and cannot
	// commit; the majority goes on.
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if tc.nodes[old].IsLeader() {
			return fmt.Errorf("old leader still leads")
		}
		return nil
	})
	b := submit(t, nc, attnSpec("during", 256))
	if tc.nodes[old].State().Job(b.Job.Id) != nil {
		t.Fatal("a partitioned node applied a command")
	}
	if tc.nodes[next].State().Job(a.Job.Id) == nil {
		t.Fatal("the new leader lost a committed job")
	}
	// Heal: the old leader rejoins as a follower and catches up.
	tc.connectAll()
	st := tc.converged()
	if st.Len() != 2 || st.Job(a.Job.Id) == nil || st.Job(b.Job.Id) == nil {
		t.Fatalf("after heal: %d jobs", st.Len())
	}
	tc.leader()
}

func TestCoordinatorLeaderKilledWhileJobsRun(t *testing.T) {
	tc := newCluster(t, 3, nil)
	nc := connect(t, tc.url)
	old := tc.leader()
	g := &gate{}
	t.Cleanup(g.open)
	var workers []*testWorker
	for i := range 3 {
		w := newTestWorker(t, tc.url, fmt.Sprintf("w%d", i), float64(10*(i+1)), 50*time.Millisecond)
		w.gate = g
		workers = append(workers, w)
	}
	waitWorkers(t, nc, 3)
	var ids []string
	for i := range 12 {
		ids = append(ids, submit(t, nc, attnSpec(fmt.Sprintf("run-%d", i), 64*8)).Job.Id)
	}
	// Let a few jobs finish, then hold the workers' reports so that the
	// jobs started from now on are surely running when the leader dies.
	checkFor(t, 20*time.Second, 2*time.Millisecond, func() error {
		if n := tc.nodes[old].State().Counts()[pb.JobState_JOB_STATE_SUCCEEDED]; n < 2 {
			return fmt.Errorf("%d succeeded", n)
		}
		return nil
	})
	g.shut()
	shut := time.Now()
	var held []*cpb.Job
	checkFor(t, 20*time.Second, 2*time.Millisecond, func() error {
		// Workers report 50 ms after an assignment; ranks still undone
		// well after the gate shut are held by it.
		held = tc.nodes[old].State().Jobs(func(j *cpb.Job) bool {
			return j.State == pb.JobState_JOB_STATE_RUNNING && len(j.DoneRanks) < len(j.Plan.GetRanks())
		})
		if time.Since(shut) < 300*time.Millisecond || len(held) == 0 {
			return fmt.Errorf("%d running jobs held", len(held))
		}
		return nil
	})
	tc.kill(old)
	next := tc.leader()
	if next == old {
		t.Fatal("killed node still leads")
	}
	// The new leader re-issues the running epochs (planned by the old one)
	// to their live workers.
	newID := tc.cfgs[next].NodeID
	reissued := func() (n int) {
		for _, w := range workers {
			for _, k := range w.sentBy(newID) {
				if slices.ContainsFunc(held, func(j *cpb.Job) bool { return j.Id == k.job && j.Epoch == k.epoch }) {
					n++
				}
			}
			for k, c := range w.assignments() {
				if c > 2 {
					t.Errorf("worker %s got %d assignments of %v (one per leader expected)", w.id, c, k)
				}
			}
		}
		return n
	}
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if reissued() == 0 {
			return fmt.Errorf("no running epoch re-issued yet")
		}
		return nil
	})
	g.open()
	for _, id := range ids {
		js := waitState(t, nc, id, pb.JobState_JOB_STATE_SUCCEEDED, 30*time.Second)
		// Nothing needed re-planning: every job ran in its first epoch.
		if js.Epoch != 1 || js.BlocksDone != 8 {
			t.Errorf("job %s: epoch %d, %d blocks", id, js.Epoch, js.BlocksDone)
		}
	}
	t.Logf("%d shards of %d held jobs re-issued by the new leader", reissued(), len(held))
	// The killed node restarts from its data dir, rejoins and catches up.
	tc.restart(old)
	st := tc.converged()
	if st.Len() != len(ids) || st.Counts()[pb.JobState_JOB_STATE_SUCCEEDED] != len(ids) {
		t.Fatalf("converged state: %v", st.Counts())
	}
}

// TestCoordinatorConcurrentSubmitsAcrossLeaderChange: 500 clients submit
// at once, each retrying its own idempotency key until answered (and once
// more after), while the leader is killed: every key ends as exactly one
// job, and every client saw the same job id for its key.
func TestCoordinatorConcurrentSubmitsAcrossLeaderChange(t *testing.T) {
	const jobs = 500
	tc := newCluster(t, 3, nil)
	old := tc.leader()
	conns := []*transport.Conn{connect(t, tc.url), connect(t, tc.url), connect(t, tc.url), connect(t, tc.url)}
	var (
		okCount  atomic.Int32
		retries  atomic.Int32
		mu       sync.Mutex
		idsByKey = map[string]string{}
		wg       sync.WaitGroup
		killed   = make(chan time.Time, 1)
	)
	submitOnce := func(nc *transport.Conn, spec *pb.JobSpec) (*pb.SubmitReply, error) {
		for attempt := 0; ; attempt++ {
			r := &pb.SubmitReply{}
			err := api(nc, EndpointSubmit, &pb.SubmitRequest{Spec: spec}, r, 2*time.Second)
			if !retryable(err, r.Error) {
				if r.Error != nil {
					return nil, fmt.Errorf("%v", r.Error)
				}
				return r, nil
			}
			if attempt > 2000 {
				return nil, fmt.Errorf("gave up: %v %v", err, r.Error)
			}
			retries.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	}
	errs := make(chan error, 2*jobs)
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc := conns[i%len(conns)]
			spec := attnSpec(fmt.Sprintf("k-%03d", i), 128)
			r1, err := submitOnce(nc, spec)
			if err != nil {
				errs <- err
				return
			}
			okCount.Add(1)
			// The client did not trust the reply and retries the same key.
			r2, err := submitOnce(nc, spec)
			if err != nil {
				errs <- err
				return
			}
			if r2.Job.Id != r1.Job.Id || !r2.Existing {
				errs <- fmt.Errorf("key %s: first %s, retry %s (existing=%v)", spec.IdempotencyKey, r1.Job.Id, r2.Job.Id, r2.Existing)
			}
			mu.Lock()
			idsByKey[spec.IdempotencyKey] = r1.Job.Id
			mu.Unlock()
		}()
	}
	// Kill the leader a third of the way through.
	checkFor(t, 30*time.Second, time.Millisecond, func() error {
		if okCount.Load() < jobs/3 {
			return fmt.Errorf("%d submitted", okCount.Load())
		}
		return nil
	})
	killedAt := time.Now()
	tc.kill(old)
	killed <- killedAt
	failover := measureFailover(t, conns[0], tc.cfgs[old].NodeID, killedAt)
	t.Logf("leader failover (kill -> new leader answering the API, 50 ms raft timeouts): %v", failover)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	t.Logf("%d jobs submitted twice each by 500 clients; %d retries across the leader change", jobs, retries.Load())

	l := apiRetry(t, conns[0], EndpointList, &pb.ListRequest{Limit: 2 * jobs}, func() *pb.ListReply { return &pb.ListReply{} })
	if l.Total != jobs || len(l.Jobs) != jobs {
		t.Fatalf("list: %d jobs (total %d), want %d", len(l.Jobs), l.Total, jobs)
	}
	seen := map[string]bool{}
	for _, js := range l.Jobs {
		key := js.Spec.GetIdempotencyKey()
		if seen[key] {
			t.Fatalf("key %s has two jobs", key)
		}
		seen[key] = true
		if idsByKey[key] != js.Id {
			t.Fatalf("key %s: clients got %s, state has %s", key, idsByKey[key], js.Id)
		}
	}
	tc.restart(old)
	if st := tc.converged(); st.Len() != jobs {
		t.Fatalf("converged state has %d jobs", st.Len())
	}
}

// measureFailover polls the cluster endpoint until a leader other than
// `old` answers, and returns the time since the kill.
func measureFailover(t testing.TB, nc *transport.Conn, old string, killedAt time.Time) time.Duration {
	t.Helper()
	var d time.Duration
	checkFor(t, 30*time.Second, time.Millisecond, func() error {
		r := &pb.ClusterReply{}
		if err := api(nc, EndpointCluster, &pb.ClusterRequest{}, r, 200*time.Millisecond); err != nil {
			return err
		}
		if r.LeaderId == "" || r.LeaderId == old {
			return fmt.Errorf("leader %q", r.LeaderId)
		}
		d = time.Since(killedAt)
		return nil
	})
	return d
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// TestCoordinatorFailoverDefaults measures failover with the default
// settings over the real TCP Raft transport: kill the leader (a crash, no
// handoff) and time until a new leader answers the client API; then restart
// the killed node from its data dir and stop the new leader gracefully
// (leadership transfer), timing that too. Logged, not asserted (DESIGN §8).
func TestCoordinatorFailoverDefaults(t *testing.T) {
	url := startNATS(t)
	var peers []Peer
	for i := range 3 {
		peers = append(peers, Peer{ID: fmt.Sprintf("c%d", i), Addr: freeAddr(t)})
	}
	cfgs := make([]Config, 3)
	nodes := make([]*Coordinator, 3)
	start := func(i int) {
		c, err := New(cfgs[i], Deps{Logger: xlog.Test(t).With("test_node", cfgs[i].NodeID), Registerer: prometheus.NewRegistry()})
		noErr(t, err)
		nodes[i] = c
		t.Cleanup(func() { _ = c.Close() })
	}
	for i := range 3 {
		cfg := DefaultConfig()
		cfg.NodeID, cfg.RaftAddr, cfg.Peers = peers[i].ID, peers[i].Addr, peers
		cfg.DataDir, cfg.HTTPAddr = t.TempDir(), ""
		cfg.NATS.URLs = []string{url}
		cfgs[i] = cfg
		start(i)
	}
	nc := connect(t, url)
	serving := func(skip int) int {
		idx := -1
		checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
			for i, c := range nodes {
				if i != skip && c.Serving() {
					idx = i
					return nil
				}
			}
			return fmt.Errorf("no leader")
		})
		return idx
	}
	old := serving(-1)
	submit(t, nc, attnSpec("tcp", 256))
	killedAt := time.Now()
	noErr(t, nodes[old].crash())
	d := measureFailover(t, nc, peers[old].ID, killedAt)
	t.Logf("leader failover after a crash, default settings (TCP raft, 1 s heartbeat/election timeouts): %v", d)
	next := serving(old)
	for i, c := range nodes {
		if i == old {
			continue
		}
		checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if n := c.State().Len(); n != 1 {
				return fmt.Errorf("node %d has %d jobs", i, n)
			}
			return nil
		})
	}
	// The crashed node rejoins from its data dir over TCP.
	start(old)
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if nodes[old].State().Len() != 1 || nodes[old].AppliedIndex() != nodes[next].AppliedIndex() {
			return fmt.Errorf("restarted node at index %d, leader at %d", nodes[old].AppliedIndex(), nodes[next].AppliedIndex())
		}
		return nil
	})
	stoppedAt := time.Now()
	noErr(t, nodes[next].Close())
	d = measureFailover(t, nc, peers[next].ID, stoppedAt)
	t.Logf("leader handoff on a graceful stop (leadership transfer), default settings: %v", d)
}

// TestCoordinatorBootstrapSnapshotRestart: a single node (--bootstrap) on
// TCP snapshots, restarts from its data dir (restoring the snapshot and
// replaying the log tail) and holds the same state.
func TestCoordinatorBootstrapSnapshotRestart(t *testing.T) {
	url := startNATS(t)
	cfg := DefaultConfig()
	cfg.NodeID, cfg.RaftAddr, cfg.Bootstrap = "solo", freeAddr(t), true
	cfg.DataDir, cfg.HTTPAddr = t.TempDir(), ""
	cfg.NATS.URLs = []string{url}
	open := func() *Coordinator {
		c, err := New(cfg, Deps{Logger: xlog.Test(t), Registerer: prometheus.NewRegistry()})
		noErr(t, err)
		return c
	}
	c := open()
	nc := connect(t, url)
	var ids []string
	for i := range 5 {
		ids = append(ids, submit(t, nc, attnSpec(fmt.Sprintf("s-%d", i), 256)).Job.Id)
		if i == 2 {
			noErr(t, c.Snapshot())
		}
	}
	before := c.State()
	noErr(t, c.Close())
	cfg.Bootstrap = false // the data dir is enough
	c = open()
	defer c.Close()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !c.Serving() {
			return fmt.Errorf("not serving")
		}
		if !c.State().Equal(before) {
			return fmt.Errorf("state differs: %d jobs", c.State().Len())
		}
		return nil
	})
	got := []string{}
	for _, j := range c.State().Jobs(nil) {
		got = append(got, j.Id)
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("jobs after restart %v, want %v", got, ids)
	}
}
