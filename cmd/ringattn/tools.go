package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// Small tools for a first hour without numpy: write random inputs, check a
// cluster is up, compare two outputs.

// maxRandnElems bounds randn's output (4 GiB of float32).
const maxRandnElems = 1 << 30

func runRandn(env *cliEnv, args []string) error {
	fs := newFlags(env, "randn", "--shape 1,8,4096,64 -o FILE.npy [--seed S]")
	shapeFlag := fs.String("shape", "", "comma-separated `dims` of the tensor, e.g. 1,8,4096,64 for [B,H,N,D]")
	out := fs.String("o", "", "output `file` (.npy, float32)")
	seed := fs.Uint64("seed", 1, "random `seed` (the same seed writes the same tensor)")
	if err := parse(env, fs, args); err != nil {
		return err
	}
	if *shapeFlag == "" {
		return usagef("--shape is required, e.g. --shape 1,8,4096,64")
	}
	if *out == "" {
		return usagef("-o is required")
	}
	shape, err := parseLens("shape", *shapeFlag)
	if err != nil {
		return err
	}
	if len(shape) > 4 {
		return usagef("--shape has %d dims, expected 1 to 4", len(shape))
	}
	n, err := randnElems(*shapeFlag, shape)
	if err != nil {
		return err
	}
	if err := checkWritable([2]string{"-o", *out}); err != nil {
		return err
	}
	t := tensor.New(testrand.New(*seed).Slice(n, testrand.Normal), shape...)
	if err := tensor.WriteNPY(*out, t); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "wrote %s %v (standard normal, seed %d)\n", *out, t.Shape, *seed)
	return nil
}

// randnElems is the element count of shape, at most maxRandnElems,
// checked before each multiplication.
func randnElems(spec string, shape []int) (int, error) {
	n := 1
	for _, d := range shape {
		if d > maxRandnElems/n {
			return 0, usagef("--shape %s has more than %d elements, expected at most that", spec, maxRandnElems)
		}
		n *= d
	}
	return n, nil
}

func runCompare(env *cliEnv, args []string) error {
	fs := newFlags(env, "compare", "A.npy B.npy [--tol 1e-4]")
	tol := fs.Float64("tol", 1e-4, "largest allowed max |a - b|")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	// Files may come before, between or after the flags.
	var files []string
	for rest := fs.Args(); len(rest) > 0; rest = fs.Args() {
		files = append(files, rest[0])
		if err := parseFlags(env, fs, rest[1:]); err != nil {
			return err
		}
	}
	if len(files) != 2 {
		return usagef("expected two .npy files, got %d", len(files))
	}
	if !(*tol >= 0) {
		return usagef("--tol = %v, expected >= 0", *tol)
	}
	a, err := loadTensor("compare A", files[0])
	if err != nil {
		return err
	}
	b, err := loadTensor("compare B", files[1])
	if err != nil {
		return err
	}
	if !equalInts(a.Shape, b.Shape) {
		return fmt.Errorf("%s has shape %v, %s has %v", files[0], a.Shape, files[1], b.Shape)
	}
	var m float64
	for i := range a.Data {
		d := math.Abs(float64(a.Data[i]) - float64(b.Data[i]))
		if math.IsNaN(d) && !(math.IsNaN(float64(a.Data[i])) && math.IsNaN(float64(b.Data[i]))) {
			m = math.Inf(1)
			break
		}
		m = max(m, d)
	}
	verdict := "equal within"
	if !(m <= *tol) {
		verdict = "DIFFERENT beyond"
	}
	fmt.Fprintf(env.stdout, "%s vs %s: %v, max |a - b| = %.2e, %s %.0e\n", files[0], files[1], a.Shape, m, verdict, *tol)
	if !(m <= *tol) {
		return fmt.Errorf("max |a - b| = %.3g exceeds --tol %g", m, *tol)
	}
	return nil
}

func runInfo(env *cliEnv, args []string) error {
	var wait time.Duration
	var workers int
	_, cf, url, err := jobCommand(env, "info", "[--wait D] [--workers W]", args, func(fs *flag.FlagSet) {
		fs.DurationVar(&wait, "wait", 0, "keep trying this long for the cluster to be up (a leader and --workers workers)")
		fs.IntVar(&workers, "workers", 0, "with --wait, also wait for at least `W` live workers")
	})
	if err != nil {
		return err
	}
	if wait < 0 || workers < 0 {
		return usagef("--wait and --workers must be >= 0")
	}
	ctx, cancel := signalContext()
	defer cancel()
	if wait > 0 {
		var cancel2 context.CancelFunc
		ctx, cancel2 = context.WithTimeout(ctx, wait)
		defer cancel2()
	}
	for {
		err := infoOnce(ctx, env, cf, url, workers)
		if err == nil || wait == 0 || errors.As(err, new(usageError)) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// errNotReady is a cluster without a leader or without enough workers.
var errNotReady = errors.New("not ready")

func infoOnce(ctx context.Context, env *cliEnv, cf *connFlags, url string, minWorkers int) error {
	cl, err := dial(ctx, cf, url)
	if err != nil {
		return err
	}
	defer cl.Close()
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := cl.Cluster(rctx)
	if err != nil {
		if errors.Is(err, client.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			return unreachableError{fmt.Errorf("NATS answers but no coordinator leader does (start `coordinator` processes, or wait for the election)")}
		}
		return err
	}
	if len(c.GetWorkers()) < minWorkers {
		return unreachableError{fmt.Errorf("%w: %d live workers, waiting for %d", errNotReady, len(c.GetWorkers()), minWorkers)}
	}
	fmt.Fprintf(env.stdout, "leader %s (term %d), %d coordinators, %d workers, queue %d\n",
		c.GetLeaderId(), c.GetTerm(), len(c.GetPeers()), len(c.GetWorkers()), c.GetQueueDepth())
	var ids []string
	for _, w := range c.GetWorkers() {
		ids = append(ids, w.GetId())
	}
	sort.Strings(ids)
	if len(ids) > 0 {
		fmt.Fprintf(env.stdout, "workers: %s\n", strings.Join(ids, ", "))
	}
	return nil
}
