package worker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// Fault picks the ranks a test-only fault injection hits (Config.StallFault,
// Config.PanicFault). A rank is hit when its job, epoch and rank match and
// it has finished Step ring steps (0: as its computation starts). Faults
// exist so that system tests can stall or crash a rank inside a real worker
// process; production configurations leave them nil.
type Fault struct {
	Job   string // "" matches every job
	Epoch uint64 // 0 matches every epoch
	Rank  int    // -1 matches every rank
	Step  int    // ring steps finished before the fault fires
}

// ParseFault parses a fault spec: comma-separated key=value pairs with the
// keys job, epoch, rank and step, each optional ("" or "*" as a value, or
// a key left out, matches everything; step defaults to 0), e.g.
// "epoch=1,step=1" or "job=abc,rank=2". An empty spec is no fault (nil).
func ParseFault(spec string) (*Fault, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, nil
	}
	f := &Fault{Rank: -1}
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return nil, fmt.Errorf("fault %q: %q is not key=value (keys job, epoch, rank, step)", spec, kv)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if v == "*" {
			v = ""
		}
		var err error
		switch k {
		case "job":
			if v != "" && !validName(v) {
				return nil, fmt.Errorf("fault %q: job = %q: want a job id [A-Za-z0-9_-]+ or *", spec, v)
			}
			f.Job = v
		case "epoch":
			if v != "" {
				if f.Epoch, err = strconv.ParseUint(v, 10, 64); err != nil || f.Epoch == 0 {
					return nil, fmt.Errorf("fault %q: epoch = %q: want an epoch >= 1 or *", spec, v)
				}
			}
		case "rank":
			if v != "" {
				if f.Rank, err = strconv.Atoi(v); err != nil || f.Rank < 0 {
					return nil, fmt.Errorf("fault %q: rank = %q: want a rank >= 0 or *", spec, v)
				}
			}
		case "step":
			if v != "" {
				if f.Step, err = strconv.Atoi(v); err != nil || f.Step < 0 {
					return nil, fmt.Errorf("fault %q: step = %q: want a step count >= 0", spec, v)
				}
			}
		default:
			return nil, fmt.Errorf("fault %q: unknown key %q: want job, epoch, rank or step", spec, k)
		}
	}
	return f, nil
}

// String is the spec ParseFault reads back.
func (f *Fault) String() string {
	if f == nil {
		return ""
	}
	s := []string{"job=*", "epoch=*", "rank=*", "step=" + strconv.Itoa(f.Step)}
	if f.Job != "" {
		s[0] = "job=" + f.Job
	}
	if f.Epoch != 0 {
		s[1] = "epoch=" + strconv.FormatUint(f.Epoch, 10)
	}
	if f.Rank >= 0 {
		s[2] = "rank=" + strconv.Itoa(f.Rank)
	}
	return strings.Join(s, ",")
}

// hits reports whether the fault fires for rank of job/epoch after `step`
// ring steps.
func (f *Fault) hits(job string, epoch uint64, rank, step int) bool {
	return f != nil && (f.Job == "" || f.Job == job) && (f.Epoch == 0 || f.Epoch == epoch) &&
		(f.Rank < 0 || f.Rank == rank) && f.Step == step
}

// errInjectedPanic is the value a PanicFault panics with.
type errInjectedPanic struct{ where string }

func (e errInjectedPanic) Error() string { return "injected panic (test fault): " + e.where }

// injectFaults runs the configured faults for a rank that has finished
// `step` ring steps: a stall waits until ctx ends, a panic panics.
func (w *Worker) injectFaults(ctx context.Context, t *task, step int) {
	if f := w.cfg.PanicFault; f.hits(t.job, t.epoch, t.rank, step) {
		panic(errInjectedPanic{fmt.Sprintf("job %s epoch %d rank %d after %d steps", t.job, t.epoch, t.rank, step)})
	}
	if f := w.cfg.StallFault; f.hits(t.job, t.epoch, t.rank, step) {
		w.log.Warn("stalling rank (test fault)", "job", t.job, "epoch", t.epoch, "rank", t.rank, "step", step)
		<-ctx.Done()
	}
}
