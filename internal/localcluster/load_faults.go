package localcluster

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// injectFaults injects the configured faults in order, fault i once
// (i+1)/(n+1) of the jobs are done, each where it must land.
func (r *loadRun) injectFaults(ctx context.Context) []LoadFaultResult {
	var out []LoadFaultResult
	n := len(r.cfg.Faults)
	for i, f := range r.cfg.Faults {
		want := int64(len(r.jobs) * (i + 1) / (n + 1))
		err := Poll(ctx, 10*time.Millisecond, func() error {
			if d := r.finished.Load(); d < want {
				return fmt.Errorf("%d of %d jobs done", d, want)
			}
			return nil
		}, fmt.Sprintf("%d jobs done before %s", want, f))
		if err != nil {
			return out
		}
		res := r.inject(ctx, f)
		r.log.Info("fault injected", "fault", f, "victim", res.Victim, "landed", res.Landed, "detail", res.Detail, "err", res.Err)
		out = append(out, res)
	}
	return out
}

// inject lands one fault and restores the cluster after it.
func (r *loadRun) inject(ctx context.Context, f LoadFault) LoadFaultResult {
	c := r.c
	res := LoadFaultResult{Fault: f}
	fail := func(err error) LoadFaultResult {
		res.Err = oneLine(err)
		return res
	}
	switch f {
	case FaultWorkerKill, FaultWorkerTerm:
		// A worker running a shard now.
		var victim *Proc
		err := Poll(ctx, 2*time.Millisecond, func() error {
			for _, w := range c.Workers() {
				if !w.Running() {
					continue
				}
				if n, err := c.Metric(ctx, w, "ringattn_worker_shards_running"); err == nil && n > 0 {
					victim = w
					return nil
				}
			}
			if r.finished.Load() == int64(len(r.jobs)) {
				return Permanent(errors.New("every job finished before a worker ran a shard"))
			}
			return errors.New("no worker runs a shard")
		}, "a worker running a shard")
		if err != nil {
			return fail(err)
		}
		res.Victim, res.Landed = victim.Name, true
		at := time.Now()
		res.At = at.Sub(r.start)
		if f == FaultWorkerKill {
			if err := victim.Kill(); err != nil {
				return fail(err)
			}
		} else {
			ps, err := victim.Terminate(c.cfg.DrainTimeout + 10*time.Second)
			if err != nil {
				return fail(err)
			}
			res.Detail = time.Since(at)
			if ps.ExitCode() != 0 {
				return fail(fmt.Errorf("%s exited with %v after SIGTERM, want 0", victim.Name, ps))
			}
		}
		if _, err := c.AddWorker(ctx); err != nil {
			return fail(fmt.Errorf("replacing %s: %w", victim.Name, err))
		}
	case FaultLeaderKill, FaultNATSRestart:
		err := Poll(ctx, 2*time.Millisecond, func() error {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			ci, err := c.Client().Cluster(rctx)
			if err != nil {
				return err
			}
			if ci.GetJobsByState()["running"] > 0 {
				return nil
			}
			if r.finished.Load() == int64(len(r.jobs)) {
				return Permanent(errors.New("every job finished before the fault"))
			}
			return errors.New("no job running")
		}, "a job running")
		if err != nil {
			return fail(err)
		}
		res.Landed = true
		if f == FaultLeaderKill {
			leader, err := c.Leader(ctx)
			if err != nil {
				return fail(err)
			}
			res.Victim = leader.Name
			at := time.Now()
			res.At = at.Sub(r.start)
			if err := leader.Kill(); err != nil {
				return fail(err)
			}
			if _, err := c.WaitLeader(ctx, leader); err != nil {
				return fail(err)
			}
			res.Detail = time.Since(at)
			if err := c.RestartAndWait(ctx, leader); err != nil {
				return fail(fmt.Errorf("restarting %s: %w", leader.Name, err))
			}
		} else {
			res.Victim = c.NATS.Name
			at := time.Now()
			res.At = at.Sub(r.start)
			if err := c.NATS.Kill(); err != nil {
				return fail(err)
			}
			if err := c.RestartAndWait(ctx, c.NATS); err != nil {
				return fail(err)
			}
			res.Detail = time.Since(at)
		}
	}
	return res
}

// faultTimes fills a fault's stall and recovery from the jobs' times.
func (r *loadRun) faultTimes(f *LoadFaultResult) {
	if !f.Landed {
		return
	}
	at := r.start.Add(f.At)
	atMs := at.UnixMilli()
	var first, last int64
	for _, j := range r.jobs {
		if j.finishMs == 0 || j.finishMs < atMs {
			continue
		}
		if first == 0 || j.finishMs < first {
			first = j.finishMs
		}
		if !j.ackAt.IsZero() && j.ackAt.Before(at) {
			f.InFlight++
			last = max(last, j.finishMs)
		}
	}
	if first > 0 {
		f.Stall = time.Duration(first-atMs) * time.Millisecond
	}
	if last > 0 {
		f.Recovery = time.Duration(last-atMs) * time.Millisecond
	}
}
