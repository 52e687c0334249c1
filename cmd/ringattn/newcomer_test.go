package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// Tests of issue 22, "A newcomer's first hour, without a stumble".

// TestCLIFlagSuggestion: a typo gets the nearest flag or command.
func TestCLIFlagSuggestion(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"attend", "--casual"}, "did you mean --causal?"},
		{[]string{"attend", "--window-lft", "3"}, "did you mean --window-left?"},
		{[]string{"submit", "--wiat"}, "did you mean --wait?"},
		{[]string{"list", "--stat", "running"}, "did you mean --state?"},
		{[]string{"atend"}, `did you mean "attend"?`},
	} {
		code, stdout, stderr := cli(t, c.args...)
		if code != exitUsage || stdout != "" || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one line with %q", c.args, code, stderr, c.want)
		}
	}
	if got := nearest("frobnicate", []string{"causal", "q", "k"}); got != "" {
		t.Errorf("nearest(frobnicate) = %q, want none", got)
	}
}

// freePort returns a loopback address nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestCLIUnreachableCluster: no cluster at --nats is exit 3 with the URL
// and a hint, for attend and the job commands; a URL without a scheme is
// taken as host:port; a malformed one is exit 2 naming --nats.
func TestCLIUnreachableCluster(t *testing.T) {
	dir := t.TempDir()
	q, k, v := fixture("attn_q.npy"), fixture("attn_k.npy"), fixture("attn_v.npy")
	addr := freePort(t)
	for _, args := range [][]string{
		{"attend", "--nats", addr, "-q", q, "-k", k, "-v", v, "-o", filepath.Join(dir, "o.npy")},
		{"attend", "--nats", "nats://" + addr, "-q", q, "-k", k, "-v", v, "-o", filepath.Join(dir, "o.npy")},
		{"submit", "--nats", addr, "-q", q, "-k", k, "-v", v},
		{"list", "--nats", addr},
		{"status", "JOB", "--nats", addr},
		{"info", "--nats", addr, "--wait", "300ms"},
	} {
		code, _, stderr := cli(t, args...)
		if code != exitReach || !strings.Contains(stderr, "cannot reach the cluster at nats://"+addr) ||
			!strings.Contains(stderr, "ringattn dev") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit 3 naming the URL and `ringattn dev`", args[:3], code, stderr)
		}
	}
	for _, bad := range []string{"foo", "http://" + addr, "nats://"} {
		code, _, stderr := cli(t, "attend", "--nats", bad, "-q", q, "-k", k, "-v", v, "-o", filepath.Join(dir, "o.npy"))
		if code != exitUsage || !strings.Contains(stderr, "--nats") {
			t.Errorf("--nats %q: exit %d, stderr %q; want exit 2 naming --nats", bad, code, stderr)
		}
	}
}

// TestCLIOutputCheckedFirst: an output path that cannot be written is
// exit 2 before anything is read or computed (the inputs here do not even
// exist, so reading them would fail with another message).
func TestCLIOutputCheckedFirst(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope", "o.npy")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"attend", "-q", "absent.npy", "-k", "absent.npy", "-v", "absent.npy", "-o", missing}, "-o " + missing + ": directory"},
		{[]string{"attend", "-q", "absent.npy", "-k", "absent.npy", "-v", "absent.npy", "-o", filepath.Join(dir, "o.npy"), "--lse", missing}, "--lse"},
		{[]string{"attend", "-q", "absent.npy", "-k", "absent.npy", "-v", "absent.npy", "-o", dir}, "is a directory"},
		{[]string{"mha", "-x", "absent.npy", "--wq", "a", "--wk", "a", "--wv", "a", "--wo", "a", "--heads", "2", "-o", missing}, "does not exist"},
		{[]string{"get", "JOB", "-o", missing}, "does not exist"},
	} {
		code, _, stderr := cli(t, c.args...)
		if code != exitUsage || !strings.Contains(stderr, c.want) || strings.Contains(stderr, "absent") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 with %q, before reading inputs", c.args, code, stderr, c.want)
		}
	}
}

// TestCLILayoutBNHD: torch's [B,N,H,D] tensors with --layout bnhd give
// the bhnd result transposed; read as bhnd by mistake they are caught.
func TestCLILayoutBNHD(t *testing.T) {
	dir := t.TempDir()
	r := testrand.New(3)
	b, h, n, d := 1, 3, 40, 8
	paths := map[string]string{}
	for _, name := range []string{"q", "k", "v"} {
		x := tensor.New(r.Slice(b*h*n*d, testrand.Normal), b, h, n, d)
		paths[name] = filepath.Join(dir, name+".npy")
		paths[name+"t"] = filepath.Join(dir, name+"t.npy")
		if err := tensor.WriteNPY(paths[name], x); err != nil {
			t.Fatal(err)
		}
		if err := tensor.WriteNPY(paths[name+"t"], swapHN(x)); err != nil {
			t.Fatal(err)
		}
	}
	o, ot := filepath.Join(dir, "o.npy"), filepath.Join(dir, "ot.npy")
	if code, _, stderr := cli(t, "attend", "-q", paths["q"], "-k", paths["k"], "-v", paths["v"], "-o", o, "--causal"); code != 0 {
		t.Fatalf("bhnd: exit %d: %s", code, stderr)
	}
	code, _, stderr := cli(t, "attend", "-q", paths["qt"], "-k", paths["kt"], "-v", paths["vt"], "-o", ot, "--causal", "--layout", "bnhd")
	if code != 0 || strings.Contains(stderr, "warning") {
		t.Fatalf("bnhd: exit %d: %s", code, stderr)
	}
	got, err := tensor.ReadNPY(ot)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := tensor.ReadNPY(o)
	back := swapHN(got)
	if !equalInts(got.Shape, []int{b, n, h, d}) || !equalInts(back.Shape, want.Shape) {
		t.Fatalf("bnhd output shape %v, want [%d %d %d %d]", got.Shape, b, n, h, d)
	}
	for i := range want.Data {
		if back.Data[i] != want.Data[i] {
			t.Fatalf("bnhd output differs from bhnd's transposed at %d: %v vs %v", i, back.Data[i], want.Data[i])
		}
	}
	// The transposed files read as bhnd: 40 "heads" and a "sequence" of 3.
	code, _, stderr = cli(t, "attend", "-q", paths["qt"], "-k", paths["kt"], "-v", paths["vt"], "-o", ot)
	if code != 0 || !strings.Contains(stderr, "warning: -q read as [B,H,N,D] has 40 heads and a sequence of 3") || !strings.Contains(stderr, "--layout bnhd") {
		t.Errorf("mix-up: exit %d, stderr %q; want a warning naming --layout bnhd", code, stderr)
	}
	if code, _, stderr := cli(t, "attend", "-q", paths["q"], "-k", paths["k"], "-v", paths["v"], "-o", o, "--layout", "nhbd"); code != exitUsage || !strings.Contains(stderr, "--layout") {
		t.Errorf("bad layout: exit %d, stderr %q", code, stderr)
	}
}

// TestCLILayoutCertainMixup: a heads axis beyond any model's with a short
// sequence is an error naming --layout bnhd unless --layout is given.
func TestCLILayoutCertainMixup(t *testing.T) {
	dir := t.TempDir()
	n, h, d := 2048, 2, 4 // [1, 2048, 2, 4] in torch's layout
	r := testrand.New(5)
	var args []string
	for _, name := range []string{"q", "k", "v"} {
		p := filepath.Join(dir, name+".npy")
		if err := tensor.WriteNPY(p, tensor.New(r.Slice(n*h*d, testrand.Normal), 1, n, h, d)); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-"+name, p)
	}
	o := filepath.Join(dir, "o.npy")
	code, _, stderr := cli(t, append([]string{"attend", "-o", o}, args...)...)
	if code != exitUsage || !strings.Contains(stderr, "pass --layout bnhd") || !strings.Contains(stderr, "--layout bhnd to keep") {
		t.Fatalf("certain mix-up: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(o); err == nil {
		t.Fatal("output written")
	}
	// Overridden: a warning, then the limits decide (2048 heads > 1024).
	code, _, stderr = cli(t, append([]string{"attend", "-o", o, "--layout", "bhnd"}, args...)...)
	if !strings.Contains(stderr, "warning:") || code != exitUsage || !strings.Contains(stderr, "heads") {
		t.Fatalf("overridden: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := cli(t, append([]string{"attend", "-o", o, "--layout", "bnhd"}, args...)...); code != 0 {
		t.Fatalf("bnhd: exit %d: %s", code, stderr)
	}
	for _, c := range []struct {
		h, n             int
		suspect, certain bool
	}{{8, 4096, false, false}, {8, 8, false, false}, {32, 1, true, false}, {255, 16, true, false},
		{256, 128, true, true}, {256, 129, true, false}, {1024, 1000, true, false}, {1025, 1000, true, true}} {
		s, ce := layoutSuspicion(c.h, c.n)
		if s != c.suspect || ce != c.certain {
			t.Errorf("layoutSuspicion(%d, %d) = %v, %v; want %v, %v", c.h, c.n, s, ce, c.suspect, c.certain)
		}
	}
}

// TestCLIHelpGrouped: --help groups the flags with examples, shows one
// spelling of the NATS URL, and hides what a command rejects.
func TestCLIHelpGrouped(t *testing.T) {
	_, out, _ := cli(t, "attend", "--help")
	for _, want := range []string{"Inputs:", "Mask:", "Mode", "Cluster connection:", "Output:", "Examples:", "--nats URL", "--layout"} {
		if !strings.Contains(out, want) {
			t.Errorf("attend --help lacks %q", want)
		}
	}
	if strings.Contains(out, "nats-url") || strings.Contains(out, "store-replicas") {
		t.Errorf("attend --help shows hidden flags:\n%s", out)
	}
	if strings.Index(out, "Inputs:") > strings.Index(out, "Mask:") || strings.Index(out, "Mask:") > strings.Index(out, "Output:") {
		t.Errorf("attend --help groups out of order:\n%s", out)
	}
	_, out, _ = cli(t, "submit", "--help")
	if strings.Contains(out, "--ranks") || strings.Contains(out, "--cluster") || !strings.Contains(out, "Examples:") {
		t.Errorf("submit --help lists --ranks/--cluster or lacks examples:\n%s", out)
	}
	for _, cmd := range []string{"status", "get", "list", "watch", "cancel", "mha", "demo", "dev"} {
		_, out, _ := cli(t, cmd, "--help")
		if !strings.Contains(out, "Examples:") || strings.Contains(out, "nats-url") {
			t.Errorf("%s --help lacks examples or shows --nats-url", cmd)
		}
	}
	// The hidden alias still works.
	addr := freePort(t)
	if code, _, stderr := cli(t, "list", "--nats-url", "nats://"+addr); code != exitReach || !strings.Contains(stderr, addr) {
		t.Errorf("--nats-url: exit %d, stderr %q", code, stderr)
	}
}

// TestCLIVersion: version names the commit and build date, "unknown"
// when the build has no VCS stamp, and -ldflags -X values win.
func TestCLIVersion(t *testing.T) {
	_, out, _ := cli(t, "version")
	if !strings.HasPrefix(out, "ringattn ") || !strings.Contains(out, "commit ") || !strings.Contains(out, "built ") {
		t.Fatalf("version: %q", out)
	}
	commit, date = "0123456789abcdef0123", "2026-12-04T00:00:00Z"
	defer func() { commit, date = "", "" }()
	_, out, _ = cli(t, "--version")
	if !strings.Contains(out, "commit 0123456789ab,") || !strings.Contains(out, "built 2026-12-04T00:00:00Z") {
		t.Fatalf("version with -X: %q", out)
	}
}

// TestCLIProgressLines: plain progress lines come at state changes, every
// plainEvery and at the end; a rate and ETA only when known; a job
// finished before the watch says so without a rate.
func TestCLIProgressLines(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	v := &progressView{w: &buf, now: func() time.Time { return now }}
	run := &pb.JobStatus{Id: "j1", State: pb.JobState_JOB_STATE_RUNNING, Epoch: 1, StartedUnixMs: now.UnixMilli()}
	v.update(client.Progress{Status: run, Done: 0, Total: 100, Unit: client.UnitSteps})
	now = now.Add(500 * time.Millisecond)
	v.update(client.Progress{Status: run, Done: 10, Total: 100, Unit: client.UnitSteps}) // too soon: no line
	now = now.Add(2 * time.Second)
	v.update(client.Progress{Status: run, Done: 50, Total: 100, Unit: client.UnitSteps, Rate: 20, RateOK: true, ETA: 2500 * time.Millisecond, ETAOK: true, Elapsed: 2500 * time.Millisecond})
	done := &pb.JobStatus{Id: "j1", State: pb.JobState_JOB_STATE_SUCCEEDED, Epoch: 1}
	v.update(client.Progress{Status: done, Done: 100, Total: 100, Unit: client.UnitSteps, Elapsed: 5 * time.Second})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), buf.String())
	}
	if strings.Contains(lines[0], "ETA") || strings.Contains(lines[0], "/s") {
		t.Errorf("first line shows a rate or ETA before any is known: %q", lines[0])
	}
	if !strings.Contains(lines[1], "50/100 steps") || !strings.Contains(lines[1], "20.0 steps/s") || !strings.Contains(lines[1], "ETA 2.5s") {
		t.Errorf("middle line %q", lines[1])
	}
	if !strings.Contains(lines[2], "SUCCEEDED") || !strings.Contains(lines[2], "100%") || !strings.Contains(lines[2], "in 5s") {
		t.Errorf("last line %q", lines[2])
	}
	buf.Reset()
	v = &progressView{w: &buf, now: time.Now}
	v.update(client.Progress{Status: done, Done: 64, Total: 64, Unit: client.UnitBlocks, Elapsed: 1200 * time.Millisecond, FinishedBeforeWatch: true})
	if s := buf.String(); strings.Contains(s, "/s") || !strings.Contains(s, "finished before the watch began") || !strings.Contains(s, "in 1.2s") {
		t.Errorf("finished job: %q", s)
	}
}

// TestCLIJobsOnCluster: submit prints the job id, watch follows it, get
// says what it wrote, list has shape and submit time columns and says
// when there are no jobs in a state; attend --nats prints the job id.
func TestCLIJobsOnCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 2, HTTPAddr: "off"})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	url := dev.URL()
	dir := t.TempDir()
	q, k, v := fixture("attn_q.npy"), fixture("attn_k.npy"), fixture("attn_v.npy")
	code, stdout, stderr := cli(t, "info", "--nats", url, "--wait", "30s", "--workers", "2")
	if code != 0 || !strings.Contains(stdout, "2 workers") {
		t.Fatalf("info: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, "list", "--nats", url, "--state", "running")
	if code != 0 || strings.TrimSpace(stdout) != "no running jobs" {
		t.Fatalf("empty list: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, "submit", "--nats", url, "-q", q, "-k", k, "-v", v, "--causal", "--lse", "--block", "8")
	id := strings.TrimSpace(stdout)
	if code != 0 || id == "" || strings.Contains(id, " ") {
		t.Fatalf("submit: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, "watch", id, "--nats", url)
	if code != 0 || !strings.Contains(stdout, "job "+id) || !strings.Contains(stdout, "SUCCEEDED") {
		t.Fatalf("watch: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// Watched again, finished: no rate.
	_, stdout, _ = cli(t, "watch", id, "--nats", url)
	if strings.Contains(stdout, "/s") || !strings.Contains(stdout, "finished before the watch began") {
		t.Errorf("watching a finished job: %q", stdout)
	}
	o, lse := filepath.Join(dir, "o.npy"), filepath.Join(dir, "lse.npy")
	code, stdout, stderr = cli(t, "get", id, "--nats", url, "-o", o, "--lse", lse)
	if code != 0 || !strings.Contains(stdout, "wrote "+o+" [") || !strings.Contains(stdout, "wrote "+lse+" [") {
		t.Fatalf("get: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
		t.Fatalf("get: max |o - numpy| = %g", d)
	}
	code, stdout, _ = cli(t, "list", "--nats", url)
	if code != 0 || !strings.Contains(stdout, "SHAPE") || !strings.Contains(stdout, "SUBMITTED") || !strings.Contains(stdout, id) || !strings.Contains(stdout, "causal") {
		t.Fatalf("list: exit %d, stdout %q", code, stdout)
	}
	code, _, stderr = cli(t, "attend", "--nats", strings.TrimPrefix(url, "nats://"), "-q", q, "-k", k, "-v", v, "-o", o, "--causal", "--block", "8")
	if code != 0 || !strings.Contains(stderr, "submitted job ") || !strings.Contains(stderr, "SUCCEEDED") {
		t.Fatalf("attend --nats: exit %d, stderr %q", code, stderr)
	}
	if d := maxDiff(t, o, fixture("attn_o_ref.npy")); d > 1e-4 {
		t.Fatalf("attend --nats: max |o - numpy| = %g", d)
	}
}

// TestCLIRandnCompare: randn writes seeded tensors of the shape asked,
// compare passes equal files and fails different ones (exit 1).
func TestCLIRandnCompare(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a.npy"), filepath.Join(dir, "b.npy"), filepath.Join(dir, "c.npy")
	for _, x := range []struct {
		path, seed string
	}{{a, "1"}, {b, "1"}, {c, "2"}} {
		code, stdout, stderr := cli(t, "randn", "--shape", "2,3,5,4", "-o", x.path, "--seed", x.seed)
		if code != 0 || !strings.Contains(stdout, "[2 3 5 4]") {
			t.Fatalf("randn: exit %d, %q %q", code, stdout, stderr)
		}
	}
	if code, stdout, _ := cli(t, "compare", a, b); code != 0 || !strings.Contains(stdout, "max |a - b| = 0.00e+00") {
		t.Errorf("same seed: exit %d, %q", code, stdout)
	}
	if code, stdout, stderr := cli(t, "compare", a, c); code != exitJob || !strings.Contains(stdout, "DIFFERENT") || !strings.Contains(stderr, "exceeds --tol") {
		t.Errorf("other seed: exit %d, %q %q", code, stdout, stderr)
	}
	if code, _, _ := cli(t, "compare", "--tol", "100", a, c); code != 0 {
		t.Errorf("--tol 100 before the files: exit %d", code)
	}
	if code, _, _ := cli(t, "compare", a, "--tol", "100", c); code != 0 {
		t.Errorf("--tol 100 between the files: exit %d", code)
	}
	d := filepath.Join(dir, "d.npy")
	cli(t, "randn", "--shape", "3,5", "-o", d)
	if code, _, stderr := cli(t, "compare", a, d); code != exitJob || !strings.Contains(stderr, "shape") {
		t.Errorf("shapes differ: exit %d, %q", code, stderr)
	}
	for _, args := range [][]string{
		{"randn", "-o", a},
		{"randn", "--shape", "2,x", "-o", a},
		{"randn", "--shape", "1,1,1,1,1", "-o", a},
		{"randn", "--shape", "65536,16385", "-o", a},
		{"randn", "--shape", "4", "-o", filepath.Join(dir, "no", "a.npy")},
		{"compare", a},
		{"compare", a, b, "--tol", "-1"},
	} {
		if code, _, stderr := cli(t, args...); code != exitUsage {
			t.Errorf("%v: exit %d (%q), want 2", args, code, stderr)
		}
	}
	// The element limit, at and just past it (checked before allocating).
	if n, err := randnElems("s", []int{1 << 15, 1 << 15}); err != nil || n != maxRandnElems {
		t.Errorf("at the limit: %d, %v", n, err)
	}
	if _, err := randnElems("s", []int{1<<15 + 1, 1 << 15}); err == nil {
		t.Error("past the limit: no error")
	}
	if _, err := randnElems("s", []int{1 << 40, 1 << 40}); err == nil {
		t.Error("overflowing shape: no error")
	}
}

// TestCLIProgressBar: on a terminal the bar is redrawn in place (\r, clear
// to the end of line) and ends with a newline when the job finishes.
func TestCLIProgressBar(t *testing.T) {
	var buf bytes.Buffer
	v := &progressView{w: &buf, tty: true, now: time.Now}
	run := &pb.JobStatus{Id: "j", State: pb.JobState_JOB_STATE_RUNNING, Epoch: 1}
	v.update(client.Progress{Status: run, Done: 6, Total: 24, Unit: client.UnitSteps})
	if s := buf.String(); !strings.HasPrefix(s, "\r[######..................] job j") || !strings.HasSuffix(s, "\x1b[K") || strings.Contains(s, "\n") {
		t.Fatalf("bar %q", s)
	}
	v.done()
	if !strings.HasSuffix(buf.String(), "\n") {
		t.Fatal("an interrupted bar is left without its newline")
	}
	buf.Reset()
	v.update(client.Progress{Status: &pb.JobStatus{Id: "j", State: pb.JobState_JOB_STATE_SUCCEEDED}, Done: 24, Total: 24, Unit: client.UnitSteps})
	if s := buf.String(); !strings.Contains(s, "[########################]") || !strings.HasSuffix(s, "\n") {
		t.Fatalf("final bar %q", s)
	}
	v.done()
	if strings.HasSuffix(buf.String(), "\n\n") {
		t.Fatal("a finished bar gets a second newline")
	}
	if isTTY(&buf) {
		t.Fatal("a buffer is a terminal")
	}
}

// TestCLINoCoordinator: a NATS server without coordinators is exit 3
// saying so, after leaderWait, instead of a command waiting forever.
func TestCLINoCoordinator(t *testing.T) {
	e := transporttest.RunServer(t)
	old := leaderWait
	leaderWait = 500 * time.Millisecond
	defer func() { leaderWait = old }()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"list", "--nats", e.ClientURL()},
		{"attend", "--nats", e.ClientURL(), "-q", fixture("attn_q.npy"), "-k", fixture("attn_k.npy"), "-v", fixture("attn_v.npy"), "-o", filepath.Join(dir, "o.npy")},
	} {
		start := time.Now()
		code, _, stderr := cli(t, args...)
		if code != exitReach || !strings.Contains(stderr, "no coordinator leader") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%s: exit %d, stderr %q; want exit 3 naming the missing leader", args[0], code, stderr)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Errorf("%s: took %v", args[0], el)
		}
	}
}
