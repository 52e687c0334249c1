package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// rssRow is one job of bench rss.
type rssRow struct {
	n, h       int
	jobSecs    float64
	epochs     uint64
	peaks      []int64 // bytes, one per worker process
	shardBytes float64
	diff       float64
}

// benchRSS runs one job per shape on a fresh multi-process cluster and
// reports each worker process's peak resident set.
func benchRSS(env *Env, args []string) error {
	fs := newFlags(env, "bench rss", "[--workers 4] [--seq 131072,262144,524288,1048576] [--heads 8,4,2,1] [--dim 64] [--window 1024] [--png FILE]")
	workers := fs.Int("workers", 4, "number of `W` worker processes")
	seqs := fs.String("seq", "131072,262144,524288,1048576", "comma-separated sequence `lengths` N = Nk, one job each")
	headsF := fs.String("heads", "8,4,2,1", "comma-separated heads `H` per job (one value: every job); the default keeps N·H, and so each worker's shard, fixed")
	dim := fs.Int("dim", 64, "head `dim` D")
	window := fs.Int("window", 1024, "causal mask with a sliding window of this many `keys` (0: fully causal). The window only skips compute: every rank still loads all its query blocks and receives every key/value block of the ring, so memory is that of the dense job")
	block := fs.Int("block", 1024, "tokens per block")
	png := fs.String("png", "", "also plot the peak RSS per job to this `file` (.png, .svg or .pdf)")
	binDir := fs.String("bin", "", localcluster.BinFlagUsage)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprint(w, `Usage: ringattn bench rss [flags]

For each shape, starts a fresh local multi-process cluster like 'ringattn
cluster' (a NATS server, one coordinator and W worker processes), uploads
random q, k, v (B=1), runs one attention job, checks 8 output rows of every
head against the float64 reference, and reads each worker's peak resident set
(VmHWM in /proc/<pid>/status; Linux). Prints a Markdown table; --png plots it.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(env, fs, args); err != nil {
		return err
	}
	ns, err := parseIntList("seq", *seqs)
	if err != nil {
		return err
	}
	hs, err := parseIntList("heads", *headsF)
	if err != nil {
		return err
	}
	switch {
	case *workers < 1:
		return usagef("--workers = %d, expected >= 1", *workers)
	case *dim < 1:
		return usagef("--dim = %d, expected >= 1", *dim)
	case *block < 1:
		return usagef("--block = %d, expected >= 1", *block)
	case *window < 0:
		return usagef("--window = %d, expected >= 0 (0: fully causal)", *window)
	case len(hs) != 1 && len(hs) != len(ns):
		return usagef("--heads has %d values for %d --seq values, expected 1 or %d", len(hs), len(ns), len(ns))
	}
	if len(hs) == 1 {
		for len(hs) < len(ns) {
			hs = append(hs, hs[0])
		}
	}
	ctx, cancel := signalContext()
	defer cancel()

	tmp, err := os.MkdirTemp("", "ringattn-bench-rss-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if *binDir == "" {
		fmt.Fprintln(env.Stderr, "bench rss: locating the coordinator, worker and nats-server binaries...")
	}
	bins, how, err := localcluster.Locate(ctx, *binDir, filepath.Join(tmp, "bin"))
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "bench rss: binaries %s\n", how)
	var rows []*rssRow
	for i, n := range ns {
		row, err := rssJob(ctx, env, bins, filepath.Join(tmp, fmt.Sprintf("job%d", i)), *workers, n, hs[i], *dim, *block, *window)
		if err != nil {
			return fmt.Errorf("bench rss N=%d H=%d: %w", n, hs[i], err)
		}
		rows = append(rows, row)
	}

	mask := "causal"
	if *window > 0 {
		mask = fmt.Sprintf("causal, window %d", *window)
	}
	out := env.Stdout
	fmt.Fprintf(out, "Peak RSS per worker process: %d workers, B=1, D=%d, block %d, f32, mask %s\n\n", *workers, *dim, *block, mask)
	fmt.Fprintln(out, "| N | H | q shard per worker (MiB) | job (s) | epochs | worker peak RSS (MiB) | max (MiB) | max / q shard | sampled rows max abs diff |")
	fmt.Fprintln(out, "|---|---|--------------------------|---------|--------|-----------------------|-----------|---------------|---------------------------|")
	for _, r := range rows {
		var each []string
		var top int64
		for _, p := range r.peaks {
			each = append(each, strconv.FormatInt(p>>20, 10))
			top = max(top, p)
		}
		fmt.Fprintf(out, "| %d | %d | %.0f | %.1f | %d | %s | %d | %.1f | %.1e |\n", r.n, r.h, r.shardBytes/(1<<20), r.jobSecs,
			r.epochs, strings.Join(each, ", "), top>>20, float64(top)/r.shardBytes, r.diff)
	}
	fmt.Fprintln(out, "\nq shard = N/W query rows of every head (f32): the part of q one worker owns. Peak RSS = VmHWM of each worker process, read after its job.")
	if *png != "" {
		var labels []string
		peak := barSeries{name: "max worker peak RSS (MiB)"}
		shard := barSeries{name: "q shard per worker (MiB)"}
		for _, r := range rows {
			var top int64
			for _, p := range r.peaks {
				top = max(top, p)
			}
			labels = append(labels, fmt.Sprintf("N=%d H=%d", r.n, r.h))
			peak.values = append(peak.values, float64(top>>20))
			shard.values = append(shard.values, r.shardBytes/(1<<20))
		}
		title := fmt.Sprintf("worker peak RSS, %d worker processes, D=%d, %s", *workers, *dim, mask)
		if err := writeBarsPNG(*png, title, "MiB", labels, []barSeries{peak, shard}); err != nil {
			return err
		}
		fmt.Fprintf(out, "\nplot: %s\n", *png)
	}
	return nil
}

// rssJob runs one job on a fresh cluster and measures its workers.
func rssJob(ctx context.Context, env *Env, bins localcluster.Binaries, dir string, w, n, h, d, block, window int) (*rssRow, error) {
	r := testrand.New(uint64(n))
	q := tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d)
	k := tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d)
	v := tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d)
	c, err := localcluster.Start(ctx, localcluster.Config{Bin: bins, Dir: dir, Coordinators: 1, Workers: w,
		WorkerGFLOPS: 1, LogLevel: "warn"})
	if err != nil {
		return nil, fmt.Errorf("starting the cluster: %w", err)
	}
	defer c.Kill()
	cl, err := client.Connect(ctx, c.NATSConfig("ringattn-bench-rss"), client.Options{})
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	opts := client.JobOptions{Causal: true, Block: block}
	mask := attnref.Mask{Causal: true}
	if window > 0 {
		opts.Windowed, opts.Left, opts.Right = true, window, 0
		mask = attnref.Mask{Causal: true, Windowed: true, Left: window}
	}
	fmt.Fprintf(env.Stderr, "bench rss: N=%d H=%d: uploading %d MiB...\n", n, h, 3*h*n*d*4>>20)
	st, err := cl.SubmitAttention(ctx, q, k, v, false, opts)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	if st, err = cl.Wait(ctx, st.GetId()); err != nil {
		return nil, err
	}
	if st.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		return nil, fmt.Errorf("job %s ended %v: %s", st.GetId(), st.GetState(), st.GetReason())
	}
	row := &rssRow{n: n, h: h, epochs: st.GetEpoch(), jobSecs: jobSeconds(st),
		shardBytes: float64(n/w) * float64(h*d*4)}
	fmt.Fprintf(env.Stderr, "bench rss: N=%d H=%d: job %s finished in %.1f s (waited %.1f s) in epoch %d on %v\n",
		n, h, st.GetId(), row.jobSecs, time.Since(t0).Seconds(), st.GetEpoch(), st.GetWorkers())
	for _, p := range c.Workers() {
		rss, err := p.PeakRSS()
		if err != nil {
			return nil, err
		}
		row.peaks = append(row.peaks, rss)
	}
	res, err := cl.FetchAttention(ctx, st)
	if err != nil {
		return nil, err
	}
	rows := []int{0, n - 1}
	for i := 1; i <= 6; i++ {
		rows = append(rows, i*n/7)
	}
	p := attnref.Problem{B: 1, Hq: h, Hkv: h, N: n, Nk: n, D: d, Mask: mask}
	want, _ := p.Rows(q.Data, k.Data, v.Data, rows)
	got := make([]float32, 0, len(want))
	for hh := range h {
		for _, i := range rows {
			got = append(got, res.O.Data[(hh*n+i)*d:(hh*n+i+1)*d]...)
		}
	}
	row.diff = attnref.MaxAbsDiff(got, want)
	if !(row.diff <= Tolerance) {
		return nil, fmt.Errorf("job %s: sampled output rows differ from the float64 reference by %g (> %g)", st.GetId(), row.diff, Tolerance)
	}
	return row, nil
}
