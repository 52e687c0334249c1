package coordinator

import (
	"context"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The sweeper. Clients upload a job's inputs under a fresh namespace per
// attempt before submitting; an upload whose submit never happened or was
// refused (or a retry's upload, when the first attempt's job won) is
// referenced by no job and would stay in the store for ever. Every
// SweepInterval the leader lists the store's namespaces and deletes each
// one that no job references and that nobody has written for SweepGrace.
//
// Referenced means: the input namespace or the output namespace (its id)
// of a job that is not EXPIRED, or the input namespace of a submit in
// flight on this leader. Expired jobs' namespaces are deleted by expiry;
// what is left of them is swept like any orphan. The references are read
// again just before each delete, so a job submitted while the sweeper
// listed is not robbed; the grace period covers the rest (a client that
// uploaded more than SweepGrace ago and submits only now may find its
// inputs gone, and gets a fatal "input missing" from the worker).

// sweepState is the sweeper's soft state (under leader.mu).
type sweepState struct {
	next    time.Time // next sweep due
	running bool
}

// sweepTimeout bounds one sweep; sweepCallTimeout each store call in it,
// so that a call lost in a NATS restart ends the sweep early instead of
// holding it (and every later one) for sweepTimeout.
const (
	sweepTimeout     = 5 * time.Minute
	sweepCallTimeout = 20 * time.Second
)

// maybeSweep starts a sweep in the background when one is due.
func (l *leader) maybeSweep(now time.Time) {
	st := l.c.outputs()
	if st == nil {
		return
	}
	l.mu.Lock()
	if l.sweep.next.IsZero() {
		l.sweep.next = now.Add(l.c.cfg.SweepInterval)
	}
	due := !l.sweep.running && !now.Before(l.sweep.next)
	if due {
		l.sweep.running = true
	}
	l.mu.Unlock()
	if !due || !l.enter() {
		return
	}
	go func() {
		defer l.wg.Done()
		l.guard("sweeping", func() {
			ctx, cancel := context.WithTimeout(l.ctx, sweepTimeout)
			defer cancel()
			l.sweepOnce(ctx, st)
		})
		l.mu.Lock()
		l.sweep.running = false
		l.sweep.next = l.c.now().Add(l.c.cfg.SweepInterval)
		l.mu.Unlock()
	}()
}

// referenced returns the namespaces the sweeper must keep.
func (l *leader) referenced() map[string]bool {
	keep := map[string]bool{}
	l.c.fsm.view(func(s *State) {
		for id, j := range s.jobs {
			if j.State != pb.JobState_JOB_STATE_EXPIRED {
				keep[id] = true
				keep[specInputRef(j.Spec)] = true
			}
		}
	})
	l.mu.Lock()
	for ns := range l.inputs {
		keep[ns] = true
	}
	l.mu.Unlock()
	return keep
}

// sweepOnce deletes the unreferenced namespaces older than SweepGrace.
func (l *leader) sweepOnce(ctx context.Context, st outputStore) {
	c := l.c
	lctx, cancel := context.WithTimeout(ctx, sweepCallTimeout)
	nss, err := st.Namespaces(lctx)
	cancel()
	if err != nil {
		l.log.Warn("sweeper cannot list the store", "err", err)
		return
	}
	now := c.now()
	var old []string
	keep := l.referenced()
	for _, ns := range nss {
		if !keep[ns.Name] && now.Sub(ns.Modified) >= c.cfg.SweepGrace {
			old = append(old, ns.Name)
		}
	}
	if len(old) == 0 {
		return
	}
	keep = l.referenced() // again: submits may have committed meanwhile
	for _, ns := range old {
		if keep[ns] || ctx.Err() != nil {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, sweepCallTimeout)
		n, err := st.DeleteNamespace(dctx, ns)
		cancel()
		if err != nil {
			// The store is unreachable or slow: stop here; the next sweep
			// takes up what is left.
			l.log.Warn("sweeper cannot delete a namespace; ending this sweep", "namespace", ns, "err", err)
			return
		}
		c.met.swept.Inc()
		l.log.Info("swept an unreferenced upload namespace", "namespace", ns, "objects", n, "grace", c.cfg.SweepGrace)
	}
}
