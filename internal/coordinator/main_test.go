package coordinator

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// coordinator, leader session, handler and worker helper must stop. Two
// exceptions: hashicorp/raft's NetworkTransport (Close does not close the
// pooled outbound connections, so the peer's inbound handler in this same
// test process blocks reading until process exit), and nats.go's
// jetstream, which parks a goroutine per JetStream context on a nil channel
// once its connection has closed (nats.go v1.55.0 jetstream/publish.go
// resetPendingAcksOnReconnect); the store the leader checks outputs with
// and the test workers' stores are such contexts.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}
