package localcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModulePath is the Go module whose binaries Build builds.
const ModulePath = "github.com/ringattn/ringattn"

// natsServerPkg is the nats-server main package, built from the module's
// own dependency (no separate download).
const natsServerPkg = "github.com/nats-io/nats-server/v2"

// Binary names, as built by Build and looked for by FindBinaries.
const (
	CoordinatorBinary = "coordinator"
	WorkerBinary      = "worker"
	NATSServerBinary  = "nats-server"
)

// Binaries are the paths of the executables a cluster runs.
type Binaries struct {
	Coordinator string
	Worker      string
	NATSServer  string
}

// Validate checks that every binary is an executable file.
func (b Binaries) Validate() error {
	for _, f := range []struct{ field, path string }{
		{"Coordinator", b.Coordinator}, {"Worker", b.Worker}, {"NATSServer", b.NATSServer},
	} {
		if f.path == "" {
			return fmt.Errorf("%w: Binaries.%s is empty", ErrBinaryNotFound, f.field)
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("%w: Binaries.%s: %v", ErrBinaryNotFound, f.field, err)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%w: Binaries.%s = %q is not an executable file", ErrBinaryNotFound, f.field, f.path)
		}
	}
	return nil
}

// ModuleRoot returns the root of the ringattn source checkout holding dir:
// the nearest directory at or above dir whose go.mod declares ModulePath.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if isModuleRoot(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w: no go.mod of %s at or above the directory", ErrBinaryNotFound, ModulePath)
		}
		dir = parent
	}
}

func isModuleRoot(gomod string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == ModulePath
		}
	}
	return false
}

// Build compiles the coordinator, worker and nats-server binaries of the
// checkout at root into outDir with `go build` and returns their paths.
// The go command's build cache makes repeated builds cheap.
func Build(ctx context.Context, root, outDir string) (Binaries, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Binaries{}, err
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return Binaries{}, fmt.Errorf("%w: the go command is not in $PATH: %v", ErrBuild, err)
	}
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", outDir+string(filepath.Separator),
		"./cmd/"+CoordinatorBinary, "./cmd/"+WorkerBinary, natsServerPkg)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Binaries{}, fmt.Errorf("%w: go build in %s: %v\n%s", ErrBuild, root, err, out)
	}
	b := Binaries{
		Coordinator: filepath.Join(outDir, CoordinatorBinary),
		Worker:      filepath.Join(outDir, WorkerBinary),
		NATSServer:  filepath.Join(outDir, NATSServerBinary),
	}
	return b, b.Validate()
}

// FindBinaries looks for coordinator, worker and nats-server next to the
// running executable, then in $PATH.
func FindBinaries() (Binaries, error) {
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			dirs = append(dirs, filepath.Dir(exe))
		}
	}
	find := func(name string) (string, error) {
		for _, d := range dirs {
			p := filepath.Join(d, name)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p, nil
			}
		}
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%w: %s is neither next to this executable (%s) nor in $PATH",
				ErrBinaryNotFound, name, strings.Join(dirs, ", "))
		}
		return p, nil
	}
	var b Binaries
	var errs []error
	var err error
	if b.Coordinator, err = find(CoordinatorBinary); err != nil {
		errs = append(errs, err)
	}
	if b.Worker, err = find(WorkerBinary); err != nil {
		errs = append(errs, err)
	}
	if b.NATSServer, err = find(NATSServerBinary); err != nil {
		errs = append(errs, err)
	}
	return b, errors.Join(errs...)
}

// BinFlagUsage is the help of the --bin flag of the commands that start a
// local cluster (`ringattn cluster`, `ringattn bench rss|recovery|load`):
// its value is Locate's binDir.
const BinFlagUsage = "`directory` holding the coordinator, worker and nats-server binaries (default: build from the source checkout, else look next to this executable and in $PATH)"

// Locate finds the binaries for a user-facing cluster, in this order:
//  1. binDir, when set: binDir/coordinator, binDir/worker, binDir/nats-server;
//  2. when the working directory is inside a ringattn source checkout and
//     the go command is installed: `go build` them from the checkout into
//     buildDir (cheap after the first time: the go build cache);
//  3. FindBinaries: next to the running executable, then $PATH.
//
// It returns the binaries and a phrase saying where they came from.
func Locate(ctx context.Context, binDir, buildDir string) (Binaries, string, error) {
	if binDir != "" {
		b := Binaries{
			Coordinator: filepath.Join(binDir, CoordinatorBinary),
			Worker:      filepath.Join(binDir, WorkerBinary),
			NATSServer:  filepath.Join(binDir, NATSServerBinary),
		}
		return b, "from " + binDir, b.Validate()
	}
	if root, err := ModuleRoot("."); err == nil {
		if _, err := exec.LookPath("go"); err == nil {
			b, err := Build(ctx, root, buildDir)
			return b, "built from the checkout " + root + " into " + buildDir, err
		}
	}
	b, err := FindBinaries()
	if err != nil {
		return b, "", fmt.Errorf("%w (run from a source checkout to build them, or install them: "+
			"go install %s/cmd/coordinator@latest %s/cmd/worker@latest %s@latest)", err, ModulePath, ModulePath, natsServerPkg)
	}
	return b, "found next to this executable or in $PATH", nil
}
