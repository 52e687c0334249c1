package coordinator

import (
	"context"
	"slices"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
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
//
// Each tenant's bucket is swept with its own references (a namespace name
// in one bucket says nothing about another's): the buckets of the tenants
// that own jobs in the state, and the default tenant's. With an injected
// Deps.Tensors (one store for every tenant) it is swept once, keeping
// every tenant's references.

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
	if l.c.outputsOf(transport.DefaultTenant) == nil {
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
			for _, owner := range l.sweepOwners() {
				if ctx.Err() != nil {
					break
				}
				if st := l.c.outputsOf(owner); st != nil {
					l.sweepOnce(ctx, owner, st)
				}
			}
		})
		l.mu.Lock()
		l.sweep.running = false
		l.sweep.next = l.c.now().Add(l.c.cfg.SweepInterval)
		l.mu.Unlock()
	}()
}

// sweepOwners are the tenants whose buckets are swept ("" alone: the
// one injected store, every tenant's references kept).
func (l *leader) sweepOwners() []string {
	if !l.c.perBucket() {
		return []string{""}
	}
	seen := map[string]bool{transport.DefaultTenant: true}
	owners := []string{transport.DefaultTenant}
	l.c.fsm.view(func(s *State) {
		for _, j := range s.jobs {
			if !seen[j.Owner] {
				seen[j.Owner] = true
				owners = append(owners, j.Owner)
			}
		}
	})
	slices.Sort(owners[1:])
	return owners
}

// referenced returns the namespaces the sweeper must keep in owner's
// bucket ("": in every bucket).
func (l *leader) referenced(owner string) map[string]bool {
	keep := map[string]bool{}
	l.c.fsm.view(func(s *State) {
		for id, j := range s.jobs {
			if j.State != pb.JobState_JOB_STATE_EXPIRED && (owner == "" || j.Owner == owner) {
				keep[id] = true
				keep[specInputRef(j.Spec)] = true
			}
		}
	})
	l.mu.Lock()
	for ik := range l.inputs {
		if owner == "" || ik.owner == owner {
			keep[ik.ns] = true
		}
	}
	l.mu.Unlock()
	return keep
}

// sweepOnce deletes the unreferenced namespaces older than SweepGrace
// from owner's bucket st ("": the one store of every tenant).
func (l *leader) sweepOnce(ctx context.Context, owner string, st outputStore) {
	c := l.c
	lctx, cancel := context.WithTimeout(ctx, sweepCallTimeout)
	nss, err := st.Namespaces(lctx)
	cancel()
	if err != nil {
		l.log.Warn("sweeper cannot list the store", "tenant", owner, "err", err)
		return
	}
	now := c.now()
	var old []string
	keep := l.referenced(owner)
	for _, ns := range nss {
		if !keep[ns.Name] && now.Sub(ns.Modified) >= c.cfg.SweepGrace {
			old = append(old, ns.Name)
		}
	}
	if len(old) == 0 {
		return
	}
	keep = l.referenced(owner) // again: submits may have committed meanwhile
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
			l.log.Warn("sweeper cannot delete a namespace; ending this sweep", "tenant", owner, "namespace", ns, "err", err)
			return
		}
		c.met.swept.Inc()
		l.log.Info("swept an unreferenced upload namespace", "tenant", owner, "namespace", ns, "objects", n, "grace", c.cfg.SweepGrace)
	}
}
