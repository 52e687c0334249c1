package validate

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// dockerfile is what the manifests rely on from the top-level Dockerfile.
type dockerfile struct {
	binaries map[string]bool // absolute paths copied into the final stage
	uid      int64           // the final stage's USER
	packages []string        // ./cmd/... packages the build stage builds
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	d := dockerfile{binaries: map[string]bool{}, uid: -1}
	final := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			final = !strings.Contains(strings.ToUpper(line), " AS ")
		case "COPY":
			if final {
				d.binaries[f[len(f)-1]] = true
			}
		case "USER":
			if final {
				uid, _, _ := strings.Cut(f[1], ":")
				d.uid, _ = strconv.ParseInt(uid, 10, 64)
			}
		}
		for _, w := range f {
			if strings.HasPrefix(w, "./cmd/") {
				d.packages = append(d.packages, w)
			}
		}
	}
	return d
}

// TestManifestsCommandsAreInTheImage: every ringattn container's command is
// a binary the Dockerfile installs, built from a cmd/ package that exists,
// and the pods run as the image's non-root user.
func TestManifestsCommandsAreInTheImage(t *testing.T) {
	d := readDockerfile(t)
	if d.uid <= 0 {
		t.Fatalf("Dockerfile final stage: USER %d, want a non-root uid", d.uid)
	}
	for _, pkg := range []string{"./cmd/coordinator", "./cmd/worker", "./cmd/ringattn"} {
		found := false
		for _, p := range d.packages {
			found = found || p == pkg
		}
		if !found {
			t.Errorf("Dockerfile does not build %s", pkg)
		}
	}
	for _, ov := range overlays {
		inv := load(t, ov)
		for _, w := range inv.Workloads() {
			for _, c := range w.Template.Spec.Containers {
				if !strings.Contains(c.Image, "ringattn") {
					continue
				}
				if len(c.Command) == 0 || !d.binaries[c.Command[0]] {
					t.Errorf("%s %s: command %v is not a binary the Dockerfile installs %v", ov.name, w.Obj.ID(), c.Command, d.binaries)
				}
				psc := w.Template.Spec.SecurityContext
				if psc.RunAsUser == nil || *psc.RunAsUser != d.uid {
					t.Errorf("%s %s: runAsUser %v, want the image's USER %d", ov.name, w.Obj.ID(), psc.RunAsUser, d.uid)
				}
			}
		}
	}
}
