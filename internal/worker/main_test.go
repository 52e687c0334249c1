package worker

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them. The
// one ignored is nats.go's: jetstream parks a goroutine per JetStream
// context on a nil channel once its connection has closed (nats.go
// v1.55.0 jetstream/publish.go resetPendingAcksOnReconnect).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}
