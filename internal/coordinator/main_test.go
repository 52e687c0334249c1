package coordinator

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// coordinator, leader session, handler and worker helper must stop. The
// one exception is hashicorp/raft's NetworkTransport: Close does not close
// the pooled outbound connections, so the peer's inbound handler (in this
// same test process) blocks reading until process exit.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"))
}
