package coordinator

import (
	"errors"
	"strings"
	"testing"
)

// TestCoordinatorConfigRaftTLS: Raft mutual TLS takes all three files or
// none; one or two of them is a configuration error naming the flags.
func TestCoordinatorConfigRaftTLS(t *testing.T) {
	good := DefaultConfig()
	good.NodeID = "n1"
	for _, set := range [][3]string{{}, {"ca", "cert", "key"}} {
		c := good
		c.RaftTLSCA, c.RaftTLSCert, c.RaftTLSKey = set[0], set[1], set[2]
		if err := c.Validate(); err != nil {
			t.Errorf("Raft TLS files %q: Validate = %v, want nil", set, err)
		}
	}
	for _, set := range [][3]string{{"ca", "", ""}, {"", "cert", ""}, {"", "", "key"}, {"ca", "cert", ""}, {"", "cert", "key"}} {
		c := good
		c.RaftTLSCA, c.RaftTLSCert, c.RaftTLSKey = set[0], set[1], set[2]
		err := c.Validate()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "--raft-tls-ca") {
			t.Errorf("Raft TLS files %q: Validate = %v, want ErrInvalid naming the flags", set, err)
		}
	}
}
