package main

import (
	"errors"
	"flag"
	"math"
	"strconv"
	"strings"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
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
	precision      string
	prec           kernels.Precision // --precision, parsed by check
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
	fs.StringVar(&m.precision, "precision", "fp32", "`arithmetic` of the forward pass's products: fp32, or bf16 (Q, K, V and P rounded to bfloat16, float32 softmax and accumulation; ~1e-2 relative error; on a cluster K/V travel as bf16 too)")
	fs.StringVar(&m.strategy, "strategy", "", "shard `strategy`: contiguous, zigzag, striped, splitkv, or heads (each rank takes whole key/value heads, with their GQA query heads, and nothing travels between ranks); default: chosen by a cost model of compute and bytes moved, which may also split the key/value heads into groups with a ring per group")
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
	switch m.precision {
	case "fp32", "f32":
		m.prec = kernels.PrecisionF32
	case "bf16":
		m.prec = kernels.PrecisionBF16
	default:
		return usagef("--precision = %q, expected fp32 or bf16", m.precision)
	}
	switch shard.Strategy(m.strategy) {
	case shard.Auto, shard.Contiguous, shard.Zigzag, shard.Striped, shard.SplitKV, shard.Heads:
	default:
		return usagef("--strategy = %q, expected contiguous, zigzag, striped, splitkv or heads", m.strategy)
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
