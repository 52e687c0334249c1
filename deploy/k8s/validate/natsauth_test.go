package validate

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestManifestsNATSAuthAndJetStream runs nats-server on each overlay's
// rendered configuration and logs in as every user with the password the
// pods get from the Secret: each must connect, see JetStream in the
// RINGATTN account, and get the 8 MiB max_payload; a wrong password must be
// refused.
func TestManifestsNATSAuthAndJetStream(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			s := startNATS(t, inv)
			secrets := secretsOf(inv)
			ca := nats.RootCAs(natsCAFile(t, inv))
			for _, user := range []string{"coordinator", "worker", "client"} {
				pw, ok := secrets("ringattn-nats-auth", user+"-password")
				if !ok {
					t.Fatalf("no %s-password", user)
				}
				nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user, pw), nats.Timeout(5*time.Second), ca)
				if err != nil {
					t.Fatalf("user %s: %v", user, err)
				}
				if got := nc.MaxPayload(); got != 8<<20 {
					t.Errorf("user %s: max payload %d, want 8 MiB", user, got)
				}
				js, err := nc.JetStream()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := js.AccountInfo(); err != nil {
					t.Errorf("user %s: JetStream not available in its account: %v", user, err)
				}
				nc.Close()
			}
			_, err := nats.Connect(s.ClientURL(), nats.UserInfo("worker", "wrong"), nats.Timeout(5*time.Second), ca)
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("wrong password: err = %v, want an authorization error", err)
			}
		})
	}
}
