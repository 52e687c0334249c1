package transport

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/nats-io/nkeys"
)

// EnsureNKeySeed returns the public key of the user nkey whose seed is in
// the file at path, creating the key and the file (mode 0600) when the
// file does not exist. An existing file must hold a user seed (SU...) and
// be readable by its owner only.
func EnsureNKeySeed(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return "", err
		}
		seed, err := kp.Seed()
		if err != nil {
			return "", err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", fmt.Errorf("transport: nkey seed %s: %w", path, err)
		}
		_, werr := f.Write(append(seed, '\n'))
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			os.Remove(path)
			return "", fmt.Errorf("transport: nkey seed %s: %w", path, werr)
		}
		return kp.PublicKey()
	}
	if err != nil {
		return "", fmt.Errorf("transport: nkey seed %s: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("transport: nkey seed %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", invalid("nkey seed %s has mode %v: want 0600 (readable by its owner only)", path, st.Mode().Perm())
	}
	kp, err := nkeys.FromSeed(bytes.TrimSpace(data))
	if err != nil {
		return "", invalid("nkey seed %s: %v: want a user seed (SU...)", path, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return "", invalid("nkey seed %s: not a user key: want a user seed (SU...)", path)
	}
	return pub, nil
}
