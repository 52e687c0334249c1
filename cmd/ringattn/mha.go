package main

import (
	"fmt"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// mhaFields name the flag or input each field of a shard.FieldError comes
// from, for mha.
var mhaFields = map[string]string{
	"b": "-x batch B", "hq": "--heads", "hkv": "--heads", "d": "--wq head dim D (rows / --heads)",
	"n": "-x length N", "nk": "-x length N", "d_model": "-x d_model", "block": "--block", "ranks": "--ranks",
	"strategy": "--strategy", "mask.seqlens": "--seqlens", "mask.seqlens_k": "--seqlens-k",
	"mask.window_left": "--window-left", "mask.window_right": "--window-right", "": "inputs",
}

func runMHA(env *cliEnv, args []string) error {
	fs := newFlags(env, "mha", "-x X.npy --wq WQ.npy --wk WK.npy --wv WV.npy --wo WO.npy [--bq .. --bk .. --bv .. --bo ..] --heads H -o Y.npy [mask flags] [--ranks R]")
	paths := map[string]*string{}
	for _, n := range []struct{ name, help string }{
		{"x", "input `file` [B,N,d_model] or [N,d_model]"},
		{"wq", "query projection `file` [H·D, d_model]"},
		{"wk", "key projection `file` [H·D, d_model]"},
		{"wv", "value projection `file` [H·D, d_model]"},
		{"wo", "output projection `file` [d_model, H·D]"},
		{"bq", "optional query bias `file` [H·D]"},
		{"bk", "optional key bias `file` [H·D]"},
		{"bv", "optional value bias `file` [H·D]"},
		{"bo", "optional output bias `file` [d_model]"},
	} {
		paths[n.name] = fs.String(n.name, "", n.help)
	}
	heads := fs.Int("heads", 0, "number of heads `H` (H·D is the projections' output size)")
	oPath := fs.String("o", "", "output `file` (.npy, float32, the shape of -x)")
	var mf maskFlags
	mf.register(fs)
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if err := mf.check(fs); err != nil {
		return err
	}
	if lim := shard.DefaultLimits(); *heads < 1 || int64(*heads) > lim.MaxHeads {
		return usagef("--heads = %d, expected 1..%d", *heads, lim.MaxHeads)
	}
	if *oPath == "" {
		return usagef("-o is required")
	}
	if err := checkWritable([2]string{"-o", *oPath}); err != nil {
		return err
	}
	ts := map[string]*tensor.Tensor{}
	for _, name := range []string{"x", "wq", "wk", "wv", "wo", "bq", "bk", "bv", "bo"} {
		p := *paths[name]
		if p == "" {
			if name[0] == 'b' {
				continue
			}
			return usagef("--%s is required", name)
		}
		t, err := loadTensor(name, p)
		if err != nil {
			return err
		}
		if !mf.allowNonFinite {
			if err := t.CheckFinite(name); err != nil {
				return usagef("%v (pass --allow-nonfinite to accept)", err)
			}
		}
		ts[name] = t
	}
	x := ts["x"]
	var b, n, dModel int
	switch len(x.Shape) {
	case 2:
		b, n, dModel = 1, x.Shape[0], x.Shape[1]
	case 3:
		b, n, dModel = x.Shape[0], x.Shape[1], x.Shape[2]
	default:
		return usagef("-x has shape %v, expected [B,N,d_model] or [N,d_model]", x.Shape)
	}
	wq := ts["wq"]
	if len(wq.Shape) != 2 || wq.Shape[1] != dModel {
		return usagef("--wq has shape %v, expected [H·D, %d]", wq.Shape, dModel)
	}
	hd := wq.Shape[0]
	if hd%*heads != 0 {
		return usagef("--wq has %d output features, not divisible by --heads %d", hd, *heads)
	}
	want := map[string][]int{"wk": {hd, dModel}, "wv": {hd, dModel}, "wo": {dModel, hd},
		"bq": {hd}, "bk": {hd}, "bv": {hd}, "bo": {dModel}}
	for name, shape := range want {
		if t, ok := ts[name]; ok && !equalInts(t.Shape, shape) {
			return usagef("--%s has shape %v, expected %v", name, t.Shape, shape)
		}
	}
	data := func(name string) []float32 {
		if t, ok := ts[name]; ok {
			return t.Data
		}
		return nil
	}
	if n == 0 {
		return usagef("-x has an empty sequence, expected N >= 1")
	}
	km, err := mf.mask()
	if err != nil {
		return err
	}
	_, bias := ts["bq"]
	req := shard.Request{B: b, Hq: *heads, Hkv: *heads, D: hd / *heads, N: n, Nk: n, Block: mf.block,
		Mask: shardMask(km), Ranks: max(1, mf.ranks), Strategy: shard.Strategy(mf.strategy)}
	if err := checkLimits(&req, shard.Tensors{DModel: dModel, Bias: bias}, mhaFields); err != nil {
		return err
	}
	layer := &ringattn.Layer{DModel: dModel, Heads: *heads, D: hd / *heads,
		Wq: data("wq"), Wk: data("wk"), Wv: data("wv"), Wo: data("wo"),
		Bq: data("bq"), Bk: data("bk"), Bv: data("bv"), Bo: data("bo")}
	if err := layer.Validate(); err != nil {
		return userError(err)
	}
	p := kernels.Params{Shape: kernels.Shape{B: b, Hq: *heads, Hkv: *heads, D: layer.D}, N: n, Nk: n,
		Scale: float32(mf.scale), Mask: km, Threads: mf.threads}
	if err := p.Validate(); err != nil {
		return userError(err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	start := time.Now()
	if mf.cluster > 0 || mf.natsURL != "" {
		y, err := clusterMHA(ctx, env, x, ts, *heads, &mf)
		if err != nil {
			return err
		}
		if err := tensor.WriteNPY(*oPath, tensor.New(y.Data, x.Shape...)); err != nil {
			return err
		}
		fmt.Fprintf(env.stderr, "mha: B=%d N=%d d_model=%d heads=%d D=%d on the cluster in %v -> %s\n",
			b, n, dModel, *heads, layer.D, time.Since(start).Round(time.Millisecond), *oPath)
		return nil
	}
	q, k, v, err := layer.Project(x.Data, b, n)
	if err != nil {
		return err
	}
	a := &attention{p: p, qd: q, kd: k, vd: v}
	o, _, err := a.compute(ctx, env, &mf)
	if err != nil {
		return err
	}
	y, err := layer.Output(o, b, n)
	if err != nil {
		return err
	}
	if err := tensor.WriteNPY(*oPath, tensor.New(y, x.Shape...)); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "mha: B=%d N=%d d_model=%d heads=%d D=%d in %v -> %s\n",
		b, n, dModel, *heads, layer.D, time.Since(start).Round(time.Millisecond), *oPath)
	return nil
}
