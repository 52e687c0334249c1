package kernels_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// TestKernelEnvForcesImpl runs this test binary again with RINGATTN_KERNEL
// set and checks the implementation chosen at init.
func TestKernelEnvForcesImpl(t *testing.T) {
	if os.Getenv("KERNELS_TEST_CHILD") == "1" {
		fmt.Printf("impl=%s\n", kernels.Impl())
		return
	}
	for _, name := range append(kernels.Impls(), "no-such-kernel") {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKernelEnvForcesImpl$", "-test.count=1")
		cmd.Env = append(os.Environ(), "KERNELS_TEST_CHILD=1", kernels.EnvKernel+"="+name)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s=%s: %v\n%s", kernels.EnvKernel, name, err, out)
		}
		want := name
		if name == "no-such-kernel" {
			want = kernels.Impls()[len(kernels.Impls())-1] // the default stays
		}
		if !strings.Contains(string(out), "impl="+want+"\n") {
			t.Fatalf("%s=%s: child chose %q, want %s", kernels.EnvKernel, name, out, want)
		}
	}
}
