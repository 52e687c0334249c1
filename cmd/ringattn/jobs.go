package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// clusterMHA runs a layer job on a cluster, printing its id and progress.
func clusterMHA(ctx context.Context, env *cliEnv, x *tensor.Tensor, ts map[string]*tensor.Tensor, heads int, mf *maskFlags) (*tensor.Tensor, error) {
	opts, err := mf.jobOptions()
	if err != nil {
		return nil, err
	}
	jc, err := openCluster(ctx, mf)
	if err != nil {
		return nil, err
	}
	defer jc.Close()
	ctx, cancel := mf.conn.withTimeout(ctx)
	defer cancel()
	w := client.MHAWeights{Heads: heads, Wq: ts["wq"], Wk: ts["wk"], Wv: ts["wv"], Wo: ts["wo"],
		Bq: ts["bq"], Bk: ts["bk"], Bv: ts["bv"], Bo: ts["bo"]}
	uploadNote(env.stderr, len(x.Data), jc.where)
	st, err := jc.cl.SubmitMHA(ctx, x, w, opts)
	if err != nil {
		return nil, clusterErr(err)
	}
	jobIDLine(env.stderr, st.GetId(), jc.where)
	st, err = watchJob(ctx, env, jc.cl, st.GetId(), nil)
	if err != nil {
		return nil, clusterErr(err)
	}
	if err := jobOutcome(st); err != nil {
		return nil, err
	}
	y, err := jc.cl.FetchMHA(ctx, st)
	if err != nil {
		return nil, clusterErr(err)
	}
	return y, nil
}

// jobCommand parses the flags of a command acting on a running cluster
// (and on one job id when synopsis starts with JOB).
func jobCommand(env *cliEnv, name, synopsis string, args []string, extra func(fs *flag.FlagSet)) (id string, cf *connFlags, url string, err error) {
	fs := newFlags(env, name, synopsis+" [--nats URL]")
	cf = &connFlags{}
	cf.register(fs)
	natsURL := new(string)
	registerNATS(fs, natsURL, "NATS `URL` of the cluster: nats://host:port or host:port (default nats://127.0.0.1:4222, env RINGATTN_NATS_URL)")
	if extra != nil {
		extra(fs)
	}
	// The job id may come before or after the flags.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := parseFlags(env, fs, args); err != nil {
		return "", nil, "", err
	}
	rest := fs.Args()
	if id == "" && len(rest) > 0 && strings.HasPrefix(synopsis, "JOB") {
		id, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 {
		return "", nil, "", usagef("unexpected argument %q", rest[0])
	}
	if strings.HasPrefix(synopsis, "JOB") && id == "" {
		return "", nil, "", usagef("missing the job id (see 'ringattn list')")
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "nats" })
	if given {
		u, err := normalizeNATSURL("nats", natsValue(fs, cf, *natsURL))
		if err != nil {
			return "", nil, "", err
		}
		*natsURL = u
	}
	return id, cf, *natsURL, nil
}

// progressCell is a job's progress: percent and counts of its finest
// counters (ring steps when known, else blocks).
func progressCell(st *pb.JobStatus) string {
	done, total, unit := client.StatusProgress(st)
	if st.GetState() == pb.JobState_JOB_STATE_SUCCEEDED && total > 0 {
		done = total
	}
	if total <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%% %d/%d %s", 100*float64(min(done, total))/float64(total), done, total, unit)
}

func statusLine(st *pb.JobStatus) string {
	s := fmt.Sprintf("%s  %-9s epoch %d  %s  %s", st.GetId(), shortState(st.GetState()), st.GetEpoch(),
		progressCell(st), jobShape(st.GetSpec()))
	if d := jobDuration(st); d != "" {
		s += "  " + d
	}
	if st.GetReason() != "" {
		s += "  reason: " + st.GetReason()
	}
	return s
}

// jobShape describes a job's problem: attention B×Hq×N×D (×Hkv, Nk when
// they differ) and mask, or the mha layer.
func jobShape(sp *pb.JobSpec) string {
	if sp == nil {
		return "-"
	}
	var s string
	if sp.GetKind() == pb.JobKind_JOB_KIND_MHA {
		s = fmt.Sprintf("mha B=%d N=%d d_model=%d heads=%d", sp.GetB(), sp.GetN(), sp.GetDModel(), sp.GetHq())
	} else {
		s = fmt.Sprintf("%dx%dx%dx%d", sp.GetB(), sp.GetHq(), sp.GetN(), sp.GetD())
		if sp.GetHkv() != sp.GetHq() || sp.GetNk() != sp.GetN() {
			s += fmt.Sprintf(" kv %dx%d", sp.GetHkv(), sp.GetNk())
		}
	}
	if m := sp.GetMask(); m != nil {
		if m.GetCausal() {
			s += " causal"
		}
		if m.GetWindowed() {
			s += " window"
		}
		if len(m.GetSeqlens()) > 0 {
			s += fmt.Sprintf(" %d docs", len(m.GetSeqlens()))
		}
	}
	return s
}

// jobDuration is how long a job ran (or has been running).
func jobDuration(st *pb.JobStatus) string {
	if st.GetStartedUnixMs() <= 0 {
		return ""
	}
	end := time.Now()
	if st.GetFinishedUnixMs() > 0 {
		end = time.UnixMilli(st.GetFinishedUnixMs())
	}
	return fmtDuration(max(0, end.Sub(time.UnixMilli(st.GetStartedUnixMs()))))
}

// submitTime shows when a job was submitted: the time of day today, else
// the date too.
func submitTime(ms int64, now time.Time) string {
	if ms <= 0 {
		return "-"
	}
	t := time.UnixMilli(ms).Local()
	if y, m, d := t.Date(); y == now.Year() && m == now.Month() && d == now.Day() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04")
}

func runSubmit(env *cliEnv, args []string) error {
	fs := newFlags(env, "submit", "-q Q.npy -k K.npy -v V.npy [mask flags] [--lse] [--wait] [--nats URL]")
	var qPath, kPath, vPath, layout string
	fs.StringVar(&qPath, "q", "", "queries `file` [B,Hq,N,D], [H,N,D] or [N,D] (.npy, or .safetensors[:name])")
	fs.StringVar(&kPath, "k", "", "keys `file` [B,Hkv,Nk,D]")
	fs.StringVar(&vPath, "v", "", "values `file`, the shape of -k")
	fs.StringVar(&layout, "layout", layoutBHND, "axis `order` of -q/-k/-v: bhnd [B,H,N,D] or bnhd [B,N,H,D] (torch's); outputs are fetched as [B,H,N,D]")
	wait := fs.Bool("wait", false, "wait for the job to finish, showing progress")
	lse := fs.Bool("lse", false, "also compute the log-sum-exp output")
	key := fs.String("idempotency-key", "", "retrying with the same `key` returns the same job")
	var mf maskFlags
	mf.register(fs)
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if err := mf.check(fs); err != nil {
		return err
	}
	if mf.given["ranks"] || mf.given["cluster"] {
		return usagef("submit goes to a running cluster (--nats); --ranks and --cluster do not apply")
	}
	if err := checkLayout(layout); err != nil {
		return err
	}
	q, k, v, err := loadQKV(qPath, kPath, vPath)
	if err != nil {
		return err
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
	if _, err := checkAttentionInputs(q, k, v, &mf); err != nil {
		return err
	}
	opts, err := mf.jobOptions()
	if err != nil {
		return err
	}
	opts.IdempotencyKey = *key
	ctx, cancel := signalContext()
	defer cancel()
	cl, err := dial(ctx, &mf.conn, mf.natsURL)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel2 := mf.conn.withTimeout(ctx)
	defer cancel2()
	uploadNote(env.stderr, len(q.Data)+len(k.Data)+len(v.Data), "")
	st, err := cl.SubmitAttention(ctx, q, k, v, *lse, opts)
	if err != nil {
		return clusterErr(err)
	}
	fmt.Fprintln(env.stdout, st.GetId())
	if !*wait {
		return nil
	}
	st, err = watchJob(ctx, env, cl, st.GetId(), nil)
	if err != nil {
		return clusterErr(err)
	}
	return jobOutcome(st)
}

func jobOutcome(st *pb.JobStatus) error {
	switch st.GetState() {
	case pb.JobState_JOB_STATE_SUCCEEDED:
		return nil
	case pb.JobState_JOB_STATE_FAILED:
		return fmt.Errorf("job %s failed: %s", st.GetId(), st.GetReason())
	}
	return fmt.Errorf("job %s is %s: %s", st.GetId(), shortState(st.GetState()), st.GetReason())
}

func withClient(env *cliEnv, cf *connFlags, url string, f func(ctx context.Context, cl *client.Client) error) error {
	ctx, cancel := signalContext()
	defer cancel()
	cl, err := dial(ctx, cf, url)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	if cf.timeout > 0 {
		cancel2()
		ctx, cancel2 = context.WithTimeout(ctx, cf.timeout)
	}
	defer cancel2()
	return clusterErr(f(ctx, cl))
}

func runStatus(env *cliEnv, args []string) error {
	id, cf, url, err := jobCommand(env, "status", "JOB", args, nil)
	if err != nil {
		return err
	}
	return withClient(env, cf, url, func(ctx context.Context, cl *client.Client) error {
		st, err := cl.Get(ctx, id)
		if err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, statusLine(st))
		return nil
	})
}

func runCancel(env *cliEnv, args []string) error {
	var reason string
	id, cf, url, err := jobCommand(env, "cancel", "JOB [--reason R]", args, func(fs *flag.FlagSet) {
		fs.StringVar(&reason, "reason", "canceled from the CLI", "why (recorded in the job)")
	})
	if err != nil {
		return err
	}
	return withClient(env, cf, url, func(ctx context.Context, cl *client.Client) error {
		st, err := cl.Cancel(ctx, id, reason)
		if err != nil {
			return err
		}
		fmt.Fprintln(env.stdout, statusLine(st))
		return nil
	})
}

func runList(env *cliEnv, args []string) error {
	var state string
	var limit int
	_, cf, url, err := jobCommand(env, "list", "[--state S] [--limit N]", args, func(fs *flag.FlagSet) {
		fs.StringVar(&state, "state", "", "only jobs in this `state` (queued, running, succeeded, failed, canceled, expired)")
		fs.IntVar(&limit, "limit", 100, "at most `N` jobs, newest first")
	})
	if err != nil {
		return err
	}
	if limit < 1 {
		return usagef("--limit = %d, expected >= 1", limit)
	}
	var states []pb.JobState
	if state != "" {
		v, ok := pb.JobState_value["JOB_STATE_"+strings.ToUpper(state)]
		if !ok || v == 0 {
			return usagef("--state = %q, expected queued, running, succeeded, failed, canceled or expired", state)
		}
		states = append(states, pb.JobState(v))
	}
	return withClient(env, cf, url, func(ctx context.Context, cl *client.Client) error {
		jobs, err := cl.List(ctx, limit, states...)
		if err != nil {
			return err
		}
		writeJobList(env.stdout, jobs, strings.ToLower(state), time.Now())
		return nil
	})
}

// writeJobList prints jobs as a table, or a line saying there are none.
func writeJobList(w io.Writer, jobs []*pb.JobStatus, state string, now time.Time) {
	if len(jobs) == 0 {
		if state != "" {
			fmt.Fprintf(w, "no %s jobs\n", state)
		} else {
			fmt.Fprintln(w, "no jobs")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSTATE\tSHAPE\tPROGRESS\tSUBMITTED\tRAN\tREASON")
	for _, st := range jobs {
		d := jobDuration(st)
		if d == "" {
			d = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", st.GetId(), shortState(st.GetState()), jobShape(st.GetSpec()),
			progressCell(st), submitTime(st.GetCreatedUnixMs(), now), d, st.GetReason())
	}
	tw.Flush()
}

func runWatch(env *cliEnv, args []string) error {
	id, cf, url, err := jobCommand(env, "watch", "JOB", args, nil)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	cl, err := dial(ctx, cf, url)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel2 := cf.withTimeout(ctx)
	defer cancel2()
	st, err := watchJob(ctx, env, cl, id, env.stdout)
	if err != nil {
		return clusterErr(err)
	}
	return jobOutcome(st)
}

func runGet(env *cliEnv, args []string) error {
	var oPath, lsePath, layout string
	id, cf, url, err := jobCommand(env, "get", "JOB -o OUT.npy [--lse LSE.npy]", args, func(fs *flag.FlagSet) {
		fs.StringVar(&oPath, "o", "", "output `file` (.npy): o for attention jobs, y for mha jobs")
		fs.StringVar(&lsePath, "lse", "", "log-sum-exp output `file` (attention jobs submitted with --lse)")
		fs.StringVar(&layout, "layout", layoutBHND, "axis `order` of -o for attention jobs: bhnd [B,H,N,D] or bnhd [B,N,H,D]")
	})
	if err != nil {
		return err
	}
	if oPath == "" {
		return usagef("-o is required")
	}
	if err := checkLayout(layout); err != nil {
		return err
	}
	if err := checkWritable([2]string{"-o", oPath}, [2]string{"--lse", lsePath}); err != nil {
		return err
	}
	return withClient(env, cf, url, func(ctx context.Context, cl *client.Client) error {
		st, err := cl.Get(ctx, id)
		if err != nil {
			return err
		}
		if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
			if client.Finished(st.GetState()) {
				return jobOutcome(st)
			}
			return usagef("job %s is %s, not finished yet (ringattn watch %s waits for it)", id, shortState(st.GetState()), id)
		}
		if st.GetSpec().GetKind() == pb.JobKind_JOB_KIND_MHA {
			y, err := cl.FetchMHA(ctx, st)
			if err != nil {
				return err
			}
			if err := tensor.WriteNPY(oPath, y); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "wrote %s %v (y)\n", oPath, y.Shape)
			return nil
		}
		res, err := cl.FetchAttention(ctx, st)
		if err != nil {
			return err
		}
		if lsePath != "" && res.LSE == nil {
			return usagef("--lse: job %s was not submitted with --lse", id)
		}
		o := res.O
		if layout == layoutBNHD {
			o = swapHN(o)
		}
		if err := tensor.WriteNPY(oPath, o); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "wrote %s %v (o)\n", oPath, o.Shape)
		if lsePath != "" {
			if err := tensor.WriteNPY(lsePath, res.LSE); err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "wrote %s %v (lse)\n", lsePath, res.LSE.Shape)
		}
		return nil
	})
}
