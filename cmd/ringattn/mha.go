package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/worker"
	"github.com/ringattn/ringattn/pkg/client"
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
	fs := newFlags(env, "mha", "-x X.npy --wq WQ.npy --wk WK.npy --wv WV.npy --wo WO.npy [--bq .. --bk .. --bv .. --bo ..] --heads H -o Y.npy [--dy dY.npy --grads DIR] [mask flags] [--ranks R]")
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
	dyPath := fs.String("dy", "", "upstream gradient `file` dY, the shape of -x: also compute the gradients of sum(Y·dY) (needs --grads; in every mode: --cluster and --nats run one forward+backward job)")
	gradsDir := fs.String("grads", "", "output `directory` for dx, dwq, dwk, dwv, dwo (and dbq, dbk, dbv, dbo when biases are given) .npy; created if missing")
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
	grads := *dyPath != "" || *gradsDir != ""
	if grads {
		switch {
		case *dyPath == "":
			return usagef("--dy is required with --grads")
		case *gradsDir == "":
			return usagef("--grads is required with --dy")
		}
		if err := checkGradsDir(*gradsDir); err != nil {
			return err
		}
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
	var dy *tensor.Tensor
	if grads {
		t, err := loadTensor("-dy", *dyPath)
		if err != nil {
			return err
		}
		if !equalInts(t.Shape, x.Shape) {
			return usagef("--dy has shape %v, expected the shape of -x %v", t.Shape, x.Shape)
		}
		if !mf.allowNonFinite {
			if err := t.CheckFinite("dy"); err != nil {
				return usagef("--dy: %v (pass --allow-nonfinite to accept)", err)
			}
		}
		dy = t
	}
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
		Scale: float32(mf.scale), Mask: km, Threads: mf.threads, Precision: mf.prec}
	if err := p.Validate(); err != nil {
		return userError(err)
	}
	ctx, cancel := signalContext()
	defer cancel()
	if grads {
		switch {
		case mf.cluster > 0 || mf.natsURL != "":
			return clusterMHAGrads(ctx, env, layer, x, dy, ts, &mf, *oPath, *gradsDir)
		case mf.ranks > 0:
			return ringMHAGrads(ctx, env, layer, &p, x, dy, ts, &mf, *oPath, *gradsDir)
		}
		return mhaGrads(env, layer, &p, x, dy, ts, *oPath, *gradsDir)
	}
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

// mhaGrads runs the layer's forward and backward locally, writes y to
// oPath and the gradients of sum(y·dY) to dir: dx like x, dw* like the
// weights, db* like the biases given.
func mhaGrads(env *cliEnv, layer *ringattn.Layer, p *kernels.Params, x, dy *tensor.Tensor, ts map[string]*tensor.Tensor, oPath, dir string) error {
	start := time.Now()
	y, g, err := layer.Backward(p, x.Data, dy.Data)
	if err != nil {
		return userError(err)
	}
	el := time.Since(start)
	names, err := writeMHAGrads(y, g, x, ts, oPath, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "mha: B=%d N=%d d_model=%d heads=%d D=%d, forward and gradients in %v -> %s, %s/{%s}.npy\n",
		p.B, p.N, layer.DModel, layer.Heads, layer.D, el.Round(time.Millisecond), oPath, dir, strings.Join(names, ","))
	return nil
}

// ringMHAGrads runs the layer's forward and backward with its attention on
// the in-process ring of --ranks R (the projections and the chain rule
// around it in this process), and writes y and the gradients as mhaGrads.
func ringMHAGrads(ctx context.Context, env *cliEnv, layer *ringattn.Layer, p *kernels.Params, x, dy *tensor.Tensor, ts map[string]*tensor.Tensor, mf *maskFlags, oPath, dir string) error {
	start := time.Now()
	b, n := p.B, p.N
	q, k, v, err := layer.Project(x.Data, b, n)
	if err != nil {
		return userError(err)
	}
	a := &attention{p: *p, qd: q, kd: k, vd: v}
	o, lse, err := a.compute(ctx, env, mf)
	if err != nil {
		return err
	}
	y, err := layer.Output(o, b, n)
	if err != nil {
		return userError(err)
	}
	do, err := worker.LayerDO(layer, b, n, dy.Data)
	if err != nil {
		return userError(err)
	}
	dq, dk, dv, err := a.backward(ctx, mf, o, lse, do)
	if err != nil {
		return err
	}
	g, err := worker.LayerGradsFrom(layer, b, n, x.Data, dy.Data, o, dq, dk, dv)
	if err != nil {
		return userError(err)
	}
	el := time.Since(start)
	names, err := writeMHAGrads(y, g, x, ts, oPath, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "mha: B=%d N=%d d_model=%d heads=%d D=%d, forward and gradients on %d ranks in %v -> %s, %s/{%s}.npy\n",
		b, n, layer.DModel, layer.Heads, layer.D, mf.ranks, el.Round(time.Millisecond), oPath, dir, strings.Join(names, ","))
	return nil
}

// writeMHAGrads writes y to oPath and the gradients g to dir (created),
// each shaped like what it is the gradient of (dx like x, dw* like the
// weights, db* like the biases given), and returns the names written.
func writeMHAGrads(y []float32, g *ringattn.LayerGrads, x *tensor.Tensor, ts map[string]*tensor.Tensor, oPath, dir string) ([]string, error) {
	if err := tensor.WriteNPY(oPath, tensor.New(y, x.Shape...)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, err
	}
	out := []struct {
		name string
		data []float32
		like *tensor.Tensor
	}{{"dx", g.DX, x}, {"dwq", g.DWq, ts["wq"]}, {"dwk", g.DWk, ts["wk"]}, {"dwv", g.DWv, ts["wv"]}, {"dwo", g.DWo, ts["wo"]},
		{"dbq", g.DBq, ts["bq"]}, {"dbk", g.DBk, ts["bk"]}, {"dbv", g.DBv, ts["bv"]}, {"dbo", g.DBo, ts["bo"]}}
	var names []string
	for _, o := range out {
		if o.like == nil || o.data == nil {
			continue
		}
		if err := tensor.WriteNPY(filepath.Join(dir, o.name+".npy"), tensor.New(o.data, o.like.Shape...)); err != nil {
			return nil, err
		}
		names = append(names, o.name)
	}
	return names, nil
}

// clusterMHAGrads runs the layer's forward and backward as one
// forward+backward job on a cluster (--cluster W or --nats URL), printing
// the job id and its progress through both passes, and writes y to oPath
// and the gradients of sum(y·dY) to dir as mhaGrads does.
func clusterMHAGrads(ctx context.Context, env *cliEnv, layer *ringattn.Layer, x, dy *tensor.Tensor, ts map[string]*tensor.Tensor, mf *maskFlags, oPath, dir string) error {
	start := time.Now()
	opts, err := mf.jobOptions()
	if err != nil {
		return err
	}
	opts.Precision = mf.prec
	jc, err := openCluster(ctx, mf)
	if err != nil {
		return err
	}
	defer jc.Close()
	ctx, cancel := mf.conn.withTimeout(ctx)
	defer cancel()
	w := client.MHAWeights{Heads: layer.Heads, Wq: ts["wq"], Wk: ts["wk"], Wv: ts["wv"], Wo: ts["wo"],
		Bq: ts["bq"], Bk: ts["bk"], Bv: ts["bv"], Bo: ts["bo"]}
	uploadNote(env.stderr, 2*len(x.Data), jc.where)
	st, err := jc.cl.SubmitMHABackward(ctx, x, dy, w, opts)
	if err != nil {
		return clusterErr(err)
	}
	jobIDLine(env.stderr, st.GetId(), jc.where)
	st, err = watchJob(ctx, env, jc.cl, st.GetId(), nil)
	if err != nil {
		return clusterErr(err)
	}
	if err := jobOutcome(st); err != nil {
		return err
	}
	res, err := jc.cl.FetchMHAGrads(ctx, st)
	if err != nil {
		return clusterErr(err)
	}
	data := func(t *tensor.Tensor) []float32 {
		if t == nil {
			return nil
		}
		return t.Data
	}
	g := &ringattn.LayerGrads{DX: res.DX.Data, DWq: res.DWq.Data, DWk: res.DWk.Data, DWv: res.DWv.Data, DWo: res.DWo.Data,
		DBq: data(res.DBq), DBk: data(res.DBk), DBv: data(res.DBv), DBo: data(res.DBo)}
	names, err := writeMHAGrads(res.Y.Data, g, x, ts, oPath, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "mha: B=%d N=%d d_model=%d heads=%d D=%d, forward+backward job%s in %v -> %s, %s/{%s}.npy\n",
		res.Y.Shape[0], res.Y.Shape[1], layer.DModel, layer.Heads, layer.D, jc.where, time.Since(start).Round(time.Millisecond),
		oPath, dir, strings.Join(names, ","))
	return nil
}

// checkGradsDir checks that --grads dir can be written: an existing
// writable directory, or a missing one whose nearest existing ancestor is a
// writable directory (dir is created after the computation).
func checkGradsDir(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return usagef("--grads %s is not a directory", dir)
		}
		return checkDirWritable("--grads", dir)
	}
	parent := filepath.Dir(filepath.Clean(dir))
	for {
		fi, err := os.Stat(parent)
		if err == nil {
			if !fi.IsDir() {
				return usagef("--grads %s: %s is not a directory", dir, parent)
			}
			break
		}
		next := filepath.Dir(parent)
		if next == parent {
			return usagef("--grads %s: no existing parent directory", dir)
		}
		parent = next
	}
	f, err := os.CreateTemp(parent, ".ringattn-write-check-*")
	if err != nil {
		return usagef("--grads %s: directory %s is not writable", dir, parent)
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	return nil
}
