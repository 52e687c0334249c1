package transport_test

import (
	"context"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestTransportFindAPIInstance: the metadata an API instance serves with
// is found by a matching predicate, and nothing is found (after the wait)
// when no instance matches.
func TestTransportFindAPIInstance(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	for _, node := range []string{"n1", "n2"} {
		stop, err := srv.ServeAPI(transport.APIHandlers{
			Cluster: func(context.Context, *pb.ClusterRequest) (*pb.ClusterReply, error) { return &pb.ClusterReply{}, nil },
		}, transport.APIConfig{Metadata: map[string]string{"node": node, "http": "http://" + node}})
		stopAt(t, stop, err)
	}
	must(t, srv.Flush(ctx))
	meta, ok := cli.FindAPIInstance(2*time.Second, func(m map[string]string) bool { return m["node"] == "n2" })
	if !ok || meta["http"] != "http://n2" {
		t.Fatalf("FindAPIInstance(n2) = %v, %v", meta, ok)
	}
	start := time.Now()
	if meta, ok := cli.FindAPIInstance(200*time.Millisecond, func(m map[string]string) bool { return m["node"] == "n3" }); ok {
		t.Fatalf("FindAPIInstance(n3) = %v, want none", meta)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("gave up after %v, before the wait", d)
	}
}
