package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Tensor names of jobs in the store. Attention jobs read "q" (by query
// block) and "k", "v" (by key block) from namespace input_ref and write "o"
// (and "lse" when asked) under output_ref, one object per query block.
// Layer (mha) jobs read "x" by sequence block ([B, len, d_model]) and the
// whole weights as block 0 of "wq", "wk", "wv" ([H·D, d_model]) and "wo"
// ([d_model, H·D]), the biases as block 0 of "bq", "bk", "bv" ([H·D]) and
// "bo" ([d_model]) when mha_bias; they write "y" ([B, len, d_model]).
const (
	TensorX = "x"
	TensorY = "y"
)

// failure turns a computation error into a ShardFailed: fatal when the job
// itself is bad (the leader fails it), otherwise the leader re-plans.
func failure(err error) *pb.ShardFailed {
	f := &pb.ShardFailed{Reason: err.Error(), Block: -1}
	var ce *transport.CorruptBlockError
	var ne *nonFiniteError
	var pe *panicError
	switch {
	case errors.As(err, &pe):
		// A bug here, not a bad job: the leader re-plans.
		f.Reason = pe.Error()
	case errors.As(err, &ce):
		f.Fatal, f.Block = true, int32(ce.Block)
	case errors.As(err, &ne):
		f.Fatal, f.Block = true, int32(ne.block)
	case errors.Is(err, transport.ErrBlockNotFound), errors.Is(err, transport.ErrInvalidShape),
		errors.Is(err, transport.ErrTooLarge), errors.Is(err, ringattn.ErrInvalid),
		errors.Is(err, kernels.ErrInvalid), errors.Is(err, ErrInvalidAssignment):
		f.Fatal = true
	}
	return f
}

// storeAttempts bounds the tries of one store operation.
const storeAttempts = 5

// retryStore runs op until it succeeds, fails for good, or storeAttempts
// tries failed transiently (NATS reconnecting, a JetStream timeout), with
// backoff 100 ms, 200 ms, ... between tries. Missing or corrupt blocks, bad
// names and sizes are final at once.
func retryStore(ctx context.Context, op func() error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || attempt == storeAttempts || ctx.Err() != nil ||
			errors.Is(err, transport.ErrBlockNotFound) || errors.Is(err, transport.ErrCorrupt) ||
			errors.Is(err, transport.ErrInvalidName) || errors.Is(err, transport.ErrTooLarge) ||
			errors.Is(err, transport.ErrInvalidShape) || errors.Is(err, transport.ErrInvalidConfig) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// nonFiniteError names an input block holding NaN or Inf.
type nonFiniteError struct {
	tensor string
	block  int
	index  int
	value  float32
}

func (e *nonFiniteError) Error() string {
	return fmt.Sprintf("input tensor %q block %d holds %v at offset %d: inputs must be finite (allow_nonfinite is off)",
		e.tensor, e.block, e.value, e.index)
}

func checkFinite(tensor string, block int, x []float32) error {
	if allFinite(x) {
		return nil
	}
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return &nonFiniteError{tensor: tensor, block: block, index: i, value: v}
		}
	}
	return nil
}

// allFinite reports whether x holds no Inf or NaN, eight values a step.
// Their exponent field is all ones, and only theirs: adding one to it
// carries into the sign bit exactly then.
func allFinite(x []float32) bool {
	const exp, one, sign = 0x7f800000, 0x00800000, 0x80000000
	var acc uint32
	for len(x) >= 8 {
		y := x[:8:8]
		acc |= (math.Float32bits(y[0])&exp + one) | (math.Float32bits(y[1])&exp + one) |
			(math.Float32bits(y[2])&exp + one) | (math.Float32bits(y[3])&exp + one) |
			(math.Float32bits(y[4])&exp + one) | (math.Float32bits(y[5])&exp + one) |
			(math.Float32bits(y[6])&exp + one) | (math.Float32bits(y[7])&exp + one)
		x = x[8:]
	}
	for _, v := range x {
		acc |= math.Float32bits(v)&exp + one
	}
	return acc&sign == 0
}

// blockReader is what a rank reads its inputs from.
type blockReader interface {
	GetBlock(ctx context.Context, job, tensor string, block int) ([]float32, error)
}

// blockWriter is what a rank writes its outputs to.
type blockWriter interface {
	PutBlock(ctx context.Context, job, tensor string, block int, data []float32, enc transport.Encoding) error
}

// headReader is a blockReader that reads a range of heads of a block
// without the others (transport.Store.GetHeads).
type headReader interface {
	GetHeads(ctx context.Context, ns, tensor string, block int, r transport.HeadRange) ([]float32, error)
}

// checkedSource is the rank's ringattn.Source: the store namespace of the
// inputs, refusing non-finite values unless the job allows them. It is a
// ringattn.HeadFetcher too: the ranks of head plans read their heads only.
type checkedSource struct {
	r        blockReader
	ns       string
	allowNaN bool
	met      *workerMetrics
	prog     *progress // counts every block read (nil: not counted)
	// b, hq, hkv are the job's batch and head counts (FetchHeads,
	// FetchRun).
	b, hq, hkv int
	w          *Worker // contains panics of FetchRun's transfers
}

func (s *checkedSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	return s.fetch(ctx, tensor, block, func() ([]float32, error) { return s.r.GetBlock(ctx, s.ns, tensor, block) })
}

// FetchHeads reads heads [h0, h1) of a block (ringattn.HeadFetcher): of
// Hkv heads for "k", "v", of Hq for the others. A reader without GetHeads
// reads the whole block, cut here.
func (s *checkedSource) FetchHeads(ctx context.Context, tensor string, block, h0, h1 int) ([]float32, error) {
	hr := transport.HeadRange{B: s.b, Heads: s.hq, H0: h0, H1: h1}
	if tensor == transport.TensorK || tensor == transport.TensorV {
		hr.Heads = s.hkv
	}
	return s.fetch(ctx, tensor, block, func() ([]float32, error) {
		if r, ok := s.r.(headReader); ok {
			return r.GetHeads(ctx, s.ns, tensor, block, hr)
		}
		x, err := s.r.GetBlock(ctx, s.ns, tensor, block)
		if err != nil {
			return nil, err
		}
		return hr.Cut(x)
	})
}

// fetch reads a block (or part of one) with get, retrying, and checks it.
func (s *checkedSource) fetch(ctx context.Context, tensor string, block int, get func() ([]float32, error)) ([]float32, error) {
	var x []float32
	err := retryStore(ctx, func() (err error) {
		x, err = get()
		return err
	})
	if err != nil {
		return nil, err
	}
	s.met.storeBytes.WithLabelValues("read").Add(float64(4 * len(x)))
	if s.prog != nil {
		s.prog.done.Add(1)
	}
	if !s.allowNaN {
		if err := checkFinite(tensor, block, x); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// outputs records the checksum of every output block written.
type outputs struct {
	mu   sync.Mutex
	sums map[int]*pb.BlockChecksum
	buf  []byte
}

// put writes one float32 block and returns the CRC32C of its bytes as
// stored (little-endian float32, as transport.Store encodes F32).
func (o *outputs) put(ctx context.Context, w blockWriter, ns, tensor string, block int, data []float32, met *workerMetrics) (uint32, error) {
	if err := retryStore(ctx, func() error { return w.PutBlock(ctx, ns, tensor, block, data, transport.F32) }); err != nil {
		return 0, err
	}
	met.storeBytes.WithLabelValues("written").Add(float64(4 * len(data)))
	o.mu.Lock()
	defer o.mu.Unlock()
	var crc uint32
	o.buf, crc = crcF32(o.buf, data)
	return crc, nil
}

// crcF32 returns the CRC32C of x encoded as little-endian float32 (what
// transport.Store writes for F32), reusing buf.
func crcF32(buf []byte, x []float32) ([]byte, uint32) {
	buf = slices.Grow(buf[:0], 4*len(x))[:4*len(x)]
	for i, v := range x {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return buf, transport.CRC32C(buf)
}

func (o *outputs) record(block int, crcO, crcLSE uint32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.sums == nil {
		o.sums = map[int]*pb.BlockChecksum{}
	}
	o.sums[block] = &pb.BlockChecksum{Block: int32(block), Crc32CO: crcO, Crc32CLse: crcLSE}
}

func (o *outputs) list() []*pb.BlockChecksum {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]*pb.BlockChecksum, 0, len(o.sums))
	for _, c := range o.sums {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *pb.BlockChecksum) int { return int(a.GetBlock() - b.GetBlock()) })
	return out
}

// attnSink writes "o" (and "lse" when wanted) blocks of an attention job.
type attnSink struct {
	w    blockWriter
	ns   string
	lse  bool
	outs *outputs
	met  *workerMetrics
	// b, hq, d and span (the rows of a query block) shape PutRun's runs.
	b, hq, d int
	span     func(block int) (start, rows int)
	wk       *Worker // contains panics of PutRun's transfers
}

func (s *attnSink) Put(ctx context.Context, block int, o, lse []float32) error {
	crcO, err := s.outs.put(ctx, s.w, s.ns, transport.TensorO, block, o, s.met)
	if err != nil {
		return err
	}
	var crcL uint32
	if s.lse {
		if crcL, err = s.outs.put(ctx, s.w, s.ns, transport.TensorLSE, block, lse, s.met); err != nil {
			return err
		}
	}
	s.outs.record(block, crcO, crcL)
	return nil
}

// storeFor returns the store of bucket ("" means the configured one). It
// opens a store not seen before without holding w.mu (opening is a
// JetStream request); when two ranks open the same bucket at once, the
// first one stored is kept.
func (w *Worker) storeFor(ctx context.Context, bucket string) (*transport.Store, error) {
	w.mu.Lock()
	store, conn := w.store, w.conn
	s, ok := w.stores[bucket]
	w.mu.Unlock()
	if bucket == "" || bucket == store.Bucket() {
		return store, nil
	}
	if ok {
		return s, nil
	}
	if h := w.hooks.openStore; h != nil {
		h(bucket)
	}
	cfg := w.storeConfig()
	cfg.Bucket = bucket
	s, err := conn.OpenStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if prev, ok := w.stores[bucket]; ok {
		return prev, nil
	}
	w.stores[bucket] = s
	return s, nil
}

// computeContained is compute with a panic turned into an error (logged
// with its stack and counted): the shard then reports FAILED, non-fatal,
// for the leader to re-plan, and the worker lives on.
func (w *Worker) computeContained(ctx context.Context, t *task, prog *progress) (done *pb.ShardDone, err error) {
	defer w.contain("rank computation", &err)
	return w.compute(ctx, t, prog)
}

// compute runs one rank: fetch its blocks, run the ring, write its
// outputs. It returns the ShardDone to report. prog counts the rank's
// units of work as they finish (blocks fetched and written, ring steps).
func (w *Worker) compute(ctx context.Context, t *task, prog *progress) (*pb.ShardDone, error) {
	store, err := w.storeFor(ctx, t.bucket)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	conn := w.conn
	w.mu.Unlock()
	enc := transport.F32
	if t.bf16 {
		enc = transport.BF16
	}
	// A peer that has acknowledged nothing for twice its RecvTimeout has
	// fallen back to the store (or is gone): stop sending to it then, not
	// after the ring's default 30 s.
	ring, err := conn.NewRing(transport.RingConfig{
		Job: t.job, Epoch: t.epoch, Rank: t.rank, Size: len(t.plan.Ranks),
		Prefix: w.subj.Prefix(), Encoding: enc, RecvTimeout: w.cfg.RecvTimeout,
		SendTimeout: 2 * w.cfg.RecvTimeout,
		Worker:      w.cfg.ID, Workers: t.workers,
		Logger: w.log.With("job", t.job, "epoch", t.epoch),
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		st := ring.Stats()
		w.met.ringBytes.WithLabelValues("sent").Add(float64(st.BytesSent))
		w.met.ringBytes.WithLabelValues("received").Add(float64(st.BytesReceived))
		ring.Close()
	}()

	params := t.params
	params.Threads = w.threads
	outs := &outputs{}
	src := &checkedSource{r: store, ns: t.inputRef, allowNaN: t.allowNaN, met: w.met, prog: prog,
		b: t.params.B, hq: t.params.Hq, hkv: t.params.Hkv, w: w}
	var source ringattn.Source = src
	var sink ringattn.Sink = &attnSink{w: store, ns: t.outputRef, lse: t.wantLSE, outs: outs, met: w.met,
		b: t.params.B, hq: t.params.Hq, d: t.params.D, span: t.plan.QSpan, wk: w}
	var mha *mhaParts
	if t.kind == pb.JobKind_JOB_KIND_MHA {
		layer, err := w.loadLayer(ctx, src, t)
		if err != nil {
			return nil, err
		}
		ms := newMHASource(src, layer, t)
		source = ms
		sink = &mhaSink{w: store, ns: t.outputRef, layer: layer, b: t.params.B, heads: t.params.Hq, d: t.params.D,
			lse: t.wantLSE, outs: outs, met: w.met}
		mha = &mhaParts{proj: ms, layer: layer}
	}

	prog.total.Store(t.units())
	w.injectFaults(ctx, t, 0)
	var last ringattn.Progress
	lastAt := time.Now()
	start := lastAt
	progress := func(p ringattn.Progress) {
		now := time.Now()
		if p.Step > last.Step {
			w.met.stepSeconds.Observe(now.Sub(lastAt).Seconds())
		}
		w.met.flops.Add(p.FLOPs - last.FLOPs)
		w.met.fallbacks.Add(float64(p.Fallbacks - last.Fallbacks))
		if p.Step > last.Step {
			units := int64(p.Step - last.Step)
			if t.mode != pb.JobMode_JOB_MODE_BACKWARD {
				units += int64(p.Pairs - last.Pairs) // the step's folded pairs (task.units)
			}
			prog.done.Add(units)
		}
		stepped := p.Step > last.Step
		last, lastAt = p, now
		if h := w.hooks.progress; h != nil {
			h(ctx, t.job, t.epoch, t.rank, p)
		}
		if stepped {
			w.injectFaults(ctx, t, p.Step)
		}
	}
	fring := guardedRing{Ring: newFailFastRing(ring, max(w.cfg.RecvTimeout/50, 20*time.Millisecond)), w: w}
	logger := w.log.With("job", t.job, "epoch", t.epoch)
	var grads *gradSink
	if t.mode == pb.JobMode_JOB_MODE_BACKWARD {
		// o and lse are the forward's outputs, written by ranks of this
		// cluster: not checked for non-finite values (lse is -Inf on a
		// row that sees no key).
		olse := &checkedSource{r: store, ns: t.oLSERef, allowNaN: true, met: w.met, prog: prog,
			b: t.params.B, hq: t.params.Hq, hkv: t.params.Hkv, w: w}
		grads = &gradSink{w: store, ns: t.outputRef, met: w.met}
		var bsrc ringattn.Source = bwdSource{in: src, olse: olse}
		var bsink ringattn.GradSink = grads
		if mha != nil {
			bsrc, bsink = mha.backward(store, src, olse, grads, t, w.met)
		}
		err = ringattn.RunRankBackward(ctx, ringattn.BackwardConfig{
			Params: &params, Plan: t.plan, Ring: fring,
			Source: w.guard(bsrc),
			Sink:   guardedGradSink{sink: bsink, w: w, prog: prog},
			Epoch:  t.epoch, DoneDQ: t.doneDQ, DoneDKV: t.doneDKV,
			Logger: logger, Progress: progress,
		})
	} else {
		err = ringattn.RunRank(ctx, ringattn.RankConfig{
			Params: &params, Plan: t.plan, Ring: fring,
			Source:   w.guard(source),
			Sink:     w.guardSink(sink, prog),
			Logger:   logger,
			Progress: progress,
		})
	}
	if err != nil {
		return nil, err
	}
	secs := time.Since(start).Seconds()
	done := &pb.ShardDone{Blocks: outs.list()}
	if grads != nil {
		done.DqBlocks, done.DkvBlocks = grads.list()
	}
	if secs > 0 {
		done.Gflops = last.FLOPs / secs / 1e9
	}
	return done, nil
}

// bwdSource serves a backward rank's inputs: q, k, v, do from the job's
// input namespace, o and lse (the forward's outputs) from olse.
type bwdSource struct{ in, olse *checkedSource }

func (b bwdSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	if tensor == transport.TensorO || tensor == transport.TensorLSE {
		return b.olse.Fetch(ctx, tensor, block)
	}
	return b.in.Fetch(ctx, tensor, block)
}

// FetchHeads reads heads [h0, h1) of a block (ringattn.HeadFetcher) from
// where Fetch reads it.
func (b bwdSource) FetchHeads(ctx context.Context, tensor string, block, h0, h1 int) ([]float32, error) {
	if tensor == transport.TensorO || tensor == transport.TensorLSE {
		return b.olse.FetchHeads(ctx, tensor, block, h0, h1)
	}
	return b.in.FetchHeads(ctx, tensor, block, h0, h1)
}

// gradSink writes a backward rank's gradient blocks ("dq" by query block,
// "dk", "dv" by key block, float32, the epoch in their metadata, as
// transport.Store.GradSink does) and records their checksums.
type gradSink struct {
	w   gradWriter
	ns  string
	met *workerMetrics

	mu      sync.Mutex
	buf     []byte
	dq, dkv map[int]*pb.GradChecksum
}

// gradWriter is what a backward rank writes its gradients with.
type gradWriter interface {
	GradSink(ns string) ringattn.GradSink
}

func (g *gradSink) crc(x []float32) uint32 {
	var c uint32
	g.buf, c = crcF32(g.buf, x)
	return c
}

func (g *gradSink) PutDQ(ctx context.Context, epoch uint64, block int, dq []float32) error {
	s := g.w.GradSink(g.ns)
	if err := retryStore(ctx, func() error { return s.PutDQ(ctx, epoch, block, dq) }); err != nil {
		return err
	}
	g.met.storeBytes.WithLabelValues("written").Add(float64(4 * len(dq)))
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dq == nil {
		g.dq = map[int]*pb.GradChecksum{}
	}
	g.dq[block] = &pb.GradChecksum{Block: int32(block), Crc32C: g.crc(dq)}
	return nil
}

func (g *gradSink) PutDKV(ctx context.Context, epoch uint64, block int, dk, dv []float32) error {
	s := g.w.GradSink(g.ns)
	if err := retryStore(ctx, func() error { return s.PutDKV(ctx, epoch, block, dk, dv) }); err != nil {
		return err
	}
	g.met.storeBytes.WithLabelValues("written").Add(float64(4 * (len(dk) + len(dv))))
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dkv == nil {
		g.dkv = map[int]*pb.GradChecksum{}
	}
	g.dkv[block] = &pb.GradChecksum{Block: int32(block), Crc32C: g.crc(dk), Crc32CDv: g.crc(dv)}
	return nil
}

// list returns the checksums of the blocks written, sorted by block.
func (g *gradSink) list() (dq, dkv []*pb.GradChecksum) {
	g.mu.Lock()
	defer g.mu.Unlock()
	sorted := func(m map[int]*pb.GradChecksum) []*pb.GradChecksum {
		out := make([]*pb.GradChecksum, 0, len(m))
		for _, c := range m {
			out = append(out, c)
		}
		slices.SortFunc(out, func(a, b *pb.GradChecksum) int { return int(a.GetBlock() - b.GetBlock()) })
		return out
	}
	return sorted(g.dq), sorted(g.dkv)
}
