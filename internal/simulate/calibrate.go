package simulate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"syscall"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
)

// KernelSpeed is a measured kernel speed.
type KernelSpeed struct {
	GFLOPS float64 // wall-clock GFLOP/s on all cores
	// CPUGFLOPS is GFLOP per CPU-second of the process (steadier than
	// wall time on a loaded machine).
	CPUGFLOPS float64
	// DiagonalTileCost is what a tile on a causal diagonal costs in whole
	// dense tiles (Config.DiagonalTileCost); 0 when not measured.
	DiagonalTileCost float64
	Runs             int
	Shape            string
}

// kernelTiles is the tiles per side of MeasureKernel's problem.
const kernelTiles = 12

// MeasureKernel runs kernels.Attention (dense, B=1, H=heads, N=Nk=2304 =
// 12 kernel tiles, D=d, on all cores) until dur has passed, at least twice,
// and returns its wall-clock speed: the GFLOPS of Config for this machine.
// Wall time, not CPU time: on a shared machine the ring sees the same load.
func MeasureKernel(ctx context.Context, dur time.Duration, heads, d int) (KernelSpeed, error) {
	return measureKernel(ctx, dur, heads, d, false)
}

// MeasureKernelCausal is MeasureKernel alternating dense and causal runs
// of the same shape, which also measures DiagonalTileCost from their CPU
// times: the causal run's CPU time at the dense rate is n(n-1)/2 whole
// tiles below the diagonal plus n diagonal tiles of that cost each.
func MeasureKernelCausal(ctx context.Context, dur time.Duration, heads, d int) (KernelSpeed, error) {
	return measureKernel(ctx, dur, heads, d, true)
}

func measureKernel(ctx context.Context, dur time.Duration, heads, d int, causal bool) (KernelSpeed, error) {
	const n = kernelTiles * DefaultTileRows
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: heads, Hkv: heads, D: d}, N: n, Nk: n}
	if err := p.Validate(); err != nil {
		return KernelSpeed{}, err
	}
	pc := p
	pc.Mask.Causal = true
	r := testrand.New(1)
	q := r.Slice(heads*n*d, testrand.Normal)
	k := r.Slice(heads*n*d, testrand.Normal)
	v := r.Slice(heads*n*d, testrand.Normal)
	o := make([]float32, len(q))
	// One warm-up run (page faults, scratch buffers).
	if err := kernels.Attention(&p, q, k, v, o, nil); err != nil {
		return KernelSpeed{}, err
	}
	var secs, cpu, ccpu float64
	runs := 0
	for start := time.Now(); runs < 2 || time.Since(start) < dur; runs++ {
		if err := ctx.Err(); err != nil {
			return KernelSpeed{}, err
		}
		t0, c0 := time.Now(), cpuSeconds()
		if err := kernels.Attention(&p, q, k, v, o, nil); err != nil {
			return KernelSpeed{}, err
		}
		secs += time.Since(t0).Seconds()
		cpu += cpuSeconds() - c0
		if causal {
			c1 := cpuSeconds()
			if err := kernels.Attention(&pc, q, k, v, o, nil); err != nil {
				return KernelSpeed{}, err
			}
			ccpu += cpuSeconds() - c1
		}
	}
	flops := p.VisibleFLOPs() * float64(runs)
	ks := KernelSpeed{GFLOPS: flops / secs / 1e9, CPUGFLOPS: flops / cpu / 1e9, Runs: runs,
		Shape: fmt.Sprintf("B=1 H=%d N=%d D=%d dense", heads, n, d)}
	if causal {
		// Dense: kernelTiles² tiles in cpu; causal: below + diag·m tiles.
		// CPU time: the load of other processes moves it far less than
		// wall time.
		tiles := ccpu / cpu * kernelTiles * kernelTiles
		below := float64(kernelTiles*(kernelTiles-1)) / 2
		ks.DiagonalTileCost = min(4, max(0.5, (tiles-below)/kernelTiles))
		ks.Shape += " and causal"
	}
	return ks, nil
}

// TransportCost is the measured CPU cost of moving frames.
type TransportCost struct {
	// SecPerByte is the process's CPU time (user + system, every
	// goroutine: both rings, both NATS clients and the embedded server)
	// per payload byte.
	SecPerByte float64
	// BytesPerSec is the payload rate the in-process ring reached.
	BytesPerSec float64
	Bytes       int64
	Method      string
}

// cpuSeconds is the process's user + system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// MeasureTransport sends key/value frames of frameBytes from rank 0 to rank
// 1 of a real two-rank transport.NATSRing through an embedded NATS server
// in this process, for about dur, and returns the process's CPU time per
// payload byte. It is an upper bound on one end's cost: it counts the
// sender, the receiver and the server together (a cluster runs the server
// elsewhere); Config takes half of it as SendSecPerByte and half as
// RecvSecPerByte.
func MeasureTransport(ctx context.Context, dur time.Duration, frameBytes int) (TransportCost, error) {
	if frameBytes < 8 {
		return TransportCost{}, invalid("frame of %d bytes, expected >= 8", frameBytes)
	}
	e, err := transport.StartEmbedded(transport.EmbeddedConfig{})
	if err != nil {
		return TransportCost{}, err
	}
	defer e.Shutdown()
	rings, closeAll, err := openRings(e, "simulate-calibrate", 2)
	if err != nil {
		return TransportCost{}, err
	}
	defer closeAll()
	half := frameBytes / 8 // two tensors of float32
	frame := func(step int) ringattn.Frame {
		return ringattn.Frame{Key: ringattn.Key{Kind: ringattn.KindKV, Step: step, Block: 0},
			Tensors: [][]float32{make([]float32, half), make([]float32, half)}}
	}
	// Warm up: the first send probes until the peer answers.
	if err := sendRecv(ctx, rings, frame(0), 0); err != nil {
		return TransportCost{}, err
	}
	c0, t0 := cpuSeconds(), time.Now()
	var bytes int64
	for step := 1; step < 2 || time.Since(t0) < dur; step++ {
		if err := sendRecv(ctx, rings, frame(step), step); err != nil {
			return TransportCost{}, err
		}
		bytes += int64(8 * half)
	}
	cpu, wall := cpuSeconds()-c0, time.Since(t0).Seconds()
	return TransportCost{SecPerByte: cpu / float64(bytes), BytesPerSec: float64(bytes) / wall, Bytes: bytes,
		Method: "2-rank NATSRing, embedded server, process CPU per payload byte"}, nil
}

// sendRecv sends f from rank 0 to rank 1 while rank 1 receives it.
func sendRecv(ctx context.Context, rings []*transport.NATSRing, f ringattn.Frame, step int) error {
	var wg sync.WaitGroup
	var serr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		serr = rings[0].Send(ctx, 1, f)
	}()
	_, rerr := rings[1].Recv(ctx, 0, ringattn.Key{Kind: ringattn.KindKV, Step: step, Block: 0})
	wg.Wait()
	if err := errors.Join(serr, rerr); err != nil {
		return fmt.Errorf("in-process NATS ring: %w", err)
	}
	return nil
}

// openRings connects w ranks of job to e, each on its own connection.
func openRings(e *transport.Embedded, job string, w int) ([]*transport.NATSRing, func(), error) {
	cfg := transport.DefaultConfig()
	cfg.URLs = []string{e.ClientURL()}
	ec := e.Config()
	cfg.User, cfg.Password, cfg.Token = ec.User, ec.Password, ec.Token
	logger := slog.New(slog.DiscardHandler)
	var conns []*transport.Conn
	var rings []*transport.NATSRing
	closeAll := func() {
		for _, r := range rings {
			r.Close()
		}
		for _, c := range conns {
			c.Close()
		}
	}
	for r := range w {
		conn, err := transport.Dial(cfg, logger)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, conn)
		ring, err := conn.NewRing(transport.RingConfig{Job: job, Epoch: 1, Rank: r, Size: w,
			ProbeInterval: 20 * time.Millisecond, Logger: logger})
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		rings = append(rings, ring)
	}
	return rings, closeAll, nil
}

// MeasureMerge times kernels.MergeOutputs on rows of dimension d and
// returns its CPU cost per byte of one (O, LSE) partial: the
// MergeSecPerByte of Config.
func MeasureMerge(d int) (float64, error) {
	const rows = 8 * 2048
	r := testrand.New(2)
	o1, o2 := r.Slice(rows*d, testrand.Normal), r.Slice(rows*d, testrand.Normal)
	l1, l2 := r.Slice(rows, testrand.Normal), r.Slice(rows, testrand.Normal)
	start := time.Now()
	runs := 0
	for runs < 3 || time.Since(start) < 50*time.Millisecond {
		if err := kernels.MergeOutputs(o1, l1, o2, l2, d); err != nil {
			return 0, err
		}
		runs++
	}
	return time.Since(start).Seconds() / float64(runs) / float64(rows*(d+1)*4), nil
}

// MeasureCopy times copying float32 blocks (what the engine's compact does
// before it sends a view over a ring that does not share frames) and
// returns core-seconds per byte.
func MeasureCopy() float64 {
	const n = 4 << 20 // 16 MiB, beyond the caches
	src, dst := make([]float32, n), make([]float32, n)
	copy(dst, src)
	start := time.Now()
	runs := 0
	for runs < 3 || time.Since(start) < 30*time.Millisecond {
		copy(dst, src)
		runs++
	}
	return time.Since(start).Seconds() / float64(runs) / float64(4*n)
}
