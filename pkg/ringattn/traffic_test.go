package ringattn_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// hop is one key/value frame: block `block` sent from one rank to another
// for the receiver's step.
type hop struct{ from, to, block, step int }

// counter records what the ranks of one run sent.
type counter struct {
	mu      sync.Mutex
	kv      map[hop]int // key/value frames
	kvBytes int64       // their payload, 4 bytes a value
	others  int64       // payload of the other frames (split-KV partials)
}

// countRing hides the FrameSharer of the MemNet rank it wraps, so the
// engine sends contiguous copies as it does over a serializing ring, and
// counts every frame's values as the bytes a wire would carry.
type countRing struct {
	ringattn.Ring
	c *counter
}

func (r countRing) Send(ctx context.Context, to int, f ringattn.Frame) error {
	if f.Stride != 0 {
		return fmt.Errorf("frame %+v has views (stride %d)", f.Key, f.Stride)
	}
	var n int64
	for _, t := range f.Tensors {
		n += 4 * int64(len(t))
	}
	r.c.mu.Lock()
	if f.Kind == ringattn.KindKV {
		r.c.kv[hop{r.Rank(), to, f.Block, f.Step}]++
		r.c.kvBytes += n
	} else {
		r.c.others += n
	}
	r.c.mu.Unlock()
	return r.Ring.Send(ctx, to, f)
}

// runCounted runs every rank of plan over a MemNet with opts through
// counting rings and returns the outputs, the counts, the ranks' fallbacks
// and the net's stats.
func runCounted(t testing.TB, pr *problem, plan *shard.Plan, opts ringattn.MemOptions, full bool) (o, lse []float32, c *counter, falls int, st ringattn.MemStats) {
	t.Helper()
	w := len(plan.Ranks)
	net := newNet(t, w, opts)
	defer net.Close()
	src, err := ringattn.NewMemSource(&pr.p, plan.Block, pr.q, pr.k, pr.v)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := ringattn.NewMemSink(&pr.p, plan.Block)
	if err != nil {
		t.Fatal(err)
	}
	c = &counter{kv: map[hop]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errs := make([]error, w)
	last := make([]ringattn.Progress, w)
	var wg sync.WaitGroup
	for r := range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = ringattn.RunRank(ctx, ringattn.RankConfig{Params: &pr.p, Plan: plan, Ring: countRing{net.Rank(r), c},
				Source: src, Sink: sink, FullRing: full, Progress: func(p ringattn.Progress) { last[r] = p }})
			if errs[r] != nil {
				net.Kill(r)
				cancel()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%s %s: %v", pr.name, plan.Strategy, err)
	}
	for _, p := range last {
		falls += p.Fallbacks
	}
	o, lse = sink.Result()
	return o, lse, c, falls, net.Stats()
}

// wantHops is the key/value frames the plan's schedule sends.
func wantHops(plan *shard.Plan, tr *shard.Traffic) map[hop]int {
	out := map[hop]int{}
	for j := range plan.KBlockCount {
		for x := range plan.Ranks {
			if from := tr.From(x, j); from >= 0 {
				out[hop{from, x, j, tr.Step(x, j)}]++
			}
		}
	}
	return out
}

// TestRingTrafficMatchesPlan: for every strategy and mask (causal, window,
// packed and cross documents, GQA, ragged lengths) the short-circuit ring
// equals the float64 reference, is bit-identical to the full ring, and
// sends exactly the frames and bytes the plan predicts — each key/value
// block only to the ranks that need it — while the full ring sends every
// block W-1 hops (Rank.Bytes).
func TestRingTrafficMatchesPlan(t *testing.T) {
	for _, pr := range problems() {
		t.Run(pr.name, func(t *testing.T) {
			for _, ranks := range []int{3, 4} {
				for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
					plan := pr.plan(t, pr.request(ranks, 16, s))
					what := fmt.Sprintf("R=%d %s", ranks, s)
					o, lse, c, falls, st := runCounted(t, pr, plan, ringattn.MemOptions{}, false)
					pr.check(t, what, o, lse)
					if falls != 0 || st.Timeouts != 0 {
						t.Fatalf("%s: %d fallbacks, %d timeouts in a fault-free run", what, falls, st.Timeouts)
					}
					fo, flse, fc, _, _ := runCounted(t, pr, plan, ringattn.MemOptions{}, true)
					if !slices.Equal(o, fo) || !slices.Equal(lse, flse) {
						t.Fatalf("%s: the short-circuit ring and the full ring differ", what)
					}
					if s == shard.SplitKV {
						if len(c.kv) != 0 || len(fc.kv) != 0 || c.others != plan.RingBytes() || c.others != plan.BytesMoved() {
							t.Fatalf("%s: %d key/value frames, partials %d bytes, expected none and %d", what, len(c.kv), c.others, plan.RingBytes())
						}
						continue
					}
					tr := plan.Traffic()
					if want := wantHops(plan, tr); !mapsEqual(c.kv, want) {
						t.Fatalf("%s: frames sent %v, expected %v", what, c.kv, want)
					}
					if c.kvBytes != tr.Bytes() || c.kvBytes != plan.BytesMoved() || len(c.kv) != tr.Frames() {
						t.Fatalf("%s: %d frames of %d bytes sent, plan predicts %d of %d", what, len(c.kv), c.kvBytes, tr.Frames(), tr.Bytes())
					}
					if want := wantHops(plan, plan.FullRing()); !mapsEqual(fc.kv, want) || fc.kvBytes != plan.RingBytes() {
						t.Fatalf("%s: full ring sent %d bytes, expected %d", what, fc.kvBytes, plan.RingBytes())
					}
					if c.kvBytes > fc.kvBytes {
						t.Fatalf("%s: short-circuit sent %d bytes, more than the full ring's %d", what, c.kvBytes, fc.kvBytes)
					}
					if c.others != 0 {
						t.Fatalf("%s: %d bytes of other frames", what, c.others)
					}
				}
			}
		})
	}
}

func mapsEqual(a, b map[hop]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRingTrafficKnownCounts: counts that follow from the mask by hand,
// measured on the ring (N=128, block 16: 8 blocks, 2 a rank, W=4).
func TestRingTrafficKnownCounts(t *testing.T) {
	docs := []int{32, 32, 32, 32} // one document per rank
	const blockBytes = 2 * 2 * 16 * 8 * 4
	cases := []struct {
		name   string
		m      kernels.Mask
		frames int
	}{
		{"causal", kernels.Mask{Causal: true}, 2 * (0 + 1 + 2 + 3)}, // rank r needs the blocks of ranks < r
		{"window", kernels.Mask{Causal: true, Windowed: true, Left: 16, Right: -1}, 3},
		{"docs", kernels.Mask{SeqLens: docs}, 0},
		{"full", kernels.Mask{}, 3 * 8},
	}
	for i, c := range cases {
		pr := newProblem(c.name, 1, 4, 2, 128, 128, 8, c.m, uint64(60+i))
		plan := pr.plan(t, pr.request(4, 16, shard.Contiguous))
		o, lse, cnt, _, _ := runCounted(t, pr, plan, ringattn.MemOptions{}, false)
		pr.check(t, c.name, o, lse)
		if len(cnt.kv) != c.frames || cnt.kvBytes != int64(c.frames*blockBytes) {
			t.Fatalf("%s: %d frames of %d bytes sent, expected %d of %d", c.name, len(cnt.kv), cnt.kvBytes, c.frames, c.frames*blockBytes)
		}
	}
}

// TestRingTrafficDroppedShortCircuit: a frame that skips ranks is dropped;
// the receiver fetches the block from the store after its receive timeout,
// forwards it on the block's route like a received one, and the result is
// exact and bit-identical to the fault-free run; the ranks after the
// receiver get the block from it, not from the store.
func TestRingTrafficDroppedShortCircuit(t *testing.T) {
	// Striped with a window of less than a block each side: query block i
	// sees key blocks i-1 .. i+1, so block j goes from rank j to j+1 and
	// then to j-1 (= j+3), past rank j+2.
	pr := newProblem("striped-window", 1, 4, 2, 157, 157, 16, kernels.Mask{Windowed: true, Left: 10, Right: 10}, 71)
	plan := pr.plan(t, pr.request(4, 16, shard.Striped))
	w := len(plan.Ranks)
	wantO, wantLSE, clean, _, _ := runCounted(t, pr, plan, ringattn.MemOptions{}, false)
	pr.check(t, "clean", wantO, wantLSE)
	skips := 0
	for h := range clean.kv {
		if (h.to-h.from+w)%w > 1 {
			skips++
		}
	}
	if skips == 0 {
		t.Fatalf("no frame skips a rank: %v", clean.kv)
	}
	var mu sync.Mutex
	dropped := 0
	drop := func(from, to int, key ringattn.Key) ringattn.Fault {
		if key.Kind != ringattn.KindKV || (to-from+w)%w <= 1 {
			return ringattn.Fault{}
		}
		mu.Lock()
		defer mu.Unlock()
		dropped++
		return ringattn.Fault{Drop: true}
	}
	o, lse, _, falls, st := runCounted(t, pr, plan, ringattn.MemOptions{RecvTimeout: 50 * time.Millisecond, Fault: drop}, false)
	pr.check(t, "dropped", o, lse)
	if !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
		t.Fatal("dropping frames changed the result")
	}
	// A loaded machine may time out a slow frame too: at least the dropped
	// ones fall back.
	if dropped != skips || st.Dropped != int64(skips) || falls < skips || st.Timeouts < int64(skips) {
		t.Fatalf("%d short-circuit frames, %d dropped (net %d), %d fallbacks, %d timeouts: expected them all dropped and fallen back",
			skips, dropped, st.Dropped, falls, st.Timeouts)
	}
	t.Logf("%d of %d frames skip ranks and were dropped; %d fallbacks", skips, len(clean.kv), falls)
}

// TestRingTrafficTinyBuffer: with one frame per link, many blocks and
// blocks arriving from several senders at once, no rank waits for a frame
// stuck behind another (receivers drain each sender concurrently): the run
// ends without a receive timeout and gives the same bits.
func TestRingTrafficTinyBuffer(t *testing.T) {
	for i, m := range []kernels.Mask{
		{Causal: true, SeqLens: []int{50, 3, 67, 40}},
		{Windowed: true, Left: 5, Right: 3}, // a rank receives from r-1 and r-2
	} {
		pr := newProblem(fmt.Sprint("mask", i), 1, 2, 1, 160, 160, 8, m, uint64(72+i))
		for _, s := range []shard.Strategy{shard.Striped, shard.Zigzag} {
			plan := pr.plan(t, pr.request(4, 4, s))
			wantO, wantLSE, _, _, _ := runCounted(t, pr, plan, ringattn.MemOptions{}, false)
			o, lse, c, falls, st := runCounted(t, pr, plan, ringattn.MemOptions{Buffer: 1, RecvTimeout: time.Minute}, false)
			if !slices.Equal(o, wantO) || !slices.Equal(lse, wantLSE) {
				t.Fatalf("%s %s: a one-frame buffer changed the result", pr.name, s)
			}
			senders := map[int]map[int]bool{}
			most := 0
			for h := range c.kv {
				if senders[h.to] == nil {
					senders[h.to] = map[int]bool{}
				}
				senders[h.to][h.from] = true
				most = max(most, len(senders[h.to]))
			}
			if falls != 0 || st.Timeouts != 0 || len(c.kv) < 10 {
				t.Fatalf("%s %s: %d frames, %d fallbacks, %d timeouts", pr.name, s, len(c.kv), falls, st.Timeouts)
			}
			if i == 1 && most < 2 {
				t.Fatalf("%s %s: no rank receives from two senders", pr.name, s)
			}
			t.Logf("%s %s: %d frames, up to %d senders per receiver", pr.name, s, len(c.kv), most)
		}
	}
}

// gradHops is the dK/dV accumulator frames of the short-circuit backward:
// along each block's route, from each rank that needs it to the next, then
// from the last one home to the holder (keyed W).
func gradHops(plan *shard.Plan, tr *shard.Traffic) map[hop]int {
	out := map[hop]int{}
	w := len(plan.Ranks)
	for j := range plan.KBlockCount {
		h := tr.Holder(j)
		var needy []int
		for d := range w {
			if x := (h + d) % w; tr.Needs(x, j) {
				needy = append(needy, x)
			}
		}
		for i := 1; i < len(needy); i++ {
			out[hop{needy[i-1], needy[i], j, tr.Step(needy[i], j)}]++
		}
		if n := len(needy); n > 0 && needy[n-1] != h {
			out[hop{needy[n-1], h, j, w}]++
		}
	}
	return out
}

// runBackwardCounted runs the backward of plan through counting rings.
func runBackwardCounted(t *testing.T, g *gradProblem, plan *shard.Plan, opts ringattn.MemOptions, full bool) (dq, dk, dv []float32, kv, grads map[hop]int, falls int) {
	t.Helper()
	net := newNet(t, len(plan.Ranks), opts)
	defer net.Close()
	var mu sync.Mutex
	kv, grads = map[hop]int{}, map[hop]int{}
	wrap := func(r ringattn.Ring) ringattn.Ring { return gradCounter{r, &mu, kv, grads} }
	dq, dk, dv, err := ringattn.RunLocalBackwardNet(context.Background(), ringattn.BackwardLocalConfig{Net: net, Ring: wrap,
		FullRing: full, Progress: func(p ringattn.Progress) {
			if p.Done {
				mu.Lock()
				falls += p.Fallbacks
				mu.Unlock()
			}
		}}, &g.p, plan, g.q, g.k, g.v, g.o, g.lse, g.do)
	if err != nil {
		t.Fatalf("%s %s: %v", g.name, plan.Strategy, err)
	}
	return dq, dk, dv, kv, grads, falls
}

type gradCounter struct {
	ringattn.Ring
	mu        *sync.Mutex
	kv, grads map[hop]int
}

func (c gradCounter) Send(ctx context.Context, to int, f ringattn.Frame) error {
	c.mu.Lock()
	switch f.Kind {
	case ringattn.KindKV:
		c.kv[hop{c.Rank(), to, f.Block, f.Step}]++
	case ringattn.KindGrad:
		c.grads[hop{c.Rank(), to, f.Block, f.Step}]++
	}
	c.mu.Unlock()
	return c.Ring.Send(ctx, to, f)
}

// TestRingTrafficBackward: the backward's key/value blocks take the
// forward's routes and their dK/dV accumulators follow them and go home;
// the frames sent are exactly those, the gradients match the float64
// reference and equal those of the full ring (a rank that does not see a
// block only adds zeros there), for every ring strategy and mask.
func TestRingTrafficBackward(t *testing.T) {
	for _, pr := range problems() {
		g := newGradProblem(t, pr, 90)
		for _, ranks := range []int{1, 3, 4} {
			for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped} {
				plan := pr.plan(t, pr.request(ranks, 16, s))
				what := fmt.Sprintf("%s R=%d %s", pr.name, ranks, s)
				dq, dk, dv, kv, grads, falls := runBackwardCounted(t, g, plan, ringattn.MemOptions{}, false)
				if err := g.gradErr(dq, dk, dv); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				fq, fk, fv, fkv, fgrads, _ := runBackwardCounted(t, g, plan, ringattn.MemOptions{}, true)
				if !slices.Equal(dq, fq) || !slices.Equal(dk, fk) || !slices.Equal(dv, fv) {
					t.Fatalf("%s: gradients differ from the full ring's", what)
				}
				tr := plan.Traffic()
				if want := wantHops(plan, tr); !mapsEqual(kv, want) {
					t.Fatalf("%s: key/value frames %v, expected %v", what, kv, want)
				}
				if want := gradHops(plan, tr); !mapsEqual(grads, want) || falls != 0 {
					t.Fatalf("%s: accumulator frames %v, expected %v (%d fallbacks)", what, grads, want, falls)
				}
				if want := gradHops(plan, plan.FullRing()); !mapsEqual(fgrads, want) || len(fkv) != (ranks-1)*plan.KBlockCount {
					t.Fatalf("%s: full ring sent %d key/value and %d accumulator frames", what, len(fkv), len(fgrads))
				}
			}
		}
	}
}

// TestRingTrafficBackwardDropped: accumulators lost on a short-circuit hop
// (past ranks that do not need the block) or on the way home are
// recomputed from the store over the route's ranks, giving the same
// gradients.
func TestRingTrafficBackwardDropped(t *testing.T) {
	pr := newProblem("striped-window", 1, 4, 2, 157, 157, 16, kernels.Mask{Windowed: true, Left: 10, Right: 10}, 91)
	g := newGradProblem(t, pr, 92)
	plan := pr.plan(t, pr.request(4, 16, shard.Striped))
	w := len(plan.Ranks)
	wq, wk, wv, _, clean, _ := runBackwardCounted(t, g, plan, ringattn.MemOptions{}, false)
	skips, homes := 0, 0
	for h := range clean {
		switch {
		case h.step == w:
			homes++
		case (h.to-h.from+w)%w > 1:
			skips++
		}
	}
	if skips == 0 || homes == 0 {
		t.Fatalf("%d short-circuit and %d home accumulator frames: the test exercises nothing", skips, homes)
	}
	drop := func(from, to int, key ringattn.Key) ringattn.Fault {
		return ringattn.Fault{Drop: key.Kind == ringattn.KindGrad && ((to-from+w)%w > 1 || key.Step == w) && key.Block%2 == 0}
	}
	dq, dk, dv, _, _, falls := runBackwardCounted(t, g, plan, ringattn.MemOptions{RecvTimeout: 30 * time.Millisecond, Fault: drop}, false)
	if err := g.gradErr(dq, dk, dv); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dq, wq) || !slices.Equal(dk, wk) || !slices.Equal(dv, wv) {
		t.Fatal("recomputed accumulators changed the gradients")
	}
	if falls == 0 {
		t.Fatal("no accumulator was recomputed")
	}
	t.Logf("%d short-circuit and %d home accumulator frames; %d recomputed", skips, homes, falls)
}

// BenchmarkRingTraffic times the in-process ring on the full ring and on
// the short-circuit schedule (causal, B=1, H=8, D=128, N=benchN, block
// 1024, W=4) through counting rings, which send contiguous copies of every
// frame as a serializing transport does; it reports the key/value bytes
// sent and the wall and CPU time per job.
func BenchmarkRingTraffic(b *testing.B) {
	n := benchN(b)
	pr := &problem{name: "bench", p: kernels.Params{Shape: kernels.Shape{B: 1, Hq: 8, Hkv: 8, D: 128}, N: n, Nk: n,
		Mask: kernels.Mask{Causal: true}}}
	r := testrand.New(1)
	pr.q = r.Slice(8*n*128, testrand.Normal)
	pr.k = r.Slice(8*n*128, testrand.Normal)
	pr.v = r.Slice(8*n*128, testrand.Normal)
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag} {
		plan, err := shard.NewPlan(pr.request(4, 1024, s))
		if err != nil {
			b.Fatal(err)
		}
		for _, full := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/fullring=%v", s, full), func(b *testing.B) {
				var bytes int64
				var cpu time.Duration
				for b.Loop() {
					c0 := cpuTime(b)
					_, _, c, _, _ := runCounted(b, pr, plan, ringattn.MemOptions{}, full)
					cpu += cpuTime(b) - c0
					bytes = c.kvBytes
				}
				b.ReportMetric(float64(bytes)/(1<<20), "MiB-sent")
				b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			})
		}
	}
}
