package validate

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// natsUser is one NATS user of the base as its programs connect: the
// reply inbox its role's permissions allow (transport.Subjects.Inbox,
// which the binaries set with nats.CustomInboxPrefix) and the tensor
// bucket it uses.
type natsUser struct {
	name, inbox, bucket string
}

// workerPod is the worker id (pod name) the probes connect as.
const workerPod = "ringattn-worker-7d9f8b6c5d-x2x4q"

var natsUsers = []natsUser{
	{"coordinator", "_INBOX.ringattn._coord", "ringattn"},
	{"worker", "_INBOX.ringattn._worker." + workerPod, "ringattn"},
	{"client", "_INBOX.ringattn.default", "ringattn"},
	{"admin", "_INBOX.ringattn._admin", "ringattn"},
	{"team-a", "_INBOX.ringattn.team-a", "ringattn-team-a"},
}

func userByName(t *testing.T, name string) natsUser {
	t.Helper()
	for _, u := range natsUsers {
		if u.name == name {
			return u
		}
	}
	t.Fatalf("no NATS user %q", name)
	return natsUser{}
}

// natsLogin is a connection as one user that records the permission
// violations the server reports to it.
type natsLogin struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []error
}

// login connects to s as user with the password the pods get from the
// Secret, with the user's inbox prefix.
func login(t *testing.T, inv *Inventory, s *server.Server, user natsUser) *natsLogin {
	t.Helper()
	pw, ok := secretsOf(inv)("ringattn-nats-auth", user.name+"-password")
	if !ok {
		t.Fatalf("no %s-password", user.name)
	}
	l := &natsLogin{}
	nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(user.name, pw), nats.Timeout(5*time.Second),
		nats.RootCAs(natsCAFile(t, inv)), nats.CustomInboxPrefix(user.inbox),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			l.mu.Lock()
			l.errs = append(l.errs, err)
			l.mu.Unlock()
		}))
	if err != nil {
		t.Fatalf("user %s: %v", user.name, err)
	}
	t.Cleanup(nc.Close)
	l.nc = nc
	return l
}

// violations returns the permission violations reported so far.
func (l *natsLogin) violations() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// violated returns the permission violation naming subject reported so
// far, or nil.
func (l *natsLogin) violated(subject string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, err := range l.errs {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
			return err
		}
	}
	return nil
}

// TestManifestsNATSAuthAndJetStream runs nats-server on each overlay's
// rendered configuration and logs in as every user with the password the
// pods get from the Secret and the inbox its role allows: each must
// connect, reach JetStream in the RINGATTN account (an answer from the
// JetStream API, through the calls its permissions allow), and get the
// 8 MiB max_payload; a wrong password must be refused.
func TestManifestsNATSAuthAndJetStream(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			inv := load(t, ov)
			s := startNATS(t, inv)
			for _, user := range natsUsers {
				l := login(t, inv, s, user)
				if got := l.nc.MaxPayload(); got != 8<<20 {
					t.Errorf("user %s: max payload %d, want 8 MiB", user.name, got)
				}
				js, err := l.nc.JetStream(nats.MaxWait(3 * time.Second))
				if err != nil {
					t.Fatal(err)
				}
				// Its own bucket's stream does not exist yet: JetStream
				// answers so (a refused or unanswered request times out).
				if _, err := js.StreamInfo("OBJ_" + user.bucket); !errors.Is(err, nats.ErrStreamNotFound) {
					t.Errorf("user %s: stream info of its bucket: %v, want JetStream's stream not found", user.name, err)
				}
				if errs := l.violations(); len(errs) > 0 {
					t.Errorf("user %s: permission violations on its own calls: %v", user.name, errs)
				}
				l.nc.Close()
			}
			_, err := nats.Connect(s.ClientURL(), nats.UserInfo("worker", "wrong"), nats.Timeout(5*time.Second), nats.RootCAs(natsCAFile(t, inv)))
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Errorf("wrong password: err = %v, want an authorization error", err)
			}
		})
	}
}
