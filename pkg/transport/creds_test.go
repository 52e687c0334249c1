package transport_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func TestTransportEnsureNKeySeed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w.nk")
	pub, err := transport.EnsureNKeySeed(path)
	must(t, err)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("seed file mode %v, %v: want 0600", st.Mode().Perm(), err)
	}
	again, err := transport.EnsureNKeySeed(path)
	must(t, err)
	if again != pub {
		t.Errorf("second call: key %s, want the same %s", again, pub)
	}
	// The seed file authenticates (nats.go reads it as written).
	e := transporttest.RunServerWith(t, transport.EmbeddedConfig{NKeyUsers: []string{pub}})
	cfg := transporttest.Config(e)
	cfg.NKeySeedFile = path
	nc, err := transport.Connect(cfg, nil)
	must(t, err)
	nc.Close()

	must(t, os.Chmod(path, 0o644))
	if _, err := transport.EnsureNKeySeed(path); !errors.Is(err, transport.ErrInvalidConfig) {
		t.Errorf("a seed readable by others: %v, want ErrInvalidConfig", err)
	} else {
		t.Log(err)
	}
	acct, err := nkeys.CreateAccount()
	must(t, err)
	aseed, err := acct.Seed()
	must(t, err)
	for name, data := range map[string][]byte{"garbage": []byte("not a seed"), "account": aseed} {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, data, 0o600))
		if _, err := transport.EnsureNKeySeed(p); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Errorf("%s seed: %v, want ErrInvalidConfig", name, err)
		} else {
			t.Log(err)
		}
	}
	if _, err := transport.EnsureNKeySeed(filepath.Join(dir, "missing", "x.nk")); err == nil {
		t.Error("a seed in a missing directory was created")
	}
}
