package localcluster

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ringattn/ringattn/internal/attnref"
	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// loadJob is one job of the load: its inputs are made from its seed.
type loadJob struct {
	idx   int
	key   string
	large bool
	p     attnref.Problem
	block int

	// Filled by its client.
	ids       []string
	refused   string
	submitAt  time.Time
	ackAt     time.Time
	doneAt    time.Time
	finishMs  int64
	epoch     uint64
	state     pb.JobState
	err       string
	succeeded bool
	submits   int
	existing  int
	stage     atomic.Int32 // a loadStage
	stageAt   atomic.Int64 // when it entered the stage (Unix ns)
}

// The stages of a load job, for the progress log.
const (
	stageQueued int32 = iota
	stageSubmit
	stageRetry
	stageWait
	stageFetch
	stageDone
)

var stageNames = []string{"not started", "submitting", "re-submitting", "waiting", "fetching", "done"}

func (j *loadJob) enter(stage int32) {
	j.stage.Store(stage)
	j.stageAt.Store(time.Now().UnixNano())
}

func (j *loadJob) inputs(seed uint64) (q, k, v []float32) {
	r := testrand.New(seed*1_000_003 + uint64(j.idx))
	p := j.p
	q = r.Slice(p.B*p.Hq*p.N*p.D, testrand.Normal)
	k = r.Slice(p.B*p.Hkv*p.Nk*p.D, testrand.Normal)
	v = r.Slice(p.B*p.Hkv*p.Nk*p.D, testrand.Normal)
	return
}

// loadJobs makes the jobs: small ones of 1..4 blocks of 64 tokens, and
// large ones of 12 blocks of 128 tokens (about 1.6 GFLOP each),
// interleaved.
func loadJobs(cfg *LoadConfig) []*loadJob {
	total := cfg.Small + cfg.Large
	out := make([]*loadJob, 0, total)
	every := 0
	if cfg.Large > 0 {
		every = max(1, total/cfg.Large)
	}
	large := 0
	for i := range total {
		j := &loadJob{idx: i, key: fmt.Sprintf("load-%d-%d", cfg.Seed, i)}
		if every > 0 && large < cfg.Large && (i%every == every/2 || total-i <= cfg.Large-large) {
			j.large = true
			large++
			j.p = attnref.Problem{B: 1, Hq: 4, Hkv: 2, N: 1536, Nk: 1536, D: 64, Mask: attnref.Mask{Causal: i%2 == 0}}
			j.block = 128
		} else {
			n := 64 * (1 + i%4)
			nk := n + 64*(i%2)
			j.p = attnref.Problem{B: 1, Hq: 2, Hkv: 1 + i%2, N: n, Nk: nk, D: 32, Mask: attnref.Mask{Causal: i%3 == 0}}
			j.block = 64
		}
		out = append(out, j)
	}
	return out
}

// check compares outputs with the float64 reference: every row of a
// small job, the first, middle and last row of every block of a large one.
func (j *loadJob) check(seed uint64, res *client.AttentionResult) error {
	q, k, v := j.inputs(seed)
	p := j.p
	if res.O == nil || res.LSE == nil || len(res.O.Data) != p.B*p.Hq*p.N*p.D || len(res.LSE.Data) != p.B*p.Hq*p.N {
		return errors.New("outputs have the wrong size")
	}
	o, lse := res.O.Data, res.LSE.Data
	var wantO, wantL []float64
	if !j.large {
		wantO, wantL = p.Attention(q, k, v)
	} else {
		var rows []int
		for s := 0; s < p.N; s += j.block {
			e := min(s+j.block, p.N)
			rows = append(rows, s, (s+e)/2, e-1)
		}
		slices.Sort(rows)
		rows = slices.Compact(rows)
		wantO, wantL = p.Rows(q, k, v, rows)
		gotO := make([]float32, 0, len(wantO))
		gotL := make([]float32, 0, len(wantL))
		for bh := 0; bh < p.B*p.Hq; bh++ {
			for _, row := range rows {
				at := bh*p.N + row
				gotO = append(gotO, o[at*p.D:(at+1)*p.D]...)
				gotL = append(gotL, lse[at])
			}
		}
		o, lse = gotO, gotL
	}
	const tol = 1e-4
	if d := attnref.MaxAbsDiff(o, wantO); !(d <= tol) {
		return fmt.Errorf("o differs from the float64 reference by %g, want <= %g", d, tol)
	}
	if d := attnref.MaxAbsDiff(lse, wantL); !(d <= tol) {
		return fmt.Errorf("lse differs from the float64 reference by %g, want <= %g", d, tol)
	}
	return nil
}
