package transport_test

import (
	"context"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func TestTransportCallerOf(t *testing.T) {
	if got := transport.CallerOf(context.Background()); got != (transport.Caller{Tenant: "default", Admin: true}) {
		t.Errorf("CallerOf(no caller) = %+v, want the default tenant as admin", got)
	}
	want := transport.Caller{Tenant: "alice"}
	if got := transport.CallerOf(transport.WithCaller(context.Background(), want)); got != want {
		t.Errorf("CallerOf(WithCaller(%+v)) = %+v", want, got)
	}
}

func TestTransportAPICallerAuthOff(t *testing.T) {
	srv, cli, _ := controlPair(t)
	ctx := ctxT(t, 10*time.Second)
	seen := make(chan transport.Caller, 1)
	stop, err := srv.ServeAPI(transport.APIHandlers{
		Cluster: func(ctx context.Context, _ *pb.ClusterRequest) (*pb.ClusterReply, error) {
			seen <- transport.CallerOf(ctx)
			return &pb.ClusterReply{}, nil
		},
	}, transport.APIConfig{})
	stopAt(t, stop, err)
	must(t, srv.Flush(ctx))
	if _, err := transport.NewAPIClient(cli).Cluster(ctx, &pb.ClusterRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := <-seen; got != (transport.Caller{Tenant: "default", Admin: true}) {
		t.Errorf("caller with auth off = %+v, want the default tenant as admin", got)
	}
}
