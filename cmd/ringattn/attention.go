package main

import (
	"context"
	"flag"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/tensor"
)

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
		N: q4[2], Nk: k4[2], Scale: float32(mf.scale), Mask: km, Threads: mf.threads, Precision: mf.prec}
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
