package simulate

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/ringattn/ringattn/pkg/shard"
)

// Kernel tile of the amd64 kernels (pkg/kernels: br = bc = 192 query and
// key rows per unit of work), the default of Config.TileRows/TileCols.
const (
	DefaultTileRows = 192
	DefaultTileCols = 192
)

// DefaultWindowBytes and DefaultPieceBytes are pkg/transport's ring
// defaults (RingConfig.WindowBytes, PieceBytes).
const (
	DefaultWindowBytes = 16 << 20
	DefaultPieceBytes  = 4 << 20
	DefaultBufferBytes = 256 << 20
)

// ErrInvalid is wrapped by every configuration error of this package.
var ErrInvalid = errors.New("simulate: invalid configuration")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Config describes the machines and the network a plan runs on.
type Config struct {
	// GFLOPS is one host's kernel speed on all its cores at full tile
	// occupancy (a dense fold of many query tiles), in GFLOP/s of visible
	// pairs (4·B·Hq·D per pair). +Inf makes compute free.
	GFLOPS float64
	// Cores per host (>= 1): the kernel runs on all of them; the transport
	// uses one per stream and takes them from the kernel while it runs.
	Cores int
	// RanksPerHost is how many ranks share a host (0 means 1: one worker
	// per machine). The in-process validation puts all W ranks on one host.
	RanksPerHost int
	// SendSecPerByte and RecvSecPerByte are the transport's CPU cost per
	// payload byte on the sending and the receiving host, in core-seconds
	// (encoding, CRC32C, copies, the NATS client and, in one process, the
	// server).
	SendSecPerByte, RecvSecPerByte float64
	// LinkBytesPerSec is each host's network bandwidth per direction
	// (ranks on one host exchange frames without it); 0 means unlimited.
	LinkBytesPerSec float64
	// NATSServers, when > 0, is the number of NATS servers every frame
	// between hosts passes through (host h connects to server h mod
	// NATSServers; a frame between two servers crosses their route too),
	// each with ServerBytesPerSec per direction (0 means LinkBytesPerSec).
	// 0 means a server on every host (frames cross each host's link once
	// each way, as over direct links).
	NATSServers       int
	ServerBytesPerSec float64
	// Latency is the one-way network latency in seconds, paid once per
	// frame set (the pieces of a step's frames are pipelined).
	Latency float64
	// WindowBytes is the transport's flow-control window: a Send returns
	// once at most this much of its frame is still unacknowledged, and a
	// flow moves at most a window per round trip (0 means
	// DefaultWindowBytes).
	WindowBytes float64
	// StepOverhead is a fixed delay per ring step per rank, in seconds
	// (goroutines, frame bookkeeping), using no CPU in the model.
	StepOverhead float64
	// MergeSecPerByte is the CPU cost of finalizing an output and of
	// merging a split-KV partial, in core-seconds per byte of (O, LSE).
	MergeSecPerByte float64
	// TileRows and TileCols are the kernel's tile (0 means the defaults;
	// negative turns the tile model off). Partly visible tiles cost a
	// whole tile, and a fold of U = B·Hq·⌈rows/TileRows⌉ units keeps only
	// U/⌈U/Cores⌉ cores busy.
	TileRows, TileCols int
	// DiagonalTileCost is what a partly visible tile costs, in whole
	// tiles (0 means 1): masking and the softmax's edge cases make the
	// causal diagonal's tiles dearer than dense ones (MeasureKernelCausal
	// measures about 1.8 on the amd64 kernels).
	DiagonalTileCost float64
	// BufferBytes is how many bytes of frames a receiving transport holds
	// before its engine asks for them; beyond that (plus a window in
	// flight) a sender waits (0 means DefaultBufferBytes). The engine asks
	// for step s+1's frames when it starts step s.
	BufferBytes float64
	// FullRing passes every key/value block through every rank, as the
	// forward did before short-circuits (ringattn.RankConfig.FullRing);
	// false follows shard.Plan.Traffic.
	FullRing bool
	// MaxEvents bounds the simulation (0 means no bound).
	MaxEvents int
}

func (c *Config) normalized() (Config, error) {
	n := *c
	switch {
	case !(c.GFLOPS > 0):
		return n, invalid("GFLOPS = %g, expected > 0", c.GFLOPS)
	case c.Cores < 1:
		return n, invalid("Cores = %d, expected >= 1", c.Cores)
	case c.RanksPerHost < 0:
		return n, invalid("RanksPerHost = %d, expected >= 0", c.RanksPerHost)
	case !(c.SendSecPerByte >= 0) || !(c.RecvSecPerByte >= 0) || math.IsInf(c.SendSecPerByte+c.RecvSecPerByte, 1):
		return n, invalid("SendSecPerByte, RecvSecPerByte = %g, %g, expected finite >= 0", c.SendSecPerByte, c.RecvSecPerByte)
	case c.NATSServers < 0:
		return n, invalid("NATSServers = %d, expected >= 0", c.NATSServers)
	case !(c.ServerBytesPerSec >= 0):
		return n, invalid("ServerBytesPerSec = %g, expected >= 0 (0: LinkBytesPerSec)", c.ServerBytesPerSec)
	case !(c.LinkBytesPerSec >= 0):
		return n, invalid("LinkBytesPerSec = %g, expected >= 0 (0: unlimited)", c.LinkBytesPerSec)
	case !(c.Latency >= 0) || math.IsInf(c.Latency, 1):
		return n, invalid("Latency = %g, expected finite >= 0", c.Latency)
	case !(c.WindowBytes >= 0):
		return n, invalid("WindowBytes = %g, expected >= 0", c.WindowBytes)
	case !(c.BufferBytes >= 0):
		return n, invalid("BufferBytes = %g, expected >= 0", c.BufferBytes)
	case !(c.StepOverhead >= 0) || math.IsInf(c.StepOverhead, 1):
		return n, invalid("StepOverhead = %g, expected finite >= 0", c.StepOverhead)
	case !(c.MergeSecPerByte >= 0) || math.IsInf(c.MergeSecPerByte, 1):
		return n, invalid("MergeSecPerByte = %g, expected finite >= 0", c.MergeSecPerByte)
	case !(c.DiagonalTileCost >= 0) || math.IsInf(c.DiagonalTileCost, 1):
		return n, invalid("DiagonalTileCost = %g, expected finite >= 0 (0: 1)", c.DiagonalTileCost)
	case c.MaxEvents < 0:
		return n, invalid("MaxEvents = %d, expected >= 0", c.MaxEvents)
	}
	if n.RanksPerHost == 0 {
		n.RanksPerHost = 1
	}
	if n.LinkBytesPerSec == 0 {
		n.LinkBytesPerSec = math.Inf(1)
	}
	if n.ServerBytesPerSec == 0 {
		n.ServerBytesPerSec = n.LinkBytesPerSec
	}
	if n.WindowBytes == 0 {
		n.WindowBytes = DefaultWindowBytes
	}
	if n.BufferBytes == 0 {
		n.BufferBytes = DefaultBufferBytes
	}
	if n.TileRows == 0 {
		n.TileRows = DefaultTileRows
	}
	if n.TileCols == 0 {
		n.TileCols = DefaultTileCols
	}
	if n.DiagonalTileCost == 0 {
		n.DiagonalTileCost = 1
	}
	return n, nil
}

// Result is a simulated run of a plan.
type Result struct {
	// Time is the predicted wall time in seconds: until the last rank has
	// written its outputs (ring) or rank 0 has merged the last partial
	// (split-KV). Loading the inputs from the store is not modelled.
	Time float64
	// FLOPs are the plan's visible FLOPs (the sum of its ranks' Cost).
	FLOPs float64
	// Ideal is FLOPs / (hosts × GFLOPS): the time with perfect balance and
	// free communication.
	Ideal float64
	// Efficiency is Ideal / Time.
	Efficiency float64
	// Bytes are the bytes moved between ranks (key/value frames, split-KV
	// partials).
	Bytes int64
	// ComputeFLOPs is what the kernel computes, tiles included (>= FLOPs).
	ComputeFLOPs float64
	// Ranks are each rank's figures.
	Ranks []RankResult
	// Events is the number of simulation events.
	Events int
}

// RankResult is one rank's share of a simulated run.
type RankResult struct {
	// Finish is when the rank was done, in seconds.
	Finish float64
	// Busy is the wall time the rank's kernel was running; Idle is Finish
	// minus Busy (waiting for frames, overheads, its transport).
	Busy, Idle float64
	// ComputeCPU and TransportCPU are the core-seconds its kernel and its
	// transport (both ends of its frames) used.
	ComputeCPU, TransportCPU float64
	// BytesSent are the bytes the rank sent.
	BytesSent int64
}

// stepLoad is one rank's work at one ring step.
type stepLoad struct {
	flops   float64 // computed FLOPs, tiles included
	visible float64 // visible FLOPs
	wall    float64 // seconds at full speed on the fold's cores: Σ flops/(per-core speed · threads)
}

// sendGroup is consecutive key/value frames to one rank.
type sendGroup struct {
	to    int
	bytes int64
}

// rankLoad is one rank's work over the plan.
type rankLoad struct {
	steps []stepLoad // by ring step (split-KV: one)
	// sends[s] are the frame groups the rank sends during ring step s
	// (for its receivers' step s+1), in the engine's order: ascending
	// block, consecutive blocks to one receiver grouped.
	sends [][]sendGroup
	// expect[s] is how many groups the rank receives for step s.
	expect   []int
	outBytes float64 // (O, LSE) bytes of its query rows
}

// Simulate predicts the run of plan on the machines of cfg. It checks ctx
// between ranks while computing the loads and every few thousand events.
func Simulate(ctx context.Context, plan *shard.Plan, cfg Config) (*Result, error) {
	loads, err := Loads(ctx, plan, cfg)
	if err != nil {
		return nil, err
	}
	return loads.Simulate(ctx, cfg)
}

// Simulate runs the event simulation of the loads on cfg's network; the
// kernel part of cfg (GFLOPS, Cores, TileRows, TileCols) must be the one the
// loads were computed for, and so must FullRing.
func (pl *PlanLoads) Simulate(ctx context.Context, cfg Config) (*Result, error) {
	c, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	if c.GFLOPS != pl.cfg.GFLOPS || c.Cores != pl.cfg.Cores || c.TileRows != pl.cfg.TileRows || c.TileCols != pl.cfg.TileCols ||
		c.DiagonalTileCost != pl.cfg.DiagonalTileCost || c.FullRing != pl.cfg.FullRing {
		return nil, invalid("the loads were computed for GFLOPS=%g Cores=%d tiles %dx%d (diagonal %g) FullRing=%v, not GFLOPS=%g Cores=%d tiles %dx%d (diagonal %g) FullRing=%v",
			pl.cfg.GFLOPS, pl.cfg.Cores, pl.cfg.TileRows, pl.cfg.TileCols, pl.cfg.DiagonalTileCost, pl.cfg.FullRing,
			c.GFLOPS, c.Cores, c.TileRows, c.TileCols, c.DiagonalTileCost, c.FullRing)
	}
	plan := pl.plan
	w := len(plan.Ranks)
	hosts := (w + c.RanksPerHost - 1) / c.RanksPerHost
	host := func(r int) int { return r / c.RanksPerHost }
	sm := newSim(hosts, float64(c.Cores), c.LinkBytesPerSec, c.WindowBytes, 2*c.Latency)
	sm.maxEvent = c.MaxEvents
	sm.servers, sm.serverBps = c.NATSServers, c.ServerBytesPerSec
	res := &Result{FLOPs: pl.flops, Ranks: make([]RankResult, w)}
	for r := range pl.ranks {
		for _, st := range pl.ranks[r].steps {
			res.ComputeFLOPs += st.flops
		}
	}
	rr := res.Ranks
	charge := func(r int) func(float64) { return func(x float64) { rr[r].TransportCPU += x } }
	perCore := c.GFLOPS * 1e9 / float64(c.Cores)

	// fold starts rank r's kernel on a step's load and calls done when it
	// has finished.
	fold := func(r int, st stepLoad, done func(float64)) {
		if st.flops == 0 || math.IsInf(perCore, 1) {
			done(sm.now)
			return
		}
		work := st.flops / perCore
		start := sm.now
		sm.cpu(host(r), work, work/st.wall, func(x float64) { rr[r].ComputeCPU += x }, func(now float64) {
			rr[r].Busy += now - start
			done(now)
		})
	}
	finish := func(r int) func(float64) {
		return func(now float64) { rr[r].Finish = now }
	}
	latency := func(done func(float64)) func(float64) {
		return func(float64) { sm.timer(c.Latency, done) }
	}

	if plan.Strategy == shard.SplitKV {
		pl.splitKV(sm, c, res, host, fold, charge, latency, finish)
	} else {
		pl.ring(sm, c, res, host, fold, charge, latency, finish)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !sm.run() {
		if c.MaxEvents > 0 && sm.events > c.MaxEvents {
			return nil, invalid("the simulation needs more than MaxEvents = %d events", c.MaxEvents)
		}
		return nil, fmt.Errorf("simulate: the simulation stalled at %g s (an activity cannot progress)", sm.now)
	}
	res.Events = sm.events
	for r := range rr {
		res.Time = max(res.Time, rr[r].Finish)
		rr[r].Idle = rr[r].Finish - rr[r].Busy
		res.Bytes += rr[r].BytesSent
	}
	res.Ideal = res.FLOPs / (float64(hosts) * c.GFLOPS * 1e9)
	switch {
	case res.Time > 0:
		res.Efficiency = res.Ideal / res.Time
	case res.Ideal == 0:
		res.Efficiency = 1
	}
	return res, nil
}

// ring schedules the W steps of a ring strategy: at step s rank r folds
// the blocks of rank (r-s) mod W it needs while it sends the blocks its
// receivers fold at step s+1 and receives those it folds at step s+1; the
// step ends when all three are done (pkg/ringattn's rankRun.ringSteps).
// A frame group moves as soon as its sender gets to it (the receiver's
// transport takes pieces in before its Recv asks for them); Send returns
// with a window still in flight.
func (pl *PlanLoads) ring(sm *sim, c Config, res *Result, host func(int) int,
	fold func(int, stepLoad, func(float64)), charge func(int) func(float64),
	latency func(func(float64)) func(float64), finish func(int) func(float64)) {
	w := len(pl.ranks)
	rr := res.Ranks
	// arrived[r][s]: groups rank r has received for step s; waiting[r][s]:
	// what to call when all have arrived.
	arrived := make([][]int, w)
	waiting := make([][]func(float64), w)
	for r := range arrived {
		arrived[r] = make([]int, pl.plan.Steps)
		waiting[r] = make([]func(float64), pl.plan.Steps)
	}
	// started[r] is the last step rank r started; gates[r][s] are the
	// flows to r paused until r starts step s (and asks for their frames).
	started := make([]int, w)
	gates := make([][][]*activity, w)
	for r := range started {
		started[r] = -1
		gates[r] = make([][]*activity, pl.plan.Steps)
	}
	arrive := func(r, s int) func(float64) {
		return func(now float64) {
			arrived[r][s]++
			if f := waiting[r][s]; f != nil && arrived[r][s] == pl.ranks[r].expect[s] {
				waiting[r][s] = nil
				f(now)
			}
		}
	}
	var step func(r, s int)
	step = func(r, s int) {
		rl := &pl.ranks[r]
		started[r] = s
		for _, f := range gates[r][s] {
			f.floor = 0
		}
		gates[r][s] = nil
		pending := 1
		end := func(now float64) {
			pending--
			if pending > 0 {
				return
			}
			sm.timer(c.StepOverhead, func(now float64) {
				if s+1 < pl.plan.Steps {
					step(r, s+1)
					return
				}
				// Finalize the states and write the outputs.
				sm.cpu(host(r), rl.outBytes*c.MergeSecPerByte, 1, nil, finish(r))
			})
		}
		if s+1 < pl.plan.Steps {
			if groups := rl.sends[s]; len(groups) > 0 {
				// One goroutine sends the groups in turn; each Send returns
				// with a window in flight.
				pending++
				var send func(i int)
				send = func(i int) {
					if i == len(groups) {
						end(sm.now)
						return
					}
					g := groups[i]
					rr[r].BytesSent += g.bytes
					f := sm.flow(host(r), host(g.to), float64(g.bytes), c.SendSecPerByte, c.RecvSecPerByte, c.WindowBytes,
						charge(r), charge(g.to), func(float64) { send(i + 1) }, latency(arrive(g.to, s+1)))
					if f != nil && started[g.to] < s {
						if floor := float64(g.bytes) - c.BufferBytes - c.WindowBytes; floor > 0 {
							f.floor = floor
							gates[g.to][s] = append(gates[g.to][s], f)
						}
					}
				}
				send(0)
			}
			if rl.expect[s+1] > 0 {
				pending++
				if arrived[r][s+1] == rl.expect[s+1] {
					end(sm.now)
				} else {
					waiting[r][s+1] = end
				}
			}
		}
		fold(r, rl.steps[s], end)
	}
	for r := range w {
		step(r, 0)
	}
}

// splitKV schedules a split-KV plan: every rank folds its key range into
// all query rows, then the partials go up the binary tree of
// plan.Reduction: a sender is done once its partial is published, a
// receiver merges each child's partial (in level order) after its own.
func (pl *PlanLoads) splitKV(sm *sim, c Config, res *Result, host func(int) int,
	fold func(int, stepLoad, func(float64)), charge func(int) func(float64),
	latency func(func(float64)) func(float64), finish func(int) func(float64)) {
	w := len(pl.ranks)
	rr := res.Ranks
	partial := pl.ranks[0].outBytes // all ranks hold all planned rows
	type key struct{ to, level int }
	arrived := map[key]bool{}
	waiting := map[key]func(float64){}
	var level func(r, l int)
	level = func(r, l int) {
		if 1<<l >= w {
			// Rank 0: finalize and write.
			sm.cpu(host(r), partial*c.MergeSecPerByte, 1, nil, finish(r))
			return
		}
		if r&(1<<l) != 0 {
			to := r - 1<<l
			b := int64(partial)
			rr[r].BytesSent += b
			k := key{to, l}
			sm.flow(host(r), host(to), partial, c.SendSecPerByte, c.RecvSecPerByte, c.WindowBytes,
				charge(r), charge(to), finish(r), latency(func(now float64) {
					arrived[k] = true
					if f := waiting[k]; f != nil {
						delete(waiting, k)
						f(now)
					}
				}))
			return
		}
		if r+1<<l >= w {
			level(r, l+1)
			return
		}
		merge := func(float64) {
			sm.cpu(host(r), 2*partial*c.MergeSecPerByte, 1, nil, func(float64) { level(r, l+1) })
		}
		if k := (key{r, l}); arrived[k] {
			merge(sm.now)
		} else {
			waiting[k] = merge
		}
	}
	for r := range w {
		fold(r, pl.ranks[r].steps[0], func(float64) { level(r, 0) })
	}
}

// Plan returns the plan the loads were computed for.
func (pl *PlanLoads) Plan() *shard.Plan { return pl.plan }
