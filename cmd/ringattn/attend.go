package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/ringattn/ringattn/internal/bench"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// signalContext ends at the first Ctrl-C.
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
	opts.Precision = mf.prec
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
	opts.Precision = mf.prec
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
