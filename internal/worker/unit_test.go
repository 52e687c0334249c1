package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

func TestWorkerConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero Config (all defaults): %v", err)
	}
	for _, c := range []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.ID = "a.b" }, "ID"},
		{func(c *Config) { c.Slots = -1 }, "Slots"},
		{func(c *Config) { c.Threads = -2 }, "Threads"},
		{func(c *Config) { c.HeartbeatInterval = time.Millisecond }, "HeartbeatInterval"},
		{func(c *Config) { c.DrainTimeout = -time.Second }, "DrainTimeout"},
		{func(c *Config) { c.RecvTimeout = -time.Second }, "RecvTimeout"},
		{func(c *Config) { c.GFLOPS = -1 }, "GFLOPS"},
		{func(c *Config) { c.NATS.Bucket = "a b" }, "Bucket"},
	} {
		cfg := DefaultConfig()
		c.mut(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate() = %v, want ErrInvalidConfig naming %s", err, c.want)
		}
		if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New() = %v, want ErrInvalidConfig", err)
		}
	}
	if id := DefaultID(); !regexp.MustCompile(`^[A-Za-z0-9_-]+-\d+-[0-9a-f]{8}$`).MatchString(id) {
		t.Errorf("DefaultID() = %q, want <host>-<pid>-<8 hex>", id)
	}
}

// TestWorkerPlanFromWire: every strategy's plan survives the wire form
// (shard.Plan.Validate passes on the rebuilt plan, split-KV reduction tree
// included) and keeps the ranks' blocks.
func TestWorkerPlanFromWire(t *testing.T) {
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
		for _, w := range []int{1, 3, 5} {
			req := shard.Request{B: 1, Hq: 4, Hkv: 2, D: 16, N: 1000, Nk: 1000, Block: 100, Ranks: w, Strategy: s,
				Mask: shard.Mask{Causal: true}}
			if s == shard.SplitKV {
				req.N = 64
			}
			p, err := shard.NewPlan(req)
			if err != nil {
				t.Fatal(err)
			}
			a := &pb.Assignment{JobId: "j", Epoch: 1, Rank: int32(w - 1), Size: int32(w), Plan: planPB(p, "me"),
				Params: &pb.KernelParams{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: 1, Hq: 4, Hkv: 2, D: 16, Scale: 0.25,
					Mask: &pb.Mask{Causal: true}}, InputRef: "in"}
			tk, err := newTask(a, "me")
			if err != nil {
				t.Fatalf("%s W=%d: %v", s, w, err)
			}
			for r := range p.Ranks {
				if !slices.Equal(tk.plan.Ranks[r].QBlocks, p.Ranks[r].QBlocks) || !slices.Equal(tk.plan.Ranks[r].KVBlocks, p.Ranks[r].KVBlocks) {
					t.Fatalf("%s W=%d rank %d: blocks changed on the wire", s, w, r)
				}
			}
			if !slices.Equal(tk.plan.Reduce, p.Reduce) || !slices.Equal(tk.plan.Planned, p.Planned) {
				t.Fatalf("%s W=%d: reduce %v planned %v, want %v %v", s, w, tk.plan.Reduce, tk.plan.Planned, p.Reduce, p.Planned)
			}
			if tk.outputRef != "j" {
				t.Fatalf("output_ref defaults to %q, want the job id", tk.outputRef)
			}
		}
	}
}

// memReader serves blocks from memory and counts fetches.
type memReader struct {
	mu      sync.Mutex
	blocks  map[string][]float32
	fetches map[string]int
}

func (m *memReader) GetBlock(_ context.Context, job, tensor string, block int) ([]float32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := fmt.Sprintf("%s/%s/%d", job, tensor, block)
	m.fetches[k]++
	x, ok := m.blocks[k]
	if !ok {
		return nil, fmt.Errorf("%w: %s", transport.ErrBlockNotFound, k)
	}
	return x, nil
}

// TestWorkerMHASourceProjectsOwnBlocks: a layer rank projects each of its
// own blocks once (Q, K and V together), keeps nothing once fetched, and a
// fallback block is projected on demand and not kept.
func TestWorkerMHASourceProjectsOwnBlocks(t *testing.T) {
	const b, n, dModel, heads, d, block = 1, 250, 6, 2, 3, 50
	r := testrand.New(9)
	l := &ringattn.Layer{DModel: dModel, Heads: heads, D: d,
		Wq: r.Slice(heads*d*dModel, testrand.Normal), Wk: r.Slice(heads*d*dModel, testrand.Normal),
		Wv: r.Slice(heads*d*dModel, testrand.Normal), Wo: r.Slice(heads*d*dModel, testrand.Normal)}
	x := r.Slice(b*n*dModel, testrand.Normal)
	mr := &memReader{blocks: map[string][]float32{}, fetches: map[string]int{}}
	sh := transport.Shape{b, 1, n, dModel}
	for i := range sh.Blocks(block) {
		mr.blocks[fmt.Sprintf("in/x/%d", i)] = transport.ExtractBlock(x, sh, block, i)
	}
	p, err := shard.NewPlan(shard.Request{B: b, Hq: heads, Hkv: heads, D: d, N: n, Nk: n, Block: block, Ranks: 2,
		Strategy: shard.Contiguous})
	if err != nil {
		t.Fatal(err)
	}
	tk := &task{rank: 1, plan: p, dModel: dModel, params: p0(b, heads, d)}
	src := newMHASource(&checkedSource{r: mr, ns: "in", met: testMetrics(t)}, l, tk)
	own := p.Ranks[1]
	ctx := context.Background()
	wantQ, wantK, wantV, err := l.Project(x, b, n)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, j int, got, full []float32) {
		t.Helper()
		blk := transport.ExtractBlock(full, transport.Shape{b, heads, n, d}, block, j)
		if !slices.Equal(got, blk) {
			t.Fatalf("%s block %d differs from projecting the whole sequence", name, j)
		}
	}
	for _, q := range own.QBlocks {
		got, err := src.Fetch(ctx, "q", q)
		if err != nil {
			t.Fatal(err)
		}
		check("q", q, got, wantQ)
	}
	for _, j := range own.KVBlocks {
		k, err := src.Fetch(ctx, "k", j)
		if err != nil {
			t.Fatal(err)
		}
		v, err := src.Fetch(ctx, "v", j)
		if err != nil {
			t.Fatal(err)
		}
		check("k", j, k, wantK)
		check("v", j, v, wantV)
	}
	for i := range sh.Blocks(block) {
		want := 0
		if slices.Contains(own.QBlocks, i) || slices.Contains(own.KVBlocks, i) {
			want = 1
		}
		if got := mr.fetches[fmt.Sprintf("in/x/%d", i)]; got != want {
			t.Fatalf("x block %d fetched %d times, want %d (own q %v, kv %v)", i, got, want, own.QBlocks, own.KVBlocks)
		}
	}
	if h := src.held(); len(h) != 0 {
		t.Fatalf("source still holds %v after every own block was fetched", h)
	}
	// A fallback for another rank's block: projected on demand, not kept.
	j := p.Ranks[0].KVBlocks[0]
	k, err := src.Fetch(ctx, "k", j)
	if err != nil {
		t.Fatal(err)
	}
	v, err := src.Fetch(ctx, "v", j)
	if err != nil {
		t.Fatal(err)
	}
	check("k", j, k, wantK)
	check("v", j, v, wantV)
	if h := src.held(); len(h) != 0 {
		t.Fatalf("source holds %v after a fallback", h)
	}
	if _, err := src.Fetch(ctx, "wq", 0); !errors.Is(err, ErrInvalidAssignment) {
		t.Fatalf("fetching a weight through the layer source: %v, want ErrInvalidAssignment", err)
	}
}

func p0(b, h, d int) (p kernels.Params) {
	p.B, p.Hq, p.Hkv, p.D = b, h, h, d
	return p
}

func testMetrics(t *testing.T) *workerMetrics {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestWorkerMeasureGFLOPS(t *testing.T) {
	g, err := MeasureGFLOPS(context.Background(), 20*time.Millisecond, 1)
	if err != nil || !(g > 0) {
		t.Fatalf("MeasureGFLOPS = %v, %v; want > 0", g, err)
	}
	t.Logf("kernel: %.1f GFLOP/s on one thread", g)
	if g, err = MeasureGFLOPS(context.Background(), 100*time.Millisecond, 0); err != nil || !(g > 0) {
		t.Fatalf("MeasureGFLOPS on all cores = %v, %v; want > 0", g, err)
	}
	t.Logf("kernel: %.1f GFLOP/s on %d threads", g, runtime.GOMAXPROCS(0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := MeasureGFLOPS(ctx, time.Second, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled measurement: %v", err)
	}
	if memoryBytes() <= 0 {
		t.Fatal("memoryBytes() <= 0")
	}
}

// TestWorkerMetricsEndpoint serves /metrics, /healthz and /readyz.
func TestWorkerMetricsEndpoint(t *testing.T) {
	e := newProtoEnv(t, 0, func(c *Config) { c.MetricsAddr = "127.0.0.1:0"; c.Registerer = nil })
	addr := e.w.MetricsAddr()
	if addr == "" {
		t.Fatal("no metrics address")
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for _, m := range []string{"ringattn_worker_kernel_gflops 2", "ringattn_worker_flops_total", "ringattn_worker_ring_step_seconds",
		"ringattn_worker_ring_bytes_total", "ringattn_worker_store_bytes_total", "ringattn_worker_store_fallbacks_total",
		"ringattn_worker_shards_running", `ringattn_worker_shards_total{result="done"}`, "go_goroutines"} {
		if !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz: %d", code)
	}
}

func TestWorkerRetryStore(t *testing.T) {
	ctx := context.Background()
	n := 0
	err := retryStore(ctx, func() error {
		n++
		if n < 3 {
			return errors.New("nats: timeout")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("transient errors: err %v after %d tries, want success on the 3rd", err, n)
	}
	n = 0
	err = retryStore(ctx, func() error { n++; return fmt.Errorf("%w: x", transport.ErrBlockNotFound) })
	if !errors.Is(err, transport.ErrBlockNotFound) || n != 1 {
		t.Fatalf("missing block: err %v after %d tries, want it at once", err, n)
	}
	n = 0
	err = retryStore(ctx, func() error { n++; return errors.New("down") })
	if err == nil || n != storeAttempts {
		t.Fatalf("persistent error: err %v after %d tries, want %d tries", err, n, storeAttempts)
	}
}

// TestWorkerFailFastRing: after one receive from a peer timed out, the
// next ones wait only the short time, until a frame from it arrives.
func TestWorkerFailFastRing(t *testing.T) {
	net, err := ringattn.NewMemNet(2, ringattn.MemOptions{RecvTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer net.Close()
	r := newFailFastRing(net.Rank(1), 10*time.Millisecond)
	ctx := context.Background()
	key := func(b int) ringattn.Key { return ringattn.Key{Kind: ringattn.KindKV, Step: 1, Block: b} }
	start := time.Now()
	if _, err := r.Recv(ctx, 0, key(0)); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("first receive: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("first receive gave up after %v, want the full timeout", d)
	}
	start = time.Now()
	if _, err := r.Recv(ctx, 0, key(1)); !errors.Is(err, ringattn.ErrTimeout) {
		t.Fatalf("second receive: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("second receive from a stalled peer took %v, want about 10ms", d)
	}
	// The peer is back: a frame already there is received, and the full
	// timeout applies again.
	if err := net.Rank(0).Send(ctx, 1, ringattn.Frame{Key: key(2), Tensors: [][]float32{{1}, {2}}}); err != nil {
		t.Fatal(err)
	}
	if f, err := r.Recv(ctx, 0, key(2)); err != nil || f.Tensors[1][0] != 2 {
		t.Fatalf("receive after the peer came back: %v %v", f, err)
	}
	if r.stalled[0] {
		t.Fatal("peer still marked stalled after a frame arrived")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Recv(cctx, 0, key(3)); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled receive: %v, want context.Canceled", err)
	}
}
