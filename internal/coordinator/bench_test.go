package coordinator

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// BenchmarkCoordinatorTinyJob is the control plane's latency: one tiny job
// (one block) from submit to SUCCEEDED on a 3-node cluster (in-memory raft)
// with two workers that "compute" instantly: submit, plan, assignment,
// report, success, each a Raft commit or a NATS round trip.
func BenchmarkCoordinatorTinyJob(b *testing.B) {
	tc := newCluster(b, 3, nil)
	nc := connect(b, tc.url)
	tc.leader()
	newTestWorker(b, tc.url, "w0", 10, 0)
	newTestWorker(b, tc.url, "w1", 10, 0)
	waitWorkers(b, nc, 2)
	b.ResetTimer()
	for i := range b.N {
		r := submit(b, nc, attnSpec(fmt.Sprintf("tiny-%d", i), 64))
		for {
			g := &pb.GetReply{}
			if err := api(nc, EndpointGet, &pb.GetRequest{JobId: r.Job.Id}, g, time.Second); err == nil && g.Job.GetState() == pb.JobState_JOB_STATE_SUCCEEDED {
				break
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
}

// BenchmarkCoordinatorSubmit is submit throughput: concurrent clients, each
// submit one Raft commit on a 3-node cluster (in-memory raft).
func BenchmarkCoordinatorSubmit(b *testing.B) {
	tc := newCluster(b, 3, func(c *Config) { c.Limits.MaxQueued = 1 << 30 })
	nc := connect(b, tc.url)
	tc.leader()
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb_ *testing.PB) {
		for pb_.Next() {
			submit(b, nc, attnSpec(fmt.Sprintf("s-%d", n.Add(1)), 64))
		}
	})
}
