package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/bench"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// maskFlags are the mask and mode flags shared by attend and mha.
type maskFlags struct {
	causal         bool
	left, right    int
	seqlens        string
	seqlensK       string
	scale          float64
	ranks          int
	cluster        int
	natsURL        string
	block          int
	wire           string
	strategy       string
	threads        int
	allowNonFinite bool
	conn           connFlags
	given          map[string]bool // the flags given (check fills it)
}

func (m *maskFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&m.causal, "causal", false, "causal mask, bottom-right aligned when N != Nk (query i sees key j iff j <= i + Nk - N)")
	fs.IntVar(&m.left, "window-left", -1, "sliding window: keys at most `L` positions left of the diagonal (-1 = unbounded)")
	fs.IntVar(&m.right, "window-right", -1, "sliding window: keys at most `R` positions right of the diagonal (-1 = unbounded)")
	fs.StringVar(&m.seqlens, "seqlens", "", "packed documents: comma-separated `lengths` summing to N; queries see keys of their document only")
	fs.StringVar(&m.seqlensK, "seqlens-k", "", "key document `lengths` for cross-attention (default: --seqlens)")
	fs.Float64Var(&m.scale, "scale", 0, "softmax `scale` (default 1/sqrt(D))")
	fs.IntVar(&m.ranks, "ranks", 0, "run an in-process ring of `R` ranks over in-memory links")
	fs.IntVar(&m.cluster, "cluster", 0, "run on an embedded ephemeral cluster of `W` workers")

	fs.IntVar(&m.block, "block", shard.DefaultBlock, "block length in `tokens` for ring and cluster modes")
	fs.StringVar(&m.wire, "wire", "f32", "`dtype` of key/value blocks on the wire: f32 or bf16")
	fs.StringVar(&m.strategy, "strategy", "", "shard `strategy`: contiguous, zigzag, striped, splitkv (default: chosen by shape)")
	fs.IntVar(&m.threads, "threads", 0, "`N` kernel goroutines (default: all cores)")
	fs.BoolVar(&m.allowNonFinite, "allow-nonfinite", false, "accept NaN/Inf in the inputs instead of rejecting them")
	m.conn.register(fs)
	registerNATS(fs, &m.natsURL, "submit to a running cluster at this NATS `URL` (nats://host:port or host:port; env RINGATTN_NATS_URL)")
}

// check validates the mode and mask flags, naming the flag at fault, and
// applies the job limits to what the flags alone decide (block, window,
// document lengths) before any input is read. fs tells which flags were
// given: --ranks 0 or --cluster 0 is refused, not taken for "unset".
func (m *maskFlags) check(fs *flag.FlagSet) error {
	m.given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { m.given[f.Name] = true })
	set := 0
	for _, f := range []string{"ranks", "cluster", "nats"} {
		if m.given[f] {
			set++
		}
	}
	if set > 1 {
		return usagef("--ranks, --cluster and --nats are exclusive; give at most one")
	}
	if m.given["ranks"] && m.ranks < 1 {
		return usagef("--ranks = %d, expected >= 1 (leave --ranks out to run the in-process kernel)", m.ranks)
	}
	if m.given["cluster"] && m.cluster < 1 {
		return usagef("--cluster = %d, expected >= 1 workers", m.cluster)
	}
	if m.given["nats"] {
		u, err := normalizeNATSURL("nats", natsValue(fs, &m.conn, m.natsURL))
		if err != nil {
			return err
		}
		m.natsURL = u
	}
	lim := shard.DefaultLimits()
	if m.block < 1 || int64(m.block) > lim.MaxTokens {
		return usagef("--block = %d, expected 1..%d tokens", m.block, lim.MaxTokens)
	}
	if m.wire != "f32" && m.wire != "bf16" {
		return usagef("--wire = %q, expected f32 or bf16", m.wire)
	}
	if m.wire == "bf16" && m.cluster == 0 && m.natsURL == "" {
		return usagef("--wire bf16 applies to cluster modes (--cluster, --nats) only")
	}
	switch shard.Strategy(m.strategy) {
	case shard.Auto, shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV:
	default:
		return usagef("--strategy = %q, expected contiguous, zigzag, striped or splitkv", m.strategy)
	}
	if m.threads < 0 {
		return usagef("--threads = %d, expected >= 0", m.threads)
	}
	if math.IsNaN(m.scale) || math.IsInf(m.scale, 0) || m.scale < 0 {
		return usagef("--scale = %v, expected a finite number > 0 (or 0 for 1/sqrt(D))", m.scale)
	}
	km, err := m.mask()
	if err != nil {
		return err
	}
	for _, w := range []struct {
		flag string
		v    int
	}{{"window-left", km.Left}, {"window-right", km.Right}} {
		if int64(w.v) > lim.MaxTokens {
			return usagef("--%s = %d, expected -1 (unbounded) or 0..%d", w.flag, w.v, lim.MaxTokens)
		}
	}
	for _, l := range []struct {
		flag string
		lens []int
	}{{"seqlens", km.SeqLens}, {"seqlens-k", km.SeqLensK}} {
		if int64(len(l.lens)) > lim.MaxDocs {
			return usagef("--%s has %d documents, expected at most %d", l.flag, len(l.lens), lim.MaxDocs)
		}
		for i, x := range l.lens {
			if int64(x) > lim.MaxTokens {
				return usagef("--%s item %d = %d, expected 1..%d (the lengths sum to the sequence length)", l.flag, i, x, lim.MaxTokens)
			}
		}
	}
	return nil
}

// attendFields name the flag or input each field of a shard.FieldError
// comes from, for attend and submit.
var attendFields = map[string]string{
	"b": "-q batch B", "hq": "-q heads Hq", "hkv": "-k heads Hkv", "d": "-q head dim D",
	"n": "-q length N", "nk": "-k length Nk", "block": "--block", "ranks": "--ranks", "strategy": "--strategy",
	"mask.seqlens": "--seqlens", "mask.seqlens_k": "--seqlens-k",
	"mask.window_left": "--window-left", "mask.window_right": "--window-right", "": "inputs",
}

// checkLimits applies the job limits (those of a coordinator and workers
// left at their defaults) to the problem r storing t; an error names the
// flag or input at fault (fields maps the limits' field names), exit 2.
func checkLimits(r *shard.Request, t shard.Tensors, fields map[string]string) error {
	err := shard.DefaultLimits().Check(r, t)
	var fe *shard.FieldError
	if err == nil || !errors.As(err, &fe) {
		return err
	}
	name, ok := fields[fe.Field]
	if !ok {
		name = fe.Field
	}
	return usagef("%s: %s", name, fe.Msg)
}

// userError is a validation error of a library for the one line a user
// sees: exit 2, without the library's "pkg: invalid argument:" prefix.
func userError(err error) error {
	msg := err.Error()
	for _, p := range []error{kernels.ErrInvalid, shard.ErrInvalid, ringattn.ErrInvalid} {
		msg = strings.TrimPrefix(msg, p.Error()+": ")
	}
	return usageError{errors.New(msg)}
}

func parseLens(flagName, s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var out []int
	for i, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, usagef("--%s item %d = %q, expected a positive integer", flagName, i, f)
		}
		out = append(out, n)
	}
	return out, nil
}

func (m *maskFlags) mask() (kernels.Mask, error) {
	km := kernels.Mask{Causal: m.causal, Left: m.left, Right: m.right, Windowed: m.left >= 0 || m.right >= 0}
	if m.left < -1 || m.right < -1 {
		return km, usagef("--window-left/--window-right must be >= -1 (-1 = unbounded)")
	}
	var err error
	if km.SeqLens, err = parseLens("seqlens", m.seqlens); err != nil {
		return km, err
	}
	if km.SeqLensK, err = parseLens("seqlens-k", m.seqlensK); err != nil {
		return km, err
	}
	return km, nil
}

func shardMask(m kernels.Mask) shard.Mask {
	return shard.Mask{Causal: m.Causal, Windowed: m.Windowed, Left: m.Left, Right: m.Right,
		SeqLens: m.SeqLens, SeqLensK: m.SeqLensK}
}

// loadTensor reads a .npy file, or one tensor of a .safetensors file named
// as path:name (the name may be omitted when the file holds one tensor).
func loadTensor(flagName, spec string) (*tensor.Tensor, error) {
	if spec == "" {
		return nil, usagef("-%s is required", flagName)
	}
	t, err := tensor.Load(spec)
	if err != nil {
		return nil, usagef("-%s: %v", flagName, err)
	}
	return t, nil
}

// loadQKV reads the -q, -k, -v files of attend and submit.
func loadQKV(qPath, kPath, vPath string) (q, k, v *tensor.Tensor, err error) {
	if q, err = loadTensor("q", qPath); err != nil {
		return
	}
	if k, err = loadTensor("k", kPath); err != nil {
		return
	}
	if v, err = loadTensor("v", vPath); err != nil {
		return
	}
	if len(q.Shape) != len(k.Shape) {
		err = usagef("-k has rank %d, expected q's rank %d", len(k.Shape), len(q.Shape))
	}
	return
}

// attention is a validated attention problem.
type attention struct {
	p          kernels.Params
	qShape     []int // shape of q as given, for the output
	kShape     []int // shape of k as given, for dk and dv
	q4, k4     []int // [B,H,N,D]
	qd, kd, vd []float32
}

func checkAttentionInputs(q, k, v *tensor.Tensor, mf *maskFlags) (*attention, error) {
	q4, err := q.As4D()
	if err != nil {
		return nil, usagef("-q: %v", err)
	}
	k4, err := k.As4D()
	if err != nil {
		return nil, usagef("-k: %v", err)
	}
	v4, err := v.As4D()
	if err != nil {
		return nil, usagef("-v: %v", err)
	}
	if !equalInts(k4, v4) {
		return nil, usagef("-v has shape %v, expected the shape of -k %v", v.Shape, k.Shape)
	}
	if q4[0] != k4[0] {
		return nil, usagef("-k batch B = %d, expected q's batch %d", k4[0], q4[0])
	}
	if q4[3] != k4[3] {
		return nil, usagef("-k head dim D = %d, expected q's head dim %d", k4[3], q4[3])
	}
	if k4[1] == 0 || q4[1]%k4[1] != 0 {
		return nil, usagef("query heads Hq = %d not divisible by key/value heads Hkv = %d", q4[1], k4[1])
	}
	km, err := mf.mask()
	if err != nil {
		return nil, err
	}
	if q4[2] == 0 || k4[2] == 0 {
		return nil, usagef("empty sequence: N = %d, Nk = %d, expected >= 1", q4[2], k4[2])
	}
	req := shard.Request{B: q4[0], Hq: q4[1], Hkv: k4[1], D: q4[3], N: q4[2], Nk: k4[2], Block: mf.block,
		Mask: shardMask(km), Ranks: max(1, mf.ranks), Strategy: shard.Strategy(mf.strategy)}
	if err := checkLimits(&req, shard.Tensors{LSE: true}, attendFields); err != nil {
		return nil, err
	}
	a := &attention{qShape: q.Shape, kShape: k.Shape, q4: q4, k4: k4, qd: q.Data, kd: k.Data, vd: v.Data}
	a.p = kernels.Params{Shape: kernels.Shape{B: q4[0], Hq: q4[1], Hkv: k4[1], D: q4[3]},
		N: q4[2], Nk: k4[2], Scale: float32(mf.scale), Mask: km, Threads: mf.threads}
	if err := a.p.Validate(); err != nil {
		return nil, userError(err)
	}
	if !mf.allowNonFinite {
		for _, c := range []struct {
			name string
			t    *tensor.Tensor
		}{{"q", q}, {"k", k}, {"v", v}} {
			if err := c.t.CheckFinite(c.name); err != nil {
				return nil, usagef("%v (pass --allow-nonfinite to accept)", err)
			}
		}
	}
	return a, nil
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// compute runs the problem in the mode the flags ask for.
func (a *attention) compute(ctx context.Context, env *cliEnv, mf *maskFlags) (o, lse []float32, err error) {
	switch {
	case mf.cluster > 0 || mf.natsURL != "":
		return attendOnCluster(ctx, env, a, mf)
	case mf.ranks > 0:
		plan, err := a.plan(mf)
		if err != nil {
			return nil, nil, err
		}
		return ringattn.RunLocal(ctx, &a.p, plan, a.qd, a.kd, a.vd)
	default:
		o = make([]float32, a.p.B*a.p.Hq*a.p.N*a.p.D)
		lse = make([]float32, a.p.B*a.p.Hq*a.p.N)
		if err := kernels.Attention(&a.p, a.qd, a.kd, a.vd, o, lse); err != nil {
			return nil, nil, userError(err)
		}
		return o, lse, nil
	}
}

// plan is the in-process ring's plan of --ranks R.
func (a *attention) plan(mf *maskFlags) (*shard.Plan, error) {
	plan, err := shard.NewPlan(shard.Request{B: a.p.B, Hq: a.p.Hq, Hkv: a.p.Hkv, D: a.p.D, N: a.p.N, Nk: a.p.Nk,
		Block: mf.block, Mask: shardMask(a.p.Mask), Ranks: mf.ranks, Strategy: shard.Strategy(mf.strategy)})
	if err != nil {
		return nil, userError(err)
	}
	return plan, nil
}

// backward computes the gradients of sum(o·do) of the problem whose
// forward gave o and lse, locally or on the --ranks ring (the same plan as
// the forward's). The cluster modes run forward and backward as one job
// (attendOnClusterGrads) instead.
func (a *attention) backward(ctx context.Context, mf *maskFlags, o, lse, do []float32) (dq, dk, dv []float32, err error) {
	if mf.ranks > 0 {
		plan, err := a.plan(mf)
		if err != nil {
			return nil, nil, nil, err
		}
		return ringattn.RunLocalBackward(ctx, &a.p, plan, a.qd, a.kd, a.vd, o, lse, do)
	}
	dq, dk, dv = make([]float32, len(a.qd)), make([]float32, len(a.kd)), make([]float32, len(a.vd))
	if err := kernels.AttentionBackward(&a.p, a.qd, a.kd, a.vd, o, lse, do, dq, dk, dv); err != nil {
		return nil, nil, nil, userError(err)
	}
	return dq, dk, dv, nil
}

// gradFlags are attend's gradient flags: --do in, --dq, --dk, --dv out.
type gradFlags struct{ do, dq, dk, dv string }

func (g *gradFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&g.do, "do", "", "upstream gradient `file` dO, the shape of -q: also compute the gradients of sum(O·dO) (needs --dq, --dk, --dv)")
	fs.StringVar(&g.dq, "dq", "", "output `file` for dQ (.npy, the shape of -q)")
	fs.StringVar(&g.dk, "dk", "", "output `file` for dK (.npy, the shape of -k)")
	fs.StringVar(&g.dv, "dv", "", "output `file` for dV (.npy, the shape of -v)")
}

// on tells whether gradients were asked for.
func (g *gradFlags) on() bool { return g.do != "" || g.dq != "" || g.dk != "" || g.dv != "" }

// check refuses an incomplete set of gradient flags and unwritable
// outputs, before any input is read.
func (g *gradFlags) check(mf *maskFlags) error {
	if !g.on() {
		return nil
	}
	for _, f := range []struct{ name, v string }{{"do", g.do}, {"dq", g.dq}, {"dk", g.dk}, {"dv", g.dv}} {
		if f.v == "" {
			return usagef("--%s is required with the gradient flags (give all of --do, --dq, --dk, --dv)", f.name)
		}
	}
	return checkWritable([2]string{"--dq", g.dq}, [2]string{"--dk", g.dk}, [2]string{"--dv", g.dv})
}

// loadDO reads --do in layout and checks it against q (as read, before
// any layout conversion: qShape).
func (g *gradFlags) loadDO(layout string, qShape []int, allowNonFinite bool) (*tensor.Tensor, error) {
	t, err := tensor.Load(g.do)
	if err != nil {
		return nil, usagef("--do: %v", err)
	}
	if !equalInts(t.Shape, qShape) {
		return nil, usagef("--do has shape %v, expected the shape of -q %v", t.Shape, qShape)
	}
	if !allowNonFinite {
		if err := t.CheckFinite("do"); err != nil {
			return nil, usagef("--do: %v (pass --allow-nonfinite to accept)", err)
		}
	}
	if layout == layoutBNHD {
		t = swapHN(t)
	}
	return t, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

func runAttend(env *cliEnv, args []string) error {
	fs := newFlags(env, "attend", "-q Q.npy -k K.npy -v V.npy -o O.npy [--lse LSE.npy] [--do dO.npy --dq dQ.npy --dk dK.npy --dv dV.npy] [mask flags] [--ranks R | --cluster W | --nats URL]")
	var qPath, kPath, vPath, oPath, lsePath, layout string
	fs.StringVar(&qPath, "q", "", "queries `file` [B,Hq,N,D], [H,N,D] or [N,D] (.npy, or .safetensors[:name])")
	fs.StringVar(&kPath, "k", "", "keys `file` [B,Hkv,Nk,D] (same rank as -q)")
	fs.StringVar(&vPath, "v", "", "values `file`, the shape of -k")
	fs.StringVar(&layout, "layout", layoutBHND, "axis `order` of -q/-k/-v, -o, --do and the gradients: bhnd [B,H,N,D] or bnhd [B,N,H,D] (torch's); --lse is [B,H,N] either way")
	fs.StringVar(&oPath, "o", "", "output `file` (.npy, float32, the shape of -q)")
	fs.StringVar(&lsePath, "lse", "", "optional log-sum-exp output `file` (.npy, q's shape without D)")
	var gf gradFlags
	gf.register(fs)
	var mf maskFlags
	mf.register(fs)
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if err := mf.check(fs); err != nil {
		return err
	}
	if err := checkLayout(layout); err != nil {
		return err
	}
	if oPath == "" {
		return usagef("-o is required")
	}
	if err := checkWritable([2]string{"-o", oPath}, [2]string{"--lse", lsePath}); err != nil {
		return err
	}
	if err := gf.check(&mf); err != nil {
		return err
	}
	q, k, v, err := loadQKV(qPath, kPath, vPath)
	if err != nil {
		return err
	}
	var do *tensor.Tensor
	if gf.on() {
		if do, err = gf.loadDO(layout, q.Shape, mf.allowNonFinite); err != nil {
			return err
		}
	}
	if layout == layoutBNHD {
		q, k, v = swapHN(q), swapHN(k), swapHN(v)
	}
	shapes := map[string][]int{}
	for name, t := range map[string]*tensor.Tensor{"q": q, "k": k} {
		if s, err := t.As4D(); err == nil && len(t.Shape) >= 3 {
			shapes[name] = s
		}
	}
	if err := checkLayoutGuess(env.stderr, layout, mf.given["layout"], shapes); err != nil {
		return err
	}
	a, err := checkAttentionInputs(q, k, v, &mf)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	start := time.Now()
	var o, lse, dq, dk, dv []float32
	var bel time.Duration
	onCluster := mf.cluster > 0 || mf.natsURL != ""
	if do != nil && onCluster {
		// One forward+backward job: the cluster runs both passes.
		o, lse, dq, dk, dv, err = attendOnClusterGrads(ctx, env, a, &mf, do)
	} else {
		o, lse, err = a.compute(ctx, env, &mf)
	}
	if err != nil {
		return err
	}
	el := time.Since(start)
	if do != nil && onCluster {
		bel = el // the job's two passes together
	}
	if do != nil && !onCluster {
		bstart := time.Now()
		if dq, dk, dv, err = a.backward(ctx, &mf, o, lse, do.Data); err != nil {
			return err
		}
		bel = time.Since(bstart)
	}
	ot := tensor.New(o, a.qShape...)
	if layout == layoutBNHD {
		ot = swapHN(ot)
	}
	if err := tensor.WriteNPY(oPath, ot); err != nil {
		return err
	}
	wrote := fmt.Sprintf("%s %v", oPath, ot.Shape)
	if lsePath != "" {
		lt := tensor.New(lse, a.qShape[:len(a.qShape)-1]...)
		if err := tensor.WriteNPY(lsePath, lt); err != nil {
			return err
		}
		wrote += fmt.Sprintf(", %s %v", lsePath, lt.Shape)
	}
	fmt.Fprintf(env.stderr, "attend: B=%d Hq=%d Hkv=%d N=%d Nk=%d D=%d in %v (%.1f GFLOP/s) -> %s\n",
		a.p.B, a.p.Hq, a.p.Hkv, a.p.N, a.p.Nk, a.p.D, el.Round(time.Millisecond),
		a.p.VisibleFLOPs()/el.Seconds()/1e9, wrote)
	if do == nil {
		return nil
	}
	wrote = ""
	for _, g := range []struct {
		path  string
		data  []float32
		shape []int
	}{{gf.dq, dq, a.qShape}, {gf.dk, dk, a.kShape}, {gf.dv, dv, a.kShape}} {
		t := tensor.New(g.data, g.shape...)
		if layout == layoutBNHD {
			t = swapHN(t)
		}
		if err := tensor.WriteNPY(g.path, t); err != nil {
			return err
		}
		if wrote != "" {
			wrote += ", "
		}
		wrote += fmt.Sprintf("%s %v", g.path, t.Shape)
	}
	what := "gradients"
	if onCluster {
		what = "forward+backward job"
	}
	fmt.Fprintf(env.stderr, "attend: %s in %v (%.1f GFLOP/s, counting 2.5x the forward's) -> %s\n",
		what, bel.Round(time.Millisecond), bench.BackwardFLOPs(&a.p)/bel.Seconds()/1e9, wrote)
	return nil
}

// attendOnClusterGrads runs the forward and the backward of an attention
// problem as one forward+backward job on a cluster (--cluster W or --nats
// URL), printing the job id and its progress through both passes, and
// returns o, lse and the gradients of sum(o·do).
func attendOnClusterGrads(ctx context.Context, env *cliEnv, a *attention, mf *maskFlags, do *tensor.Tensor) (o, lse, dq, dk, dv []float32, err error) {
	opts, err := mf.jobOptions()
	if err != nil {
		return nil, nil, nil, nil, nil, err
	}
	jc, err := openCluster(ctx, mf)
	if err != nil {
		return nil, nil, nil, nil, nil, err
	}
	defer jc.Close()
	ctx, cancel := mf.conn.withTimeout(ctx)
	defer cancel()
	q := tensor.New(a.qd, a.q4...)
	k := tensor.New(a.kd, a.k4...)
	v := tensor.New(a.vd, a.k4...)
	d := tensor.New(do.Data, a.q4...)
	uploadNote(env.stderr, 2*len(a.qd)+len(a.kd)+len(a.vd), jc.where)
	st, err := jc.cl.SubmitAttentionBackward(ctx, q, k, v, d, nil, nil, opts)
	if err != nil {
		return nil, nil, nil, nil, nil, clusterErr(err)
	}
	jobIDLine(env.stderr, st.GetId(), jc.where)
	st, err = watchJob(ctx, env, jc.cl, st.GetId(), nil)
	if err != nil {
		return nil, nil, nil, nil, nil, clusterErr(err)
	}
	if err := jobOutcome(st); err != nil {
		return nil, nil, nil, nil, nil, err
	}
	res, err := jc.cl.FetchGrads(ctx, st)
	if err != nil {
		return nil, nil, nil, nil, nil, clusterErr(err)
	}
	return res.O.Data, res.LSE.Data, res.DQ.Data, res.DK.Data, res.DV.Data, nil
}

// attendOnCluster runs an attention problem on a cluster (--cluster W or
// --nats URL), printing the job id and its progress, and returns o, lse.
func attendOnCluster(ctx context.Context, env *cliEnv, a *attention, mf *maskFlags) (o, lse []float32, err error) {
	opts, err := mf.jobOptions()
	if err != nil {
		return nil, nil, err
	}
	jc, err := openCluster(ctx, mf)
	if err != nil {
		return nil, nil, err
	}
	defer jc.Close()
	ctx, cancel := mf.conn.withTimeout(ctx)
	defer cancel()
	q := tensor.New(a.qd, a.q4...)
	k := tensor.New(a.kd, a.k4...)
	v := tensor.New(a.vd, a.k4...)
	uploadNote(env.stderr, len(a.qd)+len(a.kd)+len(a.vd), jc.where)
	st, err := jc.cl.SubmitAttention(ctx, q, k, v, true, opts)
	if err != nil {
		return nil, nil, clusterErr(err)
	}
	jobIDLine(env.stderr, st.GetId(), jc.where)
	st, err = watchJob(ctx, env, jc.cl, st.GetId(), nil)
	if err != nil {
		return nil, nil, clusterErr(err)
	}
	if err := jobOutcome(st); err != nil {
		return nil, nil, err
	}
	res, err := jc.cl.FetchAttention(ctx, st)
	if err != nil {
		return nil, nil, clusterErr(err)
	}
	return res.O.Data, res.LSE.Data, nil
}
