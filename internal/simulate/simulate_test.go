package simulate

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/ringattn/ringattn/pkg/shard"
)

func mustPlan(t *testing.T, req shard.Request) *shard.Plan {
	t.Helper()
	p, err := shard.NewPlan(req)
	if err != nil {
		t.Fatalf("NewPlan(%+v): %v", req, err)
	}
	return p
}

// req is a request of the ring model's tests: auto picks among the
// sequence strategies only (HeadGroups 1); heads_test.go covers head groups.
func req(w, n int, causal bool, s shard.Strategy) shard.Request {
	r := shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: n, Nk: n, Block: 1024, Ranks: w,
		Strategy: s, Mask: shard.Mask{Causal: causal}}
	if s == shard.Auto {
		r.HeadGroups = 1
	}
	return r
}

func mustSim(t *testing.T, p *shard.Plan, cfg Config) *Result {
	t.Helper()
	r, err := Simulate(context.Background(), p, cfg)
	if err != nil {
		t.Fatalf("Simulate(%v): %v", p, err)
	}
	return r
}

func near(a, b, rel float64) bool {
	return math.Abs(a-b) <= rel*max(math.Abs(a), math.Abs(b))
}

// noTiles is a kernel without the tile model: time is FLOPs / speed.
func computeOnly(gflops float64) Config {
	return Config{GFLOPS: gflops, Cores: 1, TileRows: -1, TileCols: -1}
}

// TestSimulateOneWorkerIsPureCompute: one rank has no ring traffic, so the
// time is the plan's FLOPs at the kernel's speed, for every mask.
func TestSimulateOneWorkerIsPureCompute(t *testing.T) {
	for _, causal := range []bool{false, true} {
		p := mustPlan(t, req(1, 8192, causal, ""))
		cfg := computeOnly(100)
		cfg.LinkBytesPerSec = 1e9
		cfg.Latency = 1e-3
		cfg.SendSecPerByte, cfg.RecvSecPerByte = 1e-9, 1e-9
		r := mustSim(t, p, cfg)
		want := p.Ranks[0].Cost / 100e9
		if !near(r.Time, want, 1e-9) || r.Bytes != 0 || !near(r.Efficiency, 1, 1e-9) {
			t.Errorf("causal=%v: time %g s, bytes %d, efficiency %g; want %g s, 0 bytes, 1", causal, r.Time, r.Bytes, r.Efficiency, want)
		}
		if !near(r.FLOPs, p.Ranks[0].Cost, 1e-12) {
			t.Errorf("causal=%v: FLOPs %g, want the plan's cost %g", causal, r.FLOPs, p.Ranks[0].Cost)
		}
		// The tile model only adds the partly visible tiles of the diagonal.
		cfg.TileRows, cfg.TileCols = 0, 0
		rt := mustSim(t, p, cfg)
		if causal && !(rt.Time > want && rt.Time < 1.05*want) {
			t.Errorf("causal with tiles: time %g s, want a little over %g s", rt.Time, want)
		}
		if !causal && !near(rt.Time, want, 1e-9) {
			t.Errorf("full with tiles: time %g s, want %g s (192 divides nothing here, yet every tile is full)", rt.Time, want)
		}
		// Dearer diagonal tiles slow a causal mask down, not a full one.
		cfg.DiagonalTileCost = 2
		rd := mustSim(t, p, cfg)
		if causal && !(rd.Time > rt.Time) || !causal && !near(rd.Time, want, 1e-9) {
			t.Errorf("causal=%v: diagonal tiles at 2x: %g s, at 1x: %g s", causal, rd.Time, rt.Time)
		}
	}
}

// TestSimulateInfiniteBandwidthIsComputeBound: with free communication a
// ring takes its busiest rank's compute; a full mask balances perfectly, a
// causal one only as well as the strategy does (the plan's Imbalance).
func TestSimulateInfiniteBandwidthIsComputeBound(t *testing.T) {
	for _, tc := range []struct {
		causal bool
		s      shard.Strategy
	}{{false, shard.Contiguous}, {true, shard.Contiguous}, {true, shard.Zigzag}, {true, shard.Striped}} {
		p := mustPlan(t, req(8, 16384, tc.causal, tc.s))
		r := mustSim(t, p, computeOnly(50))
		var worst float64
		for _, rk := range p.Ranks {
			worst = max(worst, rk.Cost/50e9)
		}
		if !near(r.Time, worst, 1e-9) {
			t.Errorf("%s causal=%v: time %g s, want the busiest rank's compute %g s", tc.s, tc.causal, r.Time, worst)
		}
		if !near(r.Efficiency, 1/p.Imbalance, 1e-9) {
			t.Errorf("%s causal=%v: efficiency %g, want 1/imbalance = %g", tc.s, tc.causal, r.Efficiency, 1/p.Imbalance)
		}
		if want := p.BytesMoved(); r.Bytes != want {
			t.Errorf("%s causal=%v: %d bytes moved, the plan says %d", tc.s, tc.causal, r.Bytes, want)
		}
		cfg := computeOnly(50)
		cfg.FullRing = true
		if rf := mustSim(t, p, cfg); rf.Bytes != p.RingBytes() || !near(rf.Time, r.Time, 1e-9) {
			t.Errorf("%s causal=%v full ring: %d bytes in %g s, want the plan's %d and %g s", tc.s, tc.causal, rf.Bytes, rf.Time, p.RingBytes(), r.Time)
		}
		if tc.causal && !(r.Bytes < p.RingBytes()) {
			t.Errorf("%s causal: short-circuits move %d bytes, the full ring %d", tc.s, r.Bytes, p.RingBytes())
		}
	}
}

// TestSimulateZeroComputeIsBandwidthBound: with free compute a ring is as
// slow as its busiest link: the bytes a rank sends over its bandwidth.
func TestSimulateZeroComputeIsBandwidthBound(t *testing.T) {
	for _, window := range []float64{0, 1 << 40} {
		for _, w := range []int{2, 4, 8} {
			p := mustPlan(t, req(w, 16384, false, shard.Contiguous))
			cfg := Config{GFLOPS: math.Inf(1), Cores: 1, LinkBytesPerSec: 1.25e9, WindowBytes: window}
			r := mustSim(t, p, cfg)
			var worst int64
			for _, rk := range p.Ranks {
				worst = max(worst, rk.Bytes)
			}
			if want := float64(worst) / 1.25e9; !near(r.Time, want, 1e-9) {
				t.Errorf("W=%d window %g: time %g s, want bytes/bandwidth = %g s", w, window, r.Time, want)
			}
		}
	}
}

// TestSimulateLatencyPerStep: each of the W-1 exchanges pays the latency
// once.
func TestSimulateLatencyPerStep(t *testing.T) {
	p := mustPlan(t, req(4, 8192, false, shard.Contiguous))
	r := mustSim(t, p, Config{GFLOPS: math.Inf(1), Cores: 1, Latency: 1e-3, WindowBytes: 1 << 40})
	// The window per round trip adds 16 MiB / (2^40 B / 2 ms) per step.
	if want := 3e-3; !near(r.Time, want, 1e-4) {
		t.Errorf("time %g s, want 3 latencies = %g s", r.Time, want)
	}
}

// TestSimulateCausalZigzagBeatsContiguous: zigzag balances a causal mask,
// contiguous does not.
func TestSimulateCausalZigzagBeatsContiguous(t *testing.T) {
	cfg := Config{GFLOPS: 100, Cores: 4, LinkBytesPerSec: 12.5e9, Latency: 20e-6,
		SendSecPerByte: 0.2e-9, RecvSecPerByte: 0.2e-9, StepOverhead: 50e-6}
	for _, w := range []int{4, 8, 16} {
		zz := mustSim(t, mustPlan(t, req(w, 65536, true, shard.Zigzag)), cfg)
		ct := mustSim(t, mustPlan(t, req(w, 65536, true, shard.Contiguous)), cfg)
		if !(zz.Efficiency > ct.Efficiency) || !(zz.Time < ct.Time) {
			t.Errorf("W=%d: zigzag %g s (efficiency %.3f), contiguous %g s (%.3f); want zigzag faster",
				w, zz.Time, zz.Efficiency, ct.Time, ct.Efficiency)
		}
		if zz.Efficiency > 1 || zz.Efficiency <= 0 {
			t.Errorf("W=%d: efficiency %g out of (0, 1]", w, zz.Efficiency)
		}
	}
}

// TestSimulateMonotonic: more tokens take longer; more workers take less
// time when compute dominates, and are less efficient on a slow link.
func TestSimulateMonotonic(t *testing.T) {
	fast := Config{GFLOPS: 100, Cores: 8, LinkBytesPerSec: 12.5e9, Latency: 10e-6,
		SendSecPerByte: 0.1e-9, RecvSecPerByte: 0.1e-9, StepOverhead: 20e-6}
	slow := fast
	slow.LinkBytesPerSec = 1.25e9
	for _, causal := range []bool{false, true} {
		prev := 0.0
		for _, n := range []int{8192, 16384, 32768, 65536} {
			r := mustSim(t, mustPlan(t, req(8, n, causal, "")), fast)
			if !(r.Time > prev) {
				t.Errorf("causal=%v N=%d: time %g s, not above N/2's %g s", causal, n, r.Time, prev)
			}
			prev = r.Time
		}
		prevT, prevE := math.Inf(1), 1.0
		for _, w := range []int{1, 2, 4, 8, 16} {
			p := mustPlan(t, req(w, 65536, causal, ""))
			rf := mustSim(t, p, fast)
			if !(rf.Time < prevT) {
				t.Errorf("causal=%v W=%d: time %g s, not below W/2's %g s", causal, w, rf.Time, prevT)
			}
			prevT = rf.Time
			rs := mustSim(t, p, slow)
			if !(rs.Efficiency <= prevE*(1+1e-9)) || rs.Time < rf.Time*(1-1e-9) {
				t.Errorf("causal=%v W=%d slow link: efficiency %g after %g at W/2, time %g s (fast link %g s)",
					causal, w, rs.Efficiency, prevE, rs.Time, rf.Time)
			}
			prevE = rs.Efficiency
		}
	}
}

// TestSimulateTransportCPUSlowsCompute: on a host with one core the
// transport's CPU comes out of the kernel's time.
func TestSimulateTransportCPUSlowsCompute(t *testing.T) {
	p := mustPlan(t, req(4, 16384, false, shard.Contiguous))
	base := computeOnly(20)
	r0 := mustSim(t, p, base)
	withCPU := base
	withCPU.SendSecPerByte, withCPU.RecvSecPerByte = 0.5e-9, 0.5e-9
	r1 := mustSim(t, p, withCPU)
	var cpu float64
	for _, rk := range r1.Ranks {
		cpu = max(cpu, rk.TransportCPU)
	}
	// Each rank sends and receives its neighbours' bytes: 1 ns per byte.
	if want := float64(p.Ranks[0].Bytes) * 1e-9; !near(cpu, want, 1e-6) {
		t.Errorf("transport CPU per rank %g s, want %g s", cpu, want)
	}
	if !(r1.Time > r0.Time) || r1.Time > r0.Time+cpu*(1+1e-9) {
		t.Errorf("time with transport CPU %g s, without %g s; want between them and +%g s", r1.Time, r0.Time, cpu)
	}
}

// TestSimulateSharedHost: W ranks on one host of C cores take as long as
// one rank on it (the full mask balances; no link).
func TestSimulateSharedHost(t *testing.T) {
	p1 := mustPlan(t, req(1, 16384, false, ""))
	p4 := mustPlan(t, req(4, 16384, false, shard.Contiguous))
	cfg := computeOnly(40)
	cfg.Cores = 2
	r1 := mustSim(t, p1, cfg)
	cfg.RanksPerHost = 4
	r4 := mustSim(t, p4, cfg)
	if !near(r1.Time, r4.Time, 1e-9) || !near(r4.Efficiency, 1, 1e-9) {
		t.Errorf("4 ranks on one host: %g s (efficiency %g), one rank %g s", r4.Time, r4.Efficiency, r1.Time)
	}
}

// TestSimulateSplitKV: split-KV folds once and sends log2(W) levels of
// partials up the tree.
func TestSimulateSplitKV(t *testing.T) {
	p := mustPlan(t, shard.Request{B: 1, Hq: 8, Hkv: 8, D: 128, N: 1024, Nk: 65536, Block: 1024, Ranks: 8,
		Strategy: shard.SplitKV})
	cfg := Config{GFLOPS: math.Inf(1), Cores: 1, LinkBytesPerSec: 1e9, WindowBytes: 1 << 40}
	r := mustSim(t, p, cfg)
	partial := 8.0 * 1024 * 129 * 4
	if want := 3 * partial / 1e9; !near(r.Time, want, 1e-9) {
		t.Errorf("time %g s, want 3 levels of partials = %g s", r.Time, want)
	}
	var sent int64
	for _, rk := range p.Ranks {
		sent += rk.Bytes
	}
	if r.Bytes != sent {
		t.Errorf("%d bytes moved, the plan says %d", r.Bytes, sent)
	}
	c := computeOnly(10)
	rc := mustSim(t, p, c)
	var worst float64
	for _, rk := range p.Ranks {
		worst = max(worst, rk.Cost/10e9)
	}
	if !near(rc.Time, worst, 1e-9) {
		t.Errorf("compute-only split-KV: %g s, want the largest range's %g s", rc.Time, worst)
	}
}

func TestSimulateConfigErrors(t *testing.T) {
	p := mustPlan(t, req(2, 4096, false, ""))
	for _, cfg := range []Config{
		{GFLOPS: 0, Cores: 1},
		{GFLOPS: math.NaN(), Cores: 1},
		{GFLOPS: 1, Cores: 0},
		{GFLOPS: 1, Cores: 1, SendSecPerByte: -1},
		{GFLOPS: 1, Cores: 1, LinkBytesPerSec: -1},
		{GFLOPS: 1, Cores: 1, Latency: math.Inf(1)},
		{GFLOPS: 1, Cores: 1, RanksPerHost: -1},
	} {
		if _, err := Simulate(context.Background(), p, cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("Simulate(%+v) = %v, want ErrInvalid", cfg, err)
		}
	}
	// MaxEvents at the limit and just under it.
	r := mustSim(t, p, Config{GFLOPS: 1, Cores: 1})
	if _, err := Simulate(context.Background(), p, Config{GFLOPS: 1, Cores: 1, MaxEvents: r.Events}); err != nil {
		t.Errorf("MaxEvents = the %d events needed: %v", r.Events, err)
	}
	if _, err := Simulate(context.Background(), p, Config{GFLOPS: 1, Cores: 1, MaxEvents: r.Events - 1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("MaxEvents one short: %v, want ErrInvalid", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Simulate(ctx, p, Config{GFLOPS: 1, Cores: 1}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

// TestSimulateLoadsMatchPlanCost: each rank's simulated kernel work is the
// plan's Cost for that rank, for every strategy and mask, and every step
// folds what the rank holds at that step.
func TestSimulateLoadsMatchPlanCost(t *testing.T) {
	masks := map[string]shard.Mask{
		"full":   {},
		"causal": {Causal: true},
		"window": {Windowed: true, Left: 700, Right: 0},
		"docs":   {Causal: true, SeqLens: []int{3000, 1500, 3692}},
	}
	for name, m := range masks {
		for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV} {
			p := mustPlan(t, shard.Request{B: 2, Hq: 4, Hkv: 2, D: 64, N: 8192, Nk: 8192, Block: 512, Ranks: 4,
				Strategy: s, Mask: m})
			pl, err := Loads(context.Background(), p, computeOnly(1))
			if err != nil {
				t.Fatal(err)
			}
			for r, rl := range pl.ranks {
				var vis float64
				for step, st := range rl.steps {
					vis += st.visible
					if st.visible > 0 && s != shard.SplitKV {
						// Some block held at this step is visible to r.
						seen := false
						for _, kj := range p.HeldKV(r, step) {
							for _, qi := range p.Ranks[r].QBlocks {
								seen = seen || p.Visible(qi, kj)
							}
						}
						if !seen {
							t.Errorf("%s %s rank %d step %d: work %g with nothing visible held", name, s, r, step, st.visible)
						}
					}
				}
				if !near(vis, p.Ranks[r].Cost, 1e-12) && !(vis == 0 && p.Ranks[r].Cost == 0) {
					t.Errorf("%s %s rank %d: simulated work %g FLOPs, plan cost %g", name, s, r, vis, p.Ranks[r].Cost)
				}
			}
			// Each rank sends what the plan's key/value schedule says.
			res, err := pl.Simulate(context.Background(), computeOnly(1))
			if err != nil {
				t.Fatal(err)
			}
			tr := p.Traffic()
			for r, rk := range res.Ranks {
				want := tr.SentBytes(r)
				if s == shard.SplitKV {
					want = p.Ranks[r].Bytes
				}
				if rk.BytesSent != want {
					t.Errorf("%s %s rank %d: sent %d bytes, the schedule says %d", name, s, r, rk.BytesSent, want)
				}
			}
		}
	}
}

// TestSimulateFlowFloor: a flow paused at its floor waits, using no link,
// until the floor is lifted.
func TestSimulateFlowFloor(t *testing.T) {
	s := newSim(3, 1, 10, 0, 0)
	var marked, done, other float64
	f := s.flow(0, 1, 100, 0, 0, 20, nil, nil, func(now float64) { marked = now }, func(now float64) { done = now })
	f.floor = 60
	// Another flow out of host 0 gets the whole link while f waits.
	s.flow(0, 2, 40, 0, 0, 0, nil, nil, func(float64) {}, func(now float64) { other = now })
	s.timer(10, func(float64) { f.floor = 0 })
	if !s.run() {
		t.Fatal("simulation stalled")
	}
	// f and the other flow share 10 B/s until f pauses at 60 left (t=8,
	// other has 0 left then), f resumes alone at t=10: 40 more bytes take
	// 4 s to the mark (20 left), 6 s to the end.
	if !near(other, 8, 1e-9) || !near(marked, 14, 1e-9) || !near(done, 16, 1e-9) {
		t.Errorf("other done %g, f marked %g, done %g; want 8, 14, 16", other, marked, done)
	}
}

// TestSimulateReceiveBuffer: a receiver's buffer smaller than a step's
// frames never makes a ring faster, and never deadlocks it.
func TestSimulateReceiveBuffer(t *testing.T) {
	for _, s := range []shard.Strategy{shard.Contiguous, shard.Zigzag, shard.Striped} {
		p := mustPlan(t, req(8, 32768, true, s))
		cfg := Config{GFLOPS: 100, Cores: 4, LinkBytesPerSec: 0.3e9, WindowBytes: 1 << 20, BufferBytes: 1 << 50}
		big := mustSim(t, p, cfg)
		cfg.BufferBytes = 1
		tiny := mustSim(t, p, cfg)
		if tiny.Time < big.Time*(1-1e-9) {
			t.Errorf("%s: %g s with a 1-byte buffer, %g s with an unbounded one", s, tiny.Time, big.Time)
		}
	}
	if _, err := Simulate(context.Background(), mustPlan(t, req(2, 4096, false, "")), Config{GFLOPS: 1, Cores: 1, BufferBytes: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("BufferBytes -1: %v, want ErrInvalid", err)
	}
}

// TestSimulateNATSServers: frames relayed by NATS servers share the
// servers' links: with one server every step's frames of all W ranks cross
// its ingress; with a server per host each frame crosses two servers'
// links (the sender's and, by the route, the receiver's).
func TestSimulateNATSServers(t *testing.T) {
	const w = 4
	p := mustPlan(t, req(w, 16384, false, shard.Contiguous))
	var worst int64
	for _, rk := range p.Ranks {
		worst = max(worst, rk.Bytes)
	}
	direct := float64(worst) / 1e9
	for _, tc := range []struct {
		servers int
		factor  float64
	}{{0, 1}, {1, w}, {2, w}, {w, 2}} {
		cfg := Config{GFLOPS: math.Inf(1), Cores: 1, LinkBytesPerSec: 1e9, WindowBytes: 1 << 40, NATSServers: tc.servers}
		r := mustSim(t, p, cfg)
		if want := tc.factor * direct; !near(r.Time, want, 1e-9) {
			t.Errorf("%d servers: %g s, want %g x bytes/bandwidth = %g s", tc.servers, r.Time, tc.factor, want)
		}
	}
	// A faster server link than the workers' restores the direct time.
	cfg := Config{GFLOPS: math.Inf(1), Cores: 1, LinkBytesPerSec: 1e9, WindowBytes: 1 << 40, NATSServers: 1, ServerBytesPerSec: w * 1e9}
	if r := mustSim(t, p, cfg); !near(r.Time, direct, 1e-9) {
		t.Errorf("one server %dx faster: %g s, want %g s", w, r.Time, direct)
	}
	cfg.NATSServers = -1
	if _, err := Simulate(context.Background(), p, cfg); !errors.Is(err, ErrInvalid) {
		t.Errorf("NATSServers -1: %v, want ErrInvalid", err)
	}
}
