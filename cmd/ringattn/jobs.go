package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// clusterMHA runs a layer job on a cluster.
func clusterMHA(ctx context.Context, env *cliEnv, x *tensor.Tensor, ts map[string]*tensor.Tensor, heads int, mf *maskFlags) (*tensor.Tensor, error) {
	opts, err := mf.jobOptions()
	if err != nil {
		return nil, err
	}
	s, err := openSession(ctx, env, mf, &mf.conn)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	ctx, cancel := mf.conn.withTimeout(ctx)
	defer cancel()
	w := client.MHAWeights{Heads: heads, Wq: ts["wq"], Wk: ts["wk"], Wv: ts["wv"], Wo: ts["wo"],
		Bq: ts["bq"], Bk: ts["bk"], Bv: ts["bv"], Bo: ts["bo"]}
	y, _, err := s.cl.MHA(ctx, x, w, opts, nil)
	if err != nil {
		return nil, clusterErr(err)
	}
	return y, nil
}

// jobCommand parses the flags of a command acting on one job id.
func jobCommand(env *cliEnv, name, synopsis string, args []string, extra func(fs *flag.FlagSet)) (id string, cf *connFlags, url string, err error) {
	fs := newFlags(env, name, "--nats URL "+synopsis)
	cf = &connFlags{}
	cf.register(fs)
	natsURL := fs.String("nats", "", "NATS `URL` of the cluster (default: --nats-url / RINGATTN_NATS_URL)")
	if extra != nil {
		extra(fs)
	}
	// The job id may come before or after the flags.
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			fs.SetOutput(env.stdout)
			fs.Usage()
			return "", nil, "", err
		}
		return "", nil, "", usageError{err}
	}
	rest := fs.Args()
	if id == "" && len(rest) > 0 {
		id, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 {
		return "", nil, "", usagef("unexpected argument %q", rest[0])
	}
	if strings.HasPrefix(synopsis, "JOB") && id == "" {
		return "", nil, "", usagef("missing the job id")
	}
	return id, cf, *natsURL, nil
}

func statusLine(st *pb.JobStatus) string {
	state := strings.TrimPrefix(st.GetState().String(), "JOB_STATE_")
	s := fmt.Sprintf("%s  %-9s epoch %d  %d/%d blocks", st.GetId(), state, st.GetEpoch(), st.GetBlocksDone(), st.GetBlocksTotal())
	if st.GetStartedUnixMs() > 0 {
		end := time.Now()
		if st.GetFinishedUnixMs() > 0 {
			end = time.UnixMilli(st.GetFinishedUnixMs())
		}
		s += fmt.Sprintf("  %v", end.Sub(time.UnixMilli(st.GetStartedUnixMs())).Round(time.Millisecond))
	}
	if st.GetReason() != "" {
		s += "  reason: " + st.GetReason()
	}
	return s
}

func runSubmit(env *cliEnv, args []string) error {
	fs := newFlags(env, "submit", "--nats URL -q Q.npy -k K.npy -v V.npy [mask flags] [--wait]")
	var qPath, kPath, vPath string
	fs.StringVar(&qPath, "q", "", "queries `file`")
	fs.StringVar(&kPath, "k", "", "keys `file`")
	fs.StringVar(&vPath, "v", "", "values `file`")
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
	q, k, v, err := loadQKV(qPath, kPath, vPath)
	if err != nil {
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
	cl, err := mf.conn.connect(ctx, mf.natsURL)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel2 := mf.conn.withTimeout(ctx)
	defer cancel2()
	st, err := cl.SubmitAttention(ctx, q, k, v, *lse, opts)
	if err != nil {
		return clusterErr(err)
	}
	fmt.Fprintln(env.stdout, st.GetId())
	if !*wait {
		return nil
	}
	pr := newProgress(env.stderr)
	st, err = cl.Watch(ctx, st.GetId(), 0, pr.update)
	if err != nil {
		return err
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
	return fmt.Errorf("job %s is %s: %s", st.GetId(), strings.TrimPrefix(st.GetState().String(), "JOB_STATE_"), st.GetReason())
}

func withClient(env *cliEnv, cf *connFlags, url string, f func(ctx context.Context, cl *client.Client) error) error {
	ctx, cancel := signalContext()
	defer cancel()
	cl, err := cf.connect(ctx, url)
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
	var states []pb.JobState
	if state != "" {
		v, ok := pb.JobState_value["JOB_STATE_"+strings.ToUpper(state)]
		if !ok {
			return usagef("--state = %q, expected queued, running, succeeded, failed, canceled or expired", state)
		}
		states = append(states, pb.JobState(v))
	}
	return withClient(env, cf, url, func(ctx context.Context, cl *client.Client) error {
		jobs, err := cl.List(ctx, limit, states...)
		if err != nil {
			return err
		}
		for _, st := range jobs {
			fmt.Fprintln(env.stdout, statusLine(st))
		}
		return nil
	})
}

func runWatch(env *cliEnv, args []string) error {
	id, cf, url, err := jobCommand(env, "watch", "JOB", args, nil)
	if err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	cl, err := cf.connect(ctx, url)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel2 := cf.withTimeout(ctx)
	defer cancel2()
	pr := newProgress(env.stdout)
	st, err := cl.Watch(ctx, id, 0, pr.update)
	if err != nil {
		return clusterErr(err)
	}
	return jobOutcome(st)
}

func runGet(env *cliEnv, args []string) error {
	var oPath, lsePath string
	id, cf, url, err := jobCommand(env, "get", "JOB -o OUT.npy [--lse LSE.npy]", args, func(fs *flag.FlagSet) {
		fs.StringVar(&oPath, "o", "", "output `file` (.npy): o for attention jobs, y for mha jobs")
		fs.StringVar(&lsePath, "lse", "", "log-sum-exp output `file` (attention jobs submitted with --lse)")
	})
	if err != nil {
		return err
	}
	if oPath == "" {
		return usagef("-o is required")
	}
	return withClient(env, cf, url, func(ctx context.Context, cl *client.Client) error {
		st, err := cl.Get(ctx, id)
		if err != nil {
			return err
		}
		if st.GetSpec().GetKind() == pb.JobKind_JOB_KIND_MHA {
			y, err := cl.FetchMHA(ctx, st)
			if err != nil {
				return err
			}
			return tensor.WriteNPY(oPath, y)
		}
		res, err := cl.FetchAttention(ctx, st)
		if err != nil {
			return err
		}
		if err := tensor.WriteNPY(oPath, res.O); err != nil {
			return err
		}
		if lsePath != "" {
			if res.LSE == nil {
				return usagef("--lse: job %s was not submitted with --lse", id)
			}
			return tensor.WriteNPY(lsePath, res.LSE)
		}
		return nil
	})
}
