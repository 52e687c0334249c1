package coordinator

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// events collects the job events the leader publishes.
func events(t *testing.T, nc *transport.Conn) func() []*pb.JobEvent {
	var mu sync.Mutex
	var evs []*pb.JobEvent
	stop, err := nc.OnEvents("", transport.ServeConfig{}, func(ev *pb.JobEvent) {
		mu.Lock()
		evs = append(evs, ev)
		mu.Unlock()
	})
	noErr(t, err)
	flush(t, nc)
	t.Cleanup(func() { _ = stop() })
	return func() []*pb.JobEvent {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(evs)
	}
}

func TestCoordinatorJobLifecycle(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	nc := connect(t, tc.url)
	evs := events(t, nc)
	tc.leader()
	newTestWorker(t, tc.url, "wa", 10, 20*time.Millisecond)
	newTestWorker(t, tc.url, "wb", 30, 20*time.Millisecond)
	waitWorkers(t, nc, 2)

	r := submit(t, nc, attnSpec("life", 1000))
	if r.Existing || r.Job.State != pb.JobState_JOB_STATE_QUEUED || r.Job.BlocksTotal != 16 {
		t.Fatalf("submit reply = %v", r)
	}
	js := waitState(t, nc, r.Job.Id, pb.JobState_JOB_STATE_SUCCEEDED, 10*time.Second)
	if js.BlocksDone != 16 || js.Epoch != 1 || len(js.Workers) != 2 || js.Workers[0] != "wb" ||
		!slices.Equal(js.Outputs, []string{"o"}) || js.OutputRef != js.Id || js.ExpiresUnixMs <= js.FinishedUnixMs {
		t.Fatalf("finished job = %v", js)
	}
	// A retry of the submit returns the same, finished job.
	if r2 := submit(t, nc, attnSpec("life", 1000)); !r2.Existing || r2.Job.Id != r.Job.Id || r2.Job.State != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("retried submit = %v", r2)
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		var types []pb.JobEventType
		for _, ev := range evs() {
			// PROGRESS events depend on heartbeat timing
			// (TestCoordinatorProgressEvents checks them).
			if ev.JobId == r.Job.Id && ev.Type != pb.JobEventType_JOB_EVENT_TYPE_PROGRESS {
				types = append(types, ev.Type)
			}
		}
		want := []pb.JobEventType{pb.JobEventType_JOB_EVENT_TYPE_EPOCH_STARTED, pb.JobEventType_JOB_EVENT_TYPE_SHARD_DONE,
			pb.JobEventType_JOB_EVENT_TYPE_SHARD_DONE, pb.JobEventType_JOB_EVENT_TYPE_FINISHED}
		if !slices.Equal(types, want) {
			return fmt.Errorf("events %v, want %v", types, want)
		}
		return nil
	})

	// Ops endpoints.
	base := "http://" + tc.nodes[0].HTTPAddr()
	for path, want := range map[string]string{
		"/healthz":              "ok",
		"/readyz":               "leader c0",
		"/v1/jobs/" + r.Job.Id:  `"state":"succeeded"`,
		"/v1/jobs?state=queued": `"total":0`,
		"/v1/cluster":           `"leader_id":"c0"`,
		"/metrics":              `ringattn_jobs{state="succeeded"} 1`,
	} {
		resp, err := http.Get(base + path)
		noErr(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %d %s, want %q", path, resp.StatusCode, body, want)
		}
	}
	for _, path := range []string{"/v1/jobs/nope", "/v1/jobs?state=bogus", "/v1/jobs?limit=-1"} {
		resp, err := http.Get(base + path)
		noErr(t, err)
		resp.Body.Close()
		if resp.StatusCode != 404 && resp.StatusCode != 400 {
			t.Errorf("GET %s = %d, want 4xx", path, resp.StatusCode)
		}
	}
	// Cluster over the API: the workers and the peer.
	cr := apiRetry(t, nc, EndpointCluster, &pb.ClusterRequest{}, func() *pb.ClusterReply { return &pb.ClusterReply{} })
	if cr.LeaderId != "c0" || len(cr.Peers) != 1 || !cr.Peers[0].Leader || len(cr.Workers) != 2 || cr.JobsByState["succeeded"] != 1 {
		t.Fatalf("cluster = %v", cr)
	}
}
