package coordinator

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func getStatusPage(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/")
	noErr(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	noErr(t, err)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET / = %d %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Fatalf("GET / Content-Type = %q, want text/html; charset=utf-8", ct)
	}
	return string(body)
}

// row returns the table row of the table with the given id whose first
// cell is first, or "".
func row(page, table, first string) string {
	i := strings.Index(page, `<table id="`+table+`">`)
	if i < 0 {
		return ""
	}
	tbl := page[i:]
	tbl = tbl[:strings.Index(tbl, "</table>")]
	for _, r := range strings.Split(tbl, "<tr>")[1:] {
		if strings.HasPrefix(r, "<td>"+first+"</td>") || strings.HasPrefix(r, `<td><a href="/v1/jobs/`+first+`">`+first+"</a></td>") {
			return r
		}
	}
	return ""
}

func TestCoordinatorStatusPage(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	nc := connect(t, tc.url)
	tc.leader()
	base := "http://" + tc.nodes[0].HTTPAddr()

	// An empty cluster renders.
	page := getStatusPage(t, base)
	for _, want := range []string{"<h1>ringattn coordinator c0</h1>", `Leader: <b><a href="` + base + `/">c0</a></b> (this node)`,
		`<a href="/metrics">/metrics</a>`, `<a href="/v1/jobs">/v1/jobs</a>`, `<a href="/v1/cluster">/v1/cluster</a>`, "no live workers", "no jobs"} {
		if !strings.Contains(page, want) {
			t.Errorf("empty status page lacks %q:\n%s", want, page)
		}
	}

	slow := newTestWorker(t, tc.url, "wa", 12.5, time.Hour) // holds its shard until told
	waitWorkers(t, nc, 1)
	running := submit(t, nc, attnSpec("status-run", 1000))
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		page = getStatusPage(t, base)
		r := row(page, "workers", "wa")
		// (The registry and the job list are read one after the other:
		// wait until both saw the job start.)
		if !strings.Contains(r, `<a href="/v1/jobs/`+running.Job.Id+`">`+running.Job.Id+"</a>") || !strings.Contains(r, `<td class="num">1 / 2</td>`) {
			return fmt.Errorf("worker row %q does not name job %s", r, running.Job.Id)
		}
		return nil
	})
	wr := row(page, "workers", "wa")
	for _, want := range []string{`<td class="num">1 / 2</td>`, `<td class="num">12.5</td>`, " ago</td>", "<td>live</td>"} {
		if !strings.Contains(wr, want) {
			t.Errorf("worker row lacks %q: %s", want, wr)
		}
	}
	jr := row(page, "jobs", running.Job.Id)
	for _, want := range []string{`<td class="running">running</td>`, "<td>attention</td>",
		"B=1 Hq=4 Hkv=2 N=1000 Nk=1000 D=32 causal", "0/16 blocks", `<td class="num">1</td>`, "<td>wa</td>"} {
		if !strings.Contains(jr, want) {
			t.Errorf("running job row lacks %q: %s", want, jr)
		}
	}
	if !regexp.MustCompile(`<td class="num">[0-9.]+m?s</td>`).MatchString(jr) {
		t.Errorf("running job row has no duration: %s", jr)
	}

	// A failure reason with markup is escaped, never rendered as HTML.
	// (wa must hold its shard first: killed before it answers the
	// assignment, the job is re-planned at once onto wb, which fails it.)
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if len(slow.assignments()) == 0 {
			return fmt.Errorf("wa has no assignment yet")
		}
		return nil
	})
	slow.kill()
	bad := newTestWorker(t, tc.url, "wb", 10, 10*time.Millisecond)
	bad.set(10*time.Millisecond, `<script>alert("x")</script> & <b>`, true)
	failed := submit(t, nc, attnSpec("status-fail", 128))
	waitState(t, nc, failed.Job.Id, pb.JobState_JOB_STATE_FAILED, 15*time.Second)
	page = getStatusPage(t, base)
	if strings.Contains(page, "<script>") || strings.Contains(page, "& <b>") {
		t.Fatalf("status page renders markup from a job's reason:\n%s", page)
	}
	fr := row(page, "jobs", failed.Job.Id)
	for _, want := range []string{`<td class="failed">failed</td>`, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;"} {
		if !strings.Contains(fr, want) {
			t.Errorf("failed job row lacks %q: %s", want, fr)
		}
	}
	if !strings.Contains(page, "failed 1") {
		t.Errorf("status page lacks the failed count:\n%s", page)
	}
}
