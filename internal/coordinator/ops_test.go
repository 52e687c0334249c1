package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// getJSON GETs url and decodes its JSON body keeping numbers as
// json.Number, so a number written as a string shows as a string.
func getJSON(t *testing.T, url string, wantCode int) map[string]any {
	t.Helper()
	resp, err := http.Get(url)
	noErr(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	noErr(t, err)
	if resp.StatusCode != wantCode {
		t.Fatalf("GET %s = %d %s, want %d", url, resp.StatusCode, body, wantCode)
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var m map[string]any
	noErr(t, d.Decode(&m))
	return m
}

func wantNumber(t *testing.T, what string, v any, want string) {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok || (want != "" && n.String() != want) {
		t.Errorf("%s = %#v, want the JSON number %s", what, v, want)
	}
}

// TestCoordinatorJSONShape: /v1/* write numbers as numbers and states,
// kinds and dtypes by short lowercase names; ?format=proto keeps the
// protobuf JSON mapping.
func TestCoordinatorJSONShape(t *testing.T) {
	tc := newCluster(t, 1, func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	nc := connect(t, tc.url)
	tc.leader()
	base := "http://" + tc.nodes[0].HTTPAddr()
	spec := attnSpec("json", 1000)
	spec.WireDtype = pb.WireDType_WIRE_DTYPE_BF16
	job := submit(t, nc, spec).Job // no workers: it stays queued

	j := getJSON(t, base+"/v1/jobs/"+job.Id, http.StatusOK)
	if j["id"] != job.Id || j["state"] != "queued" {
		t.Errorf("job id %v, state %#v: want %s, queued", j["id"], j["state"], job.Id)
	}
	wantNumber(t, "blocks_total", j["blocks_total"], "16")
	wantNumber(t, "blocks_done", j["blocks_done"], "0")
	wantNumber(t, "steps_total", j["steps_total"], "0")
	wantNumber(t, "epoch", j["epoch"], "0")
	wantNumber(t, "created_unix_ms", j["created_unix_ms"], fmt.Sprint(job.CreatedUnixMs))
	s, _ := j["spec"].(map[string]any)
	if s["kind"] != "attention" || s["wire_dtype"] != "bf16" || s["idempotency_key"] != "json" {
		t.Errorf("spec = %v: want kind attention, wire_dtype bf16", s)
	}
	wantNumber(t, "spec.n", s["n"], "1000")
	if m, _ := s["mask"].(map[string]any); m["causal"] != true {
		t.Errorf("spec.mask = %v", s["mask"])
	}
	if w, ok := j["workers"].([]any); !ok || len(w) != 0 {
		t.Errorf("workers = %#v, want []", j["workers"])
	}

	p := getJSON(t, base+"/v1/jobs/"+job.Id+"?format=proto", http.StatusOK)
	if p["state"] != "JOB_STATE_QUEUED" || p["blocks_total"] != "16" {
		t.Errorf("?format=proto: state %#v, blocks_total %#v", p["state"], p["blocks_total"])
	}
	e := getJSON(t, base+"/v1/jobs/"+job.Id+"?format=xml", http.StatusBadRequest)
	if e["field"] != "format" || !strings.Contains(fmt.Sprint(e["error"]), "json (default) or proto") {
		t.Errorf("?format=xml: %v", e)
	}

	l := getJSON(t, base+"/v1/jobs?state=queued", http.StatusOK)
	wantNumber(t, "total", l["total"], "1")
	if js, _ := l["jobs"].([]any); len(js) != 1 || js[0].(map[string]any)["state"] != "queued" {
		t.Errorf("list = %v", l)
	}
	c := getJSON(t, base+"/v1/cluster", http.StatusOK)
	wantNumber(t, "term", c["term"], "")
	wantNumber(t, "queue_depth", c["queue_depth"], "1")
	if by, _ := c["jobs_by_state"].(map[string]any); by == nil {
		t.Errorf("jobs_by_state = %#v", c["jobs_by_state"])
	} else {
		wantNumber(t, "jobs_by_state.queued", by["queued"], "1")
	}
	// Readers that parse it as protobuf JSON (testenv) still can.
	raw, err := json.Marshal(c)
	noErr(t, err)
	var cr pb.ClusterReply
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, &cr); err != nil || cr.LeaderId != "c0" || cr.JobsByState["queued"] != 1 {
		t.Errorf("/v1/cluster as protobuf JSON: %v, %v", &cr, err)
	}
	if c["leader_id"] != "c0" {
		t.Errorf("leader_id = %#v", c["leader_id"])
	}
	if e, _ := c["error"]; e != nil {
		t.Errorf("error = %#v, want null", e)
	}
}

// TestCoordinatorFollowerLinksLeader: a follower's status page links the
// leader's, found through the address the leader advertises.
func TestCoordinatorFollowerLinksLeader(t *testing.T) {
	tc := newCluster(t, 3, func(c *Config) { c.HTTPAddr = "127.0.0.1:0" })
	// Stop without leadership handoffs: a handoff to a node already
	// stopped leaves raft's transfer RPC waiting 5 s on the in-memory
	// transport, past the end of the test.
	defer func() {
		for i := range tc.nodes {
			tc.kill(i)
		}
	}()
	li := tc.leader()
	apiRetry(t, connect(t, tc.url), EndpointCluster, &pb.ClusterRequest{}, func() *pb.ClusterReply { return &pb.ClusterReply{} })
	fi := (li + 1) % 3
	want := fmt.Sprintf(`<a href="http://%s/">c%d</a>`, tc.nodes[li].HTTPAddr(), li)
	checkFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		tc.nodes[fi].leaderURL.Store(nil)
		page := getStatusPage(t, "http://"+tc.nodes[fi].HTTPAddr())
		if !strings.Contains(page, want) || !strings.Contains(page, "status page</a>") {
			return fmt.Errorf("follower c%d's page lacks %s", fi, want)
		}
		return nil
	})
}

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCoordinatorCleanStartStopNoWarn: a single node bootstrapping, a
// worker draining cleanly and the node stopping log no WARN or ERROR (the
// first election used to be a raft WARN, a drained worker "worker lost",
// closing NATS "nats disconnected"); the drained worker is "worker left".
// The tensor bucket is created at startup with the configured settings.
func TestCoordinatorCleanStartStopNoWarn(t *testing.T) {
	url := startNATS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	noErr(t, err)
	raftAddr := ln.Addr().String()
	ln.Close()
	cfg := testConfig(t, "solo", url)
	cfg.RaftAddr, cfg.Bootstrap, cfg.HTTPAddr = raftAddr, true, "127.0.0.1:0"
	cfg.NATS.Bucket = "nowarn"
	cfg.NATS.StoreMaxBytes, cfg.NATS.StoreTTL = 64<<20, 2*time.Hour
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(cfg, Deps{Logger: log, Registerer: prometheus.NewRegistry()})
	noErr(t, err)
	closed := false
	defer func() {
		if !closed {
			_ = c.Close()
		}
	}()
	nc := connect(t, url)
	apiRetry(t, nc, EndpointCluster, &pb.ClusterRequest{}, func() *pb.ClusterReply { return &pb.ClusterReply{} })
	w := newTestWorker(t, url, "wd", 10, time.Millisecond)
	waitWorkers(t, nc, 1)
	w.leave()
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), `msg="worker left" node=solo role=leader worker=wd`) {
			return fmt.Errorf("no worker left line yet")
		}
		return nil
	})
	js, err := jetstream.New(nc.NATS())
	noErr(t, err)
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		obs, err := js.ObjectStore(ctx, "nowarn")
		if err != nil {
			return err
		}
		st, err := obs.Status(ctx)
		if err != nil {
			return err
		}
		info, err := js.Stream(ctx, "OBJ_nowarn")
		if err != nil {
			return err
		}
		if st.TTL() != 2*time.Hour || info.CachedInfo().Config.MaxBytes != 64<<20 {
			return fmt.Errorf("bucket TTL %v, max bytes %d: want 2h, %d", st.TTL(), info.CachedInfo().Config.MaxBytes, 64<<20)
		}
		return nil
	})
	noErr(t, c.Close())
	closed = true
	out := logs.String()
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "[WARN]") {
			t.Errorf("clean start and stop logged: %s", line)
		}
	}
	for _, want := range []string{`level=INFO msg="raft: heartbeat timeout reached, starting election`, "tensor store open", "max_bytes=67108864", "ttl=2h0m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
