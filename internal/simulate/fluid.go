package simulate

import (
	"math"
	"slices"
)

// The simulation is a fluid event simulation: between two events every
// running activity progresses at a constant rate, and the rates are
// recomputed at every event.
//
//   - A cpu activity (a fold, a merge) is work in core-seconds on one host,
//     using at most `threads` cores.
//   - A flow (a frame on the ring, a partial up the tree) is bytes from one
//     host to another. Its rate is at most its share of the sender's egress
//     and the receiver's ingress bandwidth and the flow-control window per
//     round trip; moving a byte also costs sendCPU core-seconds on the
//     sender's host and recvCPU on the receiver's, by one thread on each.
//   - A timer is a fixed delay (latency, per-step overhead) using nothing.
//
// A host's cores are shared among its runnable threads fairly, each thread
// using at most one core (max-min fair water-filling weighted by thread
// counts), as the Go scheduler shares GOMAXPROCS among runnable goroutines.
// A flow's rate is the smallest of its link share and what the CPU shares of
// its two endpoints allow; what an endpoint does not use then goes back to
// the host's other threads.

type actKind uint8

const (
	actCPU actKind = iota
	actFlow
	actTimer
)

type activity struct {
	kind      actKind
	host, dst int     // cpu: host; flow: sender and receiver hosts
	remaining float64 // core-seconds, bytes or seconds
	threads   float64 // cpu: most cores used
	sendCPU   float64 // flow: sender core-seconds per byte
	recvCPU   float64 // flow: receiver core-seconds per byte
	// mark, when >= 0, fires onMark once remaining <= mark (a Send returns
	// when its last piece is published: only a window is then in flight).
	mark   float64
	onMark func(now float64)
	// floor, when > 0, pauses a flow once only floor bytes remain, until
	// it is set to 0 (the receiver's buffer is full until its engine asks
	// for the frames).
	floor float64
	done  func(now float64)

	links []int // flow: the link resources it crosses (see sim.route)

	rate float64 // per second, set by allocate
	// eps is what counts as nothing left (a billionth of the start).
	eps float64
	// account, when set, receives a cpu activity's core-seconds as they
	// are used.
	account func(coreSec float64)
	// flow accounting: rank charged for the sender's and receiver's CPU.
	sendAccount, recvAccount func(coreSec float64)
}

// sim is the event loop.
type sim struct {
	now     float64
	cores   []float64 // per host
	linkBps float64   // per host and direction; +Inf: unlimited
	// servers relay every frame between hosts when > 0: host h talks to
	// server h mod servers, each with serverBps per direction.
	servers   int
	serverBps float64
	users     []int   // flows on each link resource (scratch)
	window    float64 // flow-control window bytes
	rtt       float64 // seconds
	acts      []*activity
	events    int
	maxEvent  int
	// scratch
	hostTasks [][]wfTask
}

func newSim(hosts int, cores, linkBps, window, rtt float64) *sim {
	s := &sim{cores: make([]float64, hosts), linkBps: linkBps, window: window, rtt: rtt,
		hostTasks: make([][]wfTask, hosts)}
	for i := range s.cores {
		s.cores[i] = cores
	}
	return s
}

func (s *sim) add(a *activity) {
	a.eps = 1e-9 * a.remaining
	s.acts = append(s.acts, a)
}

func (s *sim) cpu(host int, work, threads float64, account func(float64), done func(float64)) {
	if work <= 0 {
		done(s.now)
		return
	}
	s.add(&activity{kind: actCPU, host: host, remaining: work, threads: max(threads, 1e-9), mark: -1, account: account, done: done})
}

func (s *sim) timer(d float64, done func(float64)) {
	if d <= 0 {
		done(s.now)
		return
	}
	s.add(&activity{kind: actTimer, remaining: d, mark: -1, done: done})
}

// flow starts moving bytes from host a to host b; onMark fires when at most
// markBytes remain (at once when bytes <= markBytes), done when all moved.
// It returns the flow, or nil when it had nothing to move.
func (s *sim) flow(a, b int, bytes, sendCPU, recvCPU, markBytes float64, sendAcc, recvAcc func(float64), onMark, done func(float64)) *activity {
	if bytes <= markBytes {
		onMark(s.now)
		onMark = nil
	}
	if bytes <= 0 {
		done(s.now)
		return nil
	}
	m := markBytes
	if onMark == nil {
		m = -1
	}
	f := &activity{kind: actFlow, host: a, dst: b, remaining: bytes, sendCPU: sendCPU, recvCPU: recvCPU,
		mark: m, onMark: onMark, done: done, sendAccount: sendAcc, recvAccount: recvAcc, links: s.route(a, b)}
	s.add(f)
	return f
}

// Link resources: host h's egress 2h and ingress 2h+1, then server k's
// egress 2(H+k) and ingress 2(H+k)+1 for H hosts.
func (s *sim) route(a, b int) []int {
	if a == b {
		return nil // in one process: no link
	}
	res := []int{2 * a, 2*b + 1}
	if s.servers > 0 {
		h := len(s.cores)
		sa, sb := h+a%s.servers, h+b%s.servers
		res = append(res, 2*sa+1, 2*sb) // into a's server, out of b's
		if sa != sb {
			res = append(res, 2*sa, 2*sb+1) // the route between them
		}
	}
	return res
}

func (s *sim) linkCapacity(res int) float64 {
	if res < 2*len(s.cores) {
		return s.linkBps
	}
	return s.serverBps
}

// paused reports whether a flow waits at its floor.
func (a *activity) paused() bool {
	return a.kind == actFlow && a.floor > 0 && a.remaining-a.floor <= a.eps
}

// wfTask is one claimant of a host's cores in water-filling.
type wfTask struct {
	weight float64 // threads
	limit  float64 // most cores it can use
	got    float64
	act    *activity
	send   bool // for flows: which endpoint
}

// waterfill shares capacity among tasks: each gets min(limit, weight·L)
// for the largest level L the capacity allows. It sorts ts in place.
func waterfill(capacity float64, ts []wfTask) {
	if len(ts) == 0 {
		return
	}
	// By limit/weight, in place: this runs for every host at every event,
	// and a host usually has a few tasks (insertion sort, no allocation).
	less := func(a, b *wfTask) bool { return a.limit*b.weight < b.limit*a.weight }
	if len(ts) > 16 {
		slices.SortFunc(ts, func(a, b wfTask) int {
			switch {
			case less(&a, &b):
				return -1
			case less(&b, &a):
				return 1
			}
			return 0
		})
	} else {
		for i := 1; i < len(ts); i++ {
			for j := i; j > 0 && less(&ts[j], &ts[j-1]); j-- {
				ts[j], ts[j-1] = ts[j-1], ts[j]
			}
		}
	}
	left := capacity
	var wsum float64
	for i := range ts {
		wsum += ts[i].weight
	}
	for i := range ts {
		t := &ts[i]
		level := left / wsum
		if t.limit <= t.weight*level {
			t.got = t.limit
		} else {
			t.got = t.weight * level
		}
		left -= t.got
		wsum -= t.weight
		if left < 0 {
			left = 0
		}
	}
}

// allocate sets every activity's rate in two passes: flows first ask for
// their link share, and each flow's rate becomes the smallest of that and
// what its endpoints' CPU shares allow; then the hosts are shared again
// with every flow endpoint fixed at what its rate uses, so the CPU a
// link-bound flow leaves goes to the host's other threads.
func (s *sim) allocate() {
	if n := 2 * (len(s.cores) + s.servers); len(s.users) != n {
		s.users = make([]int, n)
	}
	clear(s.users)
	for _, a := range s.acts {
		if a.kind == actFlow && !a.paused() {
			for _, l := range a.links {
				s.users[l]++
			}
		}
	}
	for _, a := range s.acts {
		switch a.kind {
		case actTimer:
			a.rate = 1
		case actFlow:
			if a.paused() {
				a.rate = 0
				continue
			}
			c := math.Inf(1)
			if s.rtt > 0 && s.window > 0 {
				c = s.window / s.rtt
			}
			for _, l := range a.links {
				c = min(c, s.linkCapacity(l)/float64(s.users[l]))
			}
			a.rate = c
		}
	}
	for pass := 0; pass < 2; pass++ {
		for h := range s.hostTasks {
			s.hostTasks[h] = s.hostTasks[h][:0]
		}
		for _, a := range s.acts {
			switch a.kind {
			case actCPU:
				s.hostTasks[a.host] = append(s.hostTasks[a.host], wfTask{weight: a.threads, limit: a.threads, act: a})
			case actFlow:
				if a.rate == 0 {
					continue
				}
				if a.sendCPU > 0 {
					s.hostTasks[a.host] = append(s.hostTasks[a.host], wfTask{weight: 1, limit: min(1, a.rate*a.sendCPU), act: a, send: true})
				}
				if a.recvCPU > 0 {
					s.hostTasks[a.dst] = append(s.hostTasks[a.dst], wfTask{weight: 1, limit: min(1, a.rate*a.recvCPU), act: a})
				}
			}
		}
		for h, ts := range s.hostTasks {
			waterfill(s.cores[h], ts)
			for _, t := range ts {
				switch {
				case t.act.kind == actCPU:
					t.act.rate = t.got
				case pass == 0 && t.send:
					t.act.rate = min(t.act.rate, t.got/t.act.sendCPU)
				case pass == 0:
					t.act.rate = min(t.act.rate, t.got/t.act.recvCPU)
				}
			}
		}
	}
}

// run processes events until nothing is left; it returns false when the
// simulation stalls (an activity that can never progress) or exceeds
// maxEvent events.
func (s *sim) run() bool {
	for len(s.acts) > 0 {
		s.events++
		if s.maxEvent > 0 && s.events > s.maxEvent {
			return false
		}
		s.allocate()
		dt := math.Inf(1)
		for _, a := range s.acts {
			if a.rate <= 0 {
				continue
			}
			target := max(a.floor, 0)
			if a.mark >= 0 {
				target = max(target, a.mark)
			}
			dt = min(dt, (a.remaining-target)/a.rate)
		}
		if math.IsInf(dt, 1) {
			return false
		}
		dt = max(dt, 0)
		s.now += dt
		var fired []func(float64)
		keep := s.acts[:0]
		for _, a := range s.acts {
			step := a.rate * dt
			if math.IsInf(a.rate, 1) {
				step = a.remaining // an unlimited flow moves at once
			}
			a.remaining -= step
			if a.account != nil {
				a.account(step)
			}
			if a.kind == actFlow {
				if a.sendAccount != nil {
					a.sendAccount(step * a.sendCPU)
				}
				if a.recvAccount != nil {
					a.recvAccount(step * a.recvCPU)
				}
			}
			if a.mark >= 0 && a.remaining-a.mark <= a.eps {
				a.mark = -1
				fired = append(fired, a.onMark)
			}
			if a.remaining <= a.eps {
				fired = append(fired, a.done)
				continue
			}
			keep = append(keep, a)
		}
		clear(s.acts[len(keep):])
		s.acts = keep
		for _, f := range fired {
			f(s.now)
		}
	}
	return true
}
