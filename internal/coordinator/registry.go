package coordinator

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The worker registry: soft state of the leader, rebuilt from heartbeats.

// Heartbeat limits. A heartbeat is decoded once, here, into a value the
// scheduler can trust: numbers it weighs plans by are finite and bounded,
// lists are bounded, names are valid subject tokens.
const (
	// maxHeartbeatBytes bounds an encoded heartbeat (transport drops a
	// larger one before it is decoded).
	maxHeartbeatBytes = transport.MaxHeartbeatBytes
	// maxRunning bounds the shards one heartbeat lists; more are dropped.
	maxRunning = 1024
	// maxSlots bounds the ranks one worker may run at once.
	maxSlots = 1024
	// maxGflops: a speed above this (10 PFLOP/s) is not a measurement.
	maxGflops = 1e7
	// maxWorkers bounds the registry: heartbeats of further new worker ids
	// are dropped until some worker times out.
	maxWorkers = 4096
	// maxVersionBytes bounds the version string kept for display.
	maxVersionBytes = 64
)

// sanitizeHeartbeat makes hb trustworthy in place and says what it had to
// change: a speed that is not finite and within (0, maxGflops] becomes 0
// (unknown: plans give it a default weight), slots are clamped to
// [0, maxSlots], shard refs with an invalid job id or negative rank and
// duplicates are dropped and at most maxRunning are kept, the version is
// cut to maxVersionBytes. The worker id is checked by the caller.
func sanitizeHeartbeat(hb *pb.Heartbeat) (badSpeed bool, dropped int) {
	if g := hb.Gflops; math.IsNaN(g) || math.IsInf(g, 0) || g <= 0 || g > maxGflops {
		badSpeed = true
		hb.Gflops = 0
	}
	hb.Slots = min(max(hb.Slots, 0), maxSlots)
	if len(hb.Version) > maxVersionBytes {
		hb.Version = strings.ToValidUTF8(hb.Version[:maxVersionBytes], "")
	}
	seen := map[shardKey]bool{}
	keep := hb.Running[:0]
	for _, ref := range hb.Running {
		k := shardKey{ref.GetJobId(), ref.GetEpoch(), ref.GetRank()}
		if ref == nil || len(keep) >= maxRunning || validName("job_id", ref.JobId, true) != nil || ref.Rank < 0 || seen[k] {
			dropped++
			continue
		}
		seen[k] = true
		keep = append(keep, ref)
	}
	clear(hb.Running[len(keep):])
	hb.Running = keep
	return badSpeed, dropped
}

// onHeartbeat handles one heartbeat transport decoded; a panic drops it
// (no ack).
func (l *leader) onHeartbeat(hb *pb.Heartbeat) (a *pb.HeartbeatAck) {
	l.guard("heartbeat", func() { a = l.heartbeat(hb) })
	return a
}

// heartbeat records one heartbeat and returns its ack (nil: dropped). It
// keeps hb (sanitized in place).
func (l *leader) heartbeat(hbp *pb.Heartbeat) *pb.HeartbeatAck {
	if h := l.c.hooks.Load(); h != nil && h.heartbeat != nil {
		data, _ := proto.Marshal(hbp)
		h.heartbeat(data)
	}
	hb := hbp
	if e := validName("worker_id", hb.WorkerId, true); e != nil {
		l.log.Warn("dropping heartbeat", "err", e)
		return nil
	}
	rawSpeed := hb.Gflops
	badSpeed, dropped := sanitizeHeartbeat(hb)
	abort, owned := l.classify(hb)
	now := l.c.now()
	var (
		old               *workerInfo
		known, full, warn bool
	)
	l.locked(func() {
		old, known = l.workers[hb.WorkerId]
		if full = !known && len(l.workers) >= maxWorkers; full {
			return
		}
		wi := &workerInfo{hb: hb, seen: now}
		if known {
			wi.warned = old.warned
		}
		warn = badSpeed && !wi.warned
		wi.warned = wi.warned || badSpeed
		l.workers[hb.WorkerId] = wi
		for _, ref := range owned {
			k := shardKey{ref.JobId, ref.Epoch, ref.Rank}
			p := l.progress[k]
			switch {
			case p == nil:
				p = &progressState{steps: ref.StepsDone, at: now, first: now, firstSteps: ref.StepsDone}
				l.progress[k] = p
			case p.steps != ref.StepsDone:
				p.steps, p.at = ref.StepsDone, now
			}
			p.total, p.worker = ref.StepsTotal, hb.WorkerId
		}
	})
	if full {
		l.log.Warn("dropping heartbeat of a new worker: registry full", "worker", hb.WorkerId, "max", maxWorkers)
		return nil
	}
	if warn {
		l.log.Warn("worker reports an unusable speed; planning it with a default weight", "worker", hb.WorkerId,
			"gflops", rawSpeed, "want", fmt.Sprintf("finite, in (0, %g]", float64(maxGflops)))
	}
	if dropped > 0 {
		l.log.Debug("heartbeat shard refs dropped", "worker", hb.WorkerId, "dropped", dropped)
	}
	if !known || hb.Leaving != old.hb.GetLeaving() {
		l.log.Info("worker heartbeat", "worker", hb.WorkerId, "slots", hb.Slots, "gflops", hb.Gflops, "leaving", hb.Leaving, "new", !known)
		l.wake()
	}
	return &pb.HeartbeatAck{LeaderId: l.c.cfg.NodeID, Term: l.term, Abort: abort}
}

// classify sorts the shards a worker lists: abort those that are over
// (their job finished or moved to a newer epoch, or the rank belongs to
// another worker); owned are the ranks of running jobs' current epochs
// that the plan gives this worker (their progress is tracked).
func (l *leader) classify(hb *pb.Heartbeat) (abort, owned []*pb.ShardRef) {
	l.c.fsm.view(func(s *State) {
		for _, ref := range hb.Running {
			j := s.jobs[ref.JobId]
			over := j == nil || Terminal(j.State) || ref.Epoch < j.Epoch
			if !over && ref.Epoch == j.Epoch {
				ranks := j.Plan.GetRanks()
				over = ref.Rank < 0 || int(ref.Rank) >= len(ranks) || ranks[ref.Rank].WorkerId != hb.WorkerId
			}
			switch {
			case over:
				abort = append(abort, proto.CloneOf(ref))
			case ref.Epoch == j.Epoch && j.State == pb.JobState_JOB_STATE_RUNNING:
				owned = append(owned, ref)
			}
		}
	})
	return abort, owned
}

// registry returns the workers heard from within HeartbeatTimeout
// (leaving ones included: they drain), dropping the others, and forgets
// suspicions that ran out.
func (l *leader) registry(now time.Time) map[string]*pb.Heartbeat {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := map[string]*pb.Heartbeat{}
	for id, w := range l.workers {
		if now.Sub(w.seen) > l.c.cfg.HeartbeatTimeout {
			if w.hb.Leaving {
				// It said it was leaving: its silence is the drain ending.
				l.log.Info("worker left", "worker", id, "last_seen", w.seen)
			} else {
				l.log.Warn("worker lost: missed heartbeats", "worker", id, "last_seen", w.seen)
			}
			delete(l.workers, id)
			continue
		}
		live[id] = w.hb
	}
	for id, until := range l.suspect {
		if now.After(until) {
			delete(l.suspect, id)
		}
	}
	return live
}

// WorkerInfos is the leader's registry for the cluster endpoint.
func (l *leader) workerInfos(used map[string]int) []*pb.WorkerInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*pb.WorkerInfo
	for id, w := range l.workers {
		out = append(out, &pb.WorkerInfo{Id: id, Slots: slotsOf(w.hb), UsedSlots: int32(used[id]), Gflops: w.hb.Gflops,
			LastSeenUnixMs: w.seen.UnixMilli(), Version: w.hb.Version, Leaving: w.hb.Leaving})
	}
	slices.SortFunc(out, func(a, b *pb.WorkerInfo) int { return cmp.Compare(a.Id, b.Id) })
	return out
}

func slotsOf(hb *pb.Heartbeat) int32 { return max(hb.GetSlots(), 1) }

// usedSlots counts the unfinished ranks each worker holds in running jobs.
func usedSlots(jobs []*cpb.Job) map[string]int {
	used := map[string]int{}
	for _, j := range jobs {
		if j.State != pb.JobState_JOB_STATE_RUNNING {
			continue
		}
		for r, rk := range j.Plan.GetRanks() {
			if _, done := slices.BinarySearch(j.DoneRanks, int32(r)); !done {
				used[rk.WorkerId]++
			}
		}
	}
	return used
}
