package localcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// checkRecords lists every job: each key of the load names exactly one
// job, no job of another key exists, and no job was announced finished
// more than once.
func (r *loadRun) checkRecords(ctx context.Context, rep *LoadReport) []string {
	var all []*pb.JobStatus
	err := Poll(ctx, PollInterval, func() (err error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		all, err = r.c.Client().List(rctx, 2*len(r.jobs)+1000)
		return err
	}, "listing jobs")
	if err != nil {
		return []string{err.Error()}
	}
	var probs []string
	byKey := map[string][]string{}
	for _, st := range all {
		key := st.GetSpec().GetIdempotencyKey()
		byKey[key] = append(byKey[key], st.GetId())
	}
	for _, j := range r.jobs {
		ids := byKey[j.key]
		delete(byKey, j.key)
		switch {
		case j.refused != "" && len(ids) == 0:
		case len(ids) > 1:
			rep.Duplicates++
			probs = append(probs, fmt.Sprintf("key %s names %d jobs in the records: %v", j.key, len(ids), ids))
		case len(ids) == 0:
			probs = append(probs, fmt.Sprintf("key %s (jobs %v) has no job record", j.key, j.ids))
		case len(j.ids) > 0 && ids[0] != j.ids[0]:
			probs = append(probs, fmt.Sprintf("key %s is job %s in the records, but its submit answered %s", j.key, ids[0], j.ids[0]))
		}
	}
	for key, ids := range byKey {
		if strings.HasPrefix(key, fmt.Sprintf("load-%d-", r.cfg.Seed)) {
			probs = append(probs, fmt.Sprintf("jobs %v have key %s, which no client of the load used", ids, key))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, ev := range r.events {
		if len(ev) > 1 {
			rep.Duplicates++
			probs = append(probs, fmt.Sprintf("job %s was announced finished %d times: %v", id, len(ev), ev))
		}
	}
	return probs
}

// waitExpired waits until the coordinators hold no job record and the
// store no namespace; it returns what is left when it gives up.
func (r *loadRun) waitExpired(ctx context.Context) (records, namespaces int, err error) {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.ExpiryTimeout)
	defer cancel()
	store, err := r.c.Client().Store(ctx)
	if err != nil {
		return -1, -1, err
	}
	err = r.pollLogged(wctx, "expiry", func() error {
		rctx, cancel := context.WithTimeout(wctx, 5*time.Second)
		defer cancel()
		ci, err := r.c.Client().Cluster(rctx)
		if err != nil {
			return err
		}
		records = 0
		for st, n := range ci.GetJobsByState() {
			if st != "expired" { // tombstones: id, state and key only
				records += int(n)
			}
		}
		ns, err := store.Namespaces(rctx)
		if err != nil {
			return err
		}
		namespaces = len(ns)
		if records > 0 || namespaces > 0 {
			return fmt.Errorf("%d job records (%v) and %d store namespaces left", records, ci.GetJobsByState(), namespaces)
		}
		return nil
	})
	return records, namespaces, err
}

// pollLogged polls f every 250 ms until it returns nil or ctx ends,
// logging its error every 5 s.
func (r *loadRun) pollLogged(ctx context.Context, what string, f func() error) error {
	next := time.Now().Add(5 * time.Second)
	return Poll(ctx, 250*time.Millisecond, func() error {
		err := f()
		if err != nil && time.Now().After(next) {
			r.log.Info("load: waiting for "+what, "last", err)
			next = time.Now().Add(5 * time.Second)
		}
		return err
	}, what)
}

// procSample is one process's goroutines and resident set.
type procSample struct {
	pid        int
	goroutines float64
	rss        int64
	leader     bool // a coordinator leading (it runs the scheduler and API)
}

// goroutineBase is the idle goroutines p is compared with: its own when
// it has the role it had idle, else those of a coordinator idle in its
// role now (a follower become leader runs the leader's goroutines).
func goroutineBase(idle map[string]procSample, name string, now procSample) float64 {
	b := idle[name]
	if b.leader == now.leader {
		return b.goroutines
	}
	base := 0.0
	for _, o := range idle {
		if o.leader == now.leader && o.goroutines > base && o.pid != 0 {
			base = o.goroutines
		}
	}
	return base
}

// sample scrapes every running process: goroutines from /metrics
// (coordinators and workers), RSS from /proc.
func (r *loadRun) sample(ctx context.Context) (map[string]procSample, error) {
	out := map[string]procSample{}
	leader, err := r.c.Leader(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range r.c.Procs() {
		if !p.Running() {
			continue
		}
		s := procSample{pid: p.Pid(), rss: rss(p.Pid()), leader: p == leader}
		if p.Kind != KindNATS {
			g, err := r.c.Metric(ctx, p, "go_goroutines")
			if err != nil {
				return nil, err
			}
			s.goroutines = g
		}
		out[p.Name] = s
	}
	return out, nil
}

// waitIdle waits until the cluster runs no job and, when idle is given,
// every process that ran throughout has at most its idle goroutines and
// RSS plus the slack; it returns the last samples.
func (r *loadRun) waitIdle(ctx context.Context, idle map[string]procSample) (map[string]procSample, error) {
	wctx, cancel := context.WithTimeout(ctx, r.cfg.IdleTimeout)
	defer cancel()
	var last map[string]procSample
	err := r.pollLogged(wctx, "idle", func() error {
		rctx, cancel := context.WithTimeout(wctx, 5*time.Second)
		defer cancel()
		ci, err := r.c.Client().Cluster(rctx)
		if err != nil {
			return err
		}
		if n := ci.GetJobsByState()["running"] + ci.GetJobsByState()["queued"]; n > 0 {
			return fmt.Errorf("%d jobs running or queued", n)
		}
		s, err := r.sample(rctx)
		if err != nil {
			return err
		}
		last = s
		var busy []string
		for name, a := range s {
			b, ok := idle[name]
			if !ok || b.pid != a.pid {
				continue
			}
			if g := goroutineBase(idle, name, a); a.goroutines > g+float64(r.cfg.GoroutineSlack) {
				busy = append(busy, fmt.Sprintf("%s has %g goroutines (idle %g)", name, a.goroutines, g))
			}
			if b.rss > 0 && a.rss > b.rss+r.cfg.RSSSlack {
				busy = append(busy, fmt.Sprintf("%s has %d MiB resident (idle %d MiB)", name, a.rss>>20, b.rss>>20))
			}
		}
		if len(busy) > 0 {
			slices.Sort(busy)
			return errors.New(strings.Join(busy, "; "))
		}
		return nil
	})
	return last, err
}

// rss is a process's resident set in bytes (VmRSS; 0 where /proc is
// unavailable).
func rss(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
