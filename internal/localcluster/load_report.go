package localcluster

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Markdown renders the report: the summary table, the faults, the
// processes and the problems.
func (rep *LoadReport) Markdown() string {
	var b strings.Builder
	var faults []string
	for _, f := range rep.Faults {
		faults = append(faults, string(f.Fault))
	}
	fmt.Fprintf(&b, "| jobs (small+large) | clients | faults | successes | refusals | duplicates | lost | re-planned | throughput | p50 | p99 | max |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| %d (%d+%d) | %d | %s | %d | %d | %d | %d | %d | %.1f jobs/s | %v | %v | %v |\n\n",
		rep.Jobs, rep.Small, rep.Large, rep.Clients, cmp.Or(strings.Join(faults, ", "), "none"), rep.Succeeded, rep.Refused,
		rep.Duplicates, rep.Lost, rep.Replanned, rep.Throughput, rep.P50.Round(time.Millisecond), rep.P99.Round(time.Millisecond),
		rep.Max.Round(time.Millisecond))
	if len(rep.Faults) > 0 {
		fmt.Fprintf(&b, "| fault | victim | at | reaction | stall (fault -> next job done) | recovery (fault -> jobs in flight done) | jobs in flight |\n")
		fmt.Fprintf(&b, "|---|---|---|---|---|---|---|\n")
		for _, f := range rep.Faults {
			react := "-"
			switch {
			case f.Err != "":
				react = "ERROR: " + f.Err
			case f.Fault == FaultWorkerTerm:
				react = fmt.Sprintf("exited 0 after %v", f.Detail.Round(time.Millisecond))
			case f.Fault == FaultLeaderKill:
				react = fmt.Sprintf("new leader after %v", f.Detail.Round(time.Millisecond))
			case f.Fault == FaultNATSRestart:
				react = fmt.Sprintf("serving again after %v", f.Detail.Round(time.Millisecond))
			}
			fmt.Fprintf(&b, "| %s | %s | %v | %s | %v | %v | %d |\n", f.Fault, f.Victim, f.At.Round(time.Millisecond), react,
				f.Stall.Round(time.Millisecond), f.Recovery.Round(time.Millisecond), f.InFlight)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "Submits: %d (%d answered an existing job: the deliberate retries). Leaks after %v: %d job records, %d store namespaces left.\n\n",
		rep.Submits, rep.Existing, rep.ExpiredAfter.Round(time.Millisecond), rep.LeftRecords, rep.LeftNamespaces)
	if len(rep.RefusalErrors) > 0 {
		b.WriteString("Refusals:\n")
		for _, e := range slices.Sorted(maps.Keys(rep.RefusalErrors)) {
			fmt.Fprintf(&b, "- %d× %s\n", rep.RefusalErrors[e], e)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "| process | goroutines idle -> after | RSS idle -> after |\n|---|---|---|\n")
	for _, p := range rep.Procs {
		if p.Skipped != "" {
			fmt.Fprintf(&b, "| %s | (%s) | |\n", p.Name, p.Skipped)
			continue
		}
		g := "-"
		if p.IdleGoroutines > 0 {
			g = fmt.Sprintf("%g -> %g", p.IdleGoroutines, p.AfterGoroutines)
		}
		if p.Role != "" {
			g += " (" + p.Role + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %.1f -> %.1f MiB |\n", p.Name, g, float64(p.IdleRSS)/(1<<20), float64(p.AfterRSS)/(1<<20))
	}
	if len(rep.Problems) > 0 {
		fmt.Fprintf(&b, "\nProblems (%d):\n", len(rep.Problems))
		for i, p := range rep.Problems {
			if i == 20 {
				fmt.Fprintf(&b, "- ... %d more\n", len(rep.Problems)-20)
				break
			}
			fmt.Fprintf(&b, "- %s\n", p)
		}
	}
	return b.String()
}

// outcomes fills rep from the jobs and the faults once the load ended at
// end: counts, latencies, throughput, fault times, and a problem for each
// lost or duplicated job and each fault that did not land.
func (r *loadRun) outcomes(rep *LoadReport, end time.Time) {
	var lat []time.Duration
	for _, j := range r.jobs {
		rep.Submits += j.submits
		rep.Existing += j.existing
		switch {
		case j.refused != "":
			rep.Refused++
			rep.RefusalErrors[j.refused]++
		case j.succeeded:
			rep.Succeeded++
			lat = append(lat, j.doneAt.Sub(j.submitAt))
		default:
			rep.Lost++
			rep.Problems = append(rep.Problems, fmt.Sprintf("key %s (jobs %v): %s", j.key, j.ids, j.err))
		}
		if j.epoch > 1 {
			rep.Replanned++
		}
		if ids := slices.Compact(slices.Sorted(slices.Values(j.ids))); len(ids) > 1 {
			rep.Duplicates++
			rep.Problems = append(rep.Problems, fmt.Sprintf("key %s answered %d jobs: %v", j.key, len(ids), ids))
		}
	}
	rep.Elapsed = end.Sub(r.start)
	if rep.Elapsed > 0 {
		rep.Throughput = float64(rep.Succeeded) / rep.Elapsed.Seconds()
	}
	slices.Sort(lat)
	rep.P50, rep.P99 = quantile(lat, 0.5), quantile(lat, 0.99)
	if len(lat) > 0 {
		rep.Max = lat[len(lat)-1]
	}
	for i := range rep.Faults {
		r.faultTimes(&rep.Faults[i])
		if f := rep.Faults[i]; !f.Landed || f.Err != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("fault %s: %s", f.Fault, cmp.Or(f.Err, "did not land")))
		}
	}
	if len(rep.Faults) < len(r.cfg.Faults) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("only %d of %d faults were injected before the load ended", len(rep.Faults), len(r.cfg.Faults)))
	}
}

// procs compares each process's sample after the load with its idle one.
func (r *loadRun) procs(idle, after map[string]procSample) []LoadProc {
	var out []LoadProc
	for _, p := range r.c.Procs() {
		lp := LoadProc{Name: p.Name}
		b, a := idle[p.Name], after[p.Name]
		switch {
		case b.pid == 0:
			lp.Skipped = "started during the load"
		case a.pid == 0:
			lp.Skipped = "gone (faulted)"
		case a.pid != b.pid:
			lp.Skipped = "restarted (faulted)"
		}
		lp.IdleGoroutines, lp.AfterGoroutines, lp.IdleRSS, lp.AfterRSS = b.goroutines, a.goroutines, b.rss, a.rss
		if a.pid != 0 && b.leader != a.leader {
			lp.IdleGoroutines = goroutineBase(idle, p.Name, a)
			lp.Role = "follower -> leader"
			if b.leader {
				lp.Role = "leader -> follower"
			}
		}
		out = append(out, lp)
	}
	return out
}
