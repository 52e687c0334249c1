// Command genk8s writes the NATS permissions of the Kubernetes base,
// permissions.conf, from pkg/transport's roles and the tenants file beside
// it (authkeys.K8sPermissionsConf). With -check it writes nothing and
// fails if the file is stale. Run by `go generate ./internal/authkeys`
// and deploy/k8s/check.sh.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ringattn/ringattn/internal/authkeys"
)

func main() {
	dir := flag.String("dir", "deploy/k8s/base/nats", "`directory` of the tenants file and permissions.conf")
	check := flag.Bool("check", false, "fail if permissions.conf is not what would be generated; write nothing")
	flag.Parse()
	if err := run(*dir, *check); err != nil {
		fmt.Fprintln(os.Stderr, "genk8s:", err)
		os.Exit(1)
	}
}

func run(dir string, check bool) error {
	b, err := os.ReadFile(filepath.Join(dir, "tenants"))
	if err != nil {
		return err
	}
	tenants, err := authkeys.ParseTenants(b)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, "tenants"), err)
	}
	conf, err := authkeys.K8sPermissionsConf(tenants)
	if err != nil {
		return err
	}
	out := filepath.Join(dir, "permissions.conf")
	if check {
		have, err := os.ReadFile(out)
		if err != nil {
			return err
		}
		if !bytes.Equal(have, []byte(conf)) {
			return fmt.Errorf("%s is stale: run go generate ./internal/authkeys", out)
		}
		return nil
	}
	return os.WriteFile(out, []byte(conf), 0o644)
}
