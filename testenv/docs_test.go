//go:build unix

package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/localcluster"
)

// The docs test runs every shell block of the README and the quickstart as
// written, in a fresh clone of the committed code, and fails when a
// command fails. Conventions of those blocks:
//
//   - A block is ```sh (or bash, shell). An HTML comment
//     <!-- docs-test: skip (reason) --> right before a block keeps it from
//     being run (cloning from GitHub, `go test ./...`, whose run would
//     recurse into this test, and heavy make targets).
//   - The blocks of one document run in order in one bash process with
//     `set -euo pipefail`, so variables (JOB=$(...)) and the working
//     directory carry from block to block.
//   - A command ending in `&` starts a server in the background; the
//     document's own commands stop it, and whatever still runs when the
//     document ends is killed with its process group.
//   - The documents use loopback ports 14222-14223, 17401-17403, 18480-18484;
//     they must be free.
var docsFiles = []string{"README.md", "docs/QUICKSTART.md"}

// docsPorts are the loopback ports the documents' servers listen on.
var docsPorts = []int{14222, 14223, 17401, 17402, 17403, 18480, 18481, 18482, 18483, 18484}

// docsTimeout bounds one document's run.
const docsTimeout = 4 * time.Minute

// shellBlock is one runnable block of a document.
type shellBlock struct {
	line int // of the opening fence, 1-based
	text string
}

var (
	fenceRE = regexp.MustCompile("(?m)^```(sh|bash|shell)[ \t]*\n")
	skipRE  = regexp.MustCompile(`<!--\s*docs-test:\s*skip\b[^>]*-->\s*$`)
	// goTestAllRE finds `go test ./...`, which must be marked skip.
	goTestAllRE = regexp.MustCompile(`(?m)^\s*go test\b[^\n#]*\./\.\.\.`)
)

// shellBlocks returns the runnable shell blocks of a Markdown document and
// how many were marked skip.
func shellBlocks(doc string) (blocks []shellBlock, skipped int, err error) {
	for _, loc := range fenceRE.FindAllStringIndex(doc, -1) {
		body := doc[loc[1]:]
		end := strings.Index(body, "\n```")
		if end < 0 {
			if !strings.HasPrefix(body, "```") {
				return nil, 0, fmt.Errorf("line %d: unclosed code block", strings.Count(doc[:loc[0]], "\n")+1)
			}
			end = -1
		}
		text := body[:end+1]
		line := strings.Count(doc[:loc[0]], "\n") + 1
		if skipRE.MatchString(strings.TrimRight(doc[:loc[0]], " \t\n")) {
			skipped++
			continue
		}
		if goTestAllRE.MatchString(text) {
			return nil, 0, fmt.Errorf("line %d: `go test ./...` would run this test again; mark its block <!-- docs-test: skip (reason) -->", line)
		}
		blocks = append(blocks, shellBlock{line: line, text: text})
	}
	return blocks, skipped, nil
}

// TestSystemDocsShellBlocks checks the block parser on a document with
// every convention.
func TestSystemDocsShellBlocks(t *testing.T) {
	doc := "# T\n\n```sh\necho one\n```\n\n<!-- docs-test: skip (clone) -->\n```sh\ngit clone x\n```\n\n```python\nprint(1)\n```\n\n```bash\necho two &\n```\n"
	blocks, skipped, err := shellBlocks(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || skipped != 1 || blocks[0].text != "echo one\n" || blocks[1].text != "echo two &\n" || blocks[0].line != 3 {
		t.Fatalf("blocks %+v, skipped %d", blocks, skipped)
	}
	if _, _, err := shellBlocks("```sh\ngo test ./...\n```\n"); err == nil {
		t.Fatal("an unmarked `go test ./...` was accepted")
	}
	if _, _, err := shellBlocks("```sh\necho\n"); err == nil {
		t.Fatal("an unclosed block was accepted")
	}
}

// TestSystemDocsCommands runs the README's and docs/QUICKSTART.md's shell
// blocks as written in a fresh clone (git clone of this checkout's
// committed code), each document as one script; it fails when a command
// fails or when no ringattn binary was built. The documents build bin/
// with `go build`, which the shared build cache makes quick.
func TestSystemDocsCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the docs test builds the binaries and runs clusters (about a minute)")
	}
	root, err := localcluster.ModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		t.Skipf("%s is not a git checkout, so there is no committed code to clone: %v", root, err)
	}
	// Another run's servers may still be stopping: wait a little.
	for _, p := range docsPorts {
		deadline := time.Now().Add(30 * time.Second)
		for {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err == nil {
				l.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("port %d, which the documents use, is busy (another docs test or cluster running?): %v", p, err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	clone := filepath.Join(t.TempDir(), "ringattn")
	if out, err := exec.Command("git", "clone", "--quiet", root, clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone %s: %v\n%s", root, err, out)
	}
	for _, name := range docsFiles {
		doc, err := os.ReadFile(filepath.Join(clone, name))
		if err != nil {
			t.Fatalf("%s is not committed: %v", name, err)
		}
		blocks, skipped, err := shellBlocks(string(doc))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(blocks) == 0 {
			t.Fatalf("%s has no shell block to run", name)
		}
		start := time.Now()
		runDocScript(t, clone, name, blocks)
		t.Logf("%s: %d blocks run, %d skipped, in %v", name, len(blocks), skipped, time.Since(start).Round(time.Millisecond))
	}
	if fi, err := os.Stat(filepath.Join(clone, "bin", "ringattn")); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("the documents built no bin/ringattn: %v", err)
	}
}

// runDocScript runs one document's blocks as one bash script in dir,
// tracing each command, and kills its process group at the end.
func runDocScript(t *testing.T, dir, name string, blocks []shellBlock) {
	t.Helper()
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for i, b := range blocks {
		fmt.Fprintf(&script, "echo '### %s block %d (line %d)' >&2\nset -x\n%sset +x\n", name, i+1, b.line, b.text)
	}
	ctx, cancel := context.WithTimeout(context.Background(), docsTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = dir
	cmd.Env = docsEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A file, not a pipe: Wait returns when bash exits even while a
	// background server still holds the output open.
	out, err := os.Create(filepath.Join(t.TempDir(), "docs.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	// Whatever the document left running in the background stops now.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil {
		data, _ := os.ReadFile(out.Name())
		log := string(data)
		if len(log) > 12000 {
			log = "...\n" + log[len(log)-12000:]
		}
		t.Fatalf("%s: a command failed (%v; the last command traced with + is the one):\n%s", name, err, log)
	}
}

// docsEnv is the environment of the documents' commands: the test's,
// without RINGATTN_* settings a developer may have exported.
func docsEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RINGATTN_") {
			env = append(env, kv)
		}
	}
	return env
}
