package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Honest completion. A job becomes SUCCEEDED only after the leader has
// checked, block by block, that the store holds each output block with the
// checksum its worker reported (transport BlockInfo: metadata only, no
// data read). A block missing or stored with another checksum is marked
// not done again (REDO_BLOCKS, counted in Job.redos) and re-planned in a
// new epoch: the store is the source of truth. After MaxVerifyTries redos
// the job fails naming the block. A store that cannot be asked (down,
// timing out) delays the check; it does not decide it. Tensors written
// without a reported checksum — a layer job's o beside y, and its
// gradient units' shares of the layer's gradients — are checked for
// presence and size.
//
// After SUCCEEDED, get checks the outputs again (at most every
// outputsCheckEvery per job, at most outputsCheckBlocks blocks spread over
// the job): when blocks have vanished the job stays
// SUCCEEDED (that is what happened) but its reason says "outputs missing
// from the store: ..." and its outputs list is empty.

const (
	// verifyParallel bounds the block-info requests in flight per job.
	verifyParallel = 16
	// verifyTimeout bounds one job's check.
	verifyTimeout = time.Minute
	// verifyRetry is the wait before checking again after the store failed.
	verifyRetry = time.Second
	// outputsCheckTimeout bounds that check inside a get; when it runs out
	// nothing is claimed.
	outputsCheckTimeout = 2 * time.Second
	// outputsCheckBlocks: get checks at most this many blocks, spread over
	// the job (vanished outputs are usually a whole namespace).
	outputsCheckBlocks = 256
)

// outputsCheckEvery: get re-checks a succeeded job's outputs at most this
// often (the answer is cached in between). A variable for tests.
var outputsCheckEvery = 10 * time.Second

// badBlock is one output block the store does not hold as reported.
type badBlock struct {
	block  int32
	tensor string
	why    string // "missing", or "checksum ..."
}

func (b badBlock) String() string {
	return fmt.Sprintf("output block %d (%s) %s", b.block, b.tensor, b.why)
}

// verifyState is the leader's check of one job's outputs (soft state).
type verifyState struct {
	epoch   uint64
	running bool
	at      time.Time // when it finished
	bad     []badBlock
	err     error // the store could not be asked
}

// outTensor is one output tensor of a forward epoch: crc picks its
// reported checksum; a tensor without one (crc nil) is checked for its
// size, elems float32 values in block b.
type outTensor struct {
	name  string
	crc   func(*pb.BlockChecksum) uint32
	elems func(b int64) int64
}

// outputTensors names a job's output tensors of a forward epoch. A layer
// (mha) job writes y; the forward pass of a forward+backward one also the
// attention's o and lse, which its backward reads (o has no reported
// checksum: the block's are y's and lse's).
func outputTensors(spec *pb.JobSpec) []outTensor {
	o := func(c *pb.BlockChecksum) uint32 { return c.GetCrc32CO() }
	lse := outTensor{transport.TensorLSE, func(c *pb.BlockChecksum) uint32 { return c.GetCrc32CLse() }, nil}
	if spec.GetKind() == pb.JobKind_JOB_KIND_MHA {
		out := []outTensor{{"y", o, nil}}
		if spec.GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD {
			out = append(out, lse, outTensor{transport.TensorO, nil, func(b int64) int64 {
				return spec.GetB() * spec.GetHq() * blockRows(spec, b) * spec.GetD()
			}})
		}
		return out
	}
	out := []outTensor{{transport.TensorO, o, nil}}
	if spec.GetWantLse() || spec.GetMode() == pb.JobMode_JOB_MODE_FORWARD_BACKWARD {
		out = append(out, lse)
	}
	return out
}

// checkOutputs asks the store about output blocks of j (the given ones;
// all when blocks is nil) and returns those it does not hold as reported
// (checksums not recorded, as for old reports, are checked for presence
// only). err is set when the store could not be asked; bad is then
// incomplete.
func checkOutputs(ctx context.Context, st outputStore, j *cpb.Job, blocks []int64) (bad []badBlock, err error) {
	sums := j.Checksums
	tensors := outputTensors(j.Spec)
	count := int64(len(blocks))
	if blocks == nil {
		count = j.BlocksTotal
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		next int64
	)
	for range min(verifyParallel, max(count, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				n := next
				next++
				stop := n >= count || err != nil || ctx.Err() != nil
				mu.Unlock()
				if stop {
					return
				}
				b := n
				if blocks != nil {
					b = blocks[n]
				}
				if inBackward(j) {
					bb, e := checkGradUnit(ctx, st, j, int32(b))
					mu.Lock()
					bad = append(bad, bb...)
					err = cmp.Or(err, e)
					mu.Unlock()
					continue
				}
				i, found := slices.BinarySearchFunc(sums, int32(b), func(x *pb.BlockChecksum, b int32) int { return cmp.Compare(x.GetBlock(), b) })
				for _, t := range tensors {
					info, e := st.BlockInfo(ctx, j.Id, t.name, int(b))
					why, e := storedBad(e)
					switch {
					case e != nil:
						mu.Lock()
						err = cmp.Or(err, e)
						mu.Unlock()
						return
					case why != "":
					case t.crc == nil:
						if n := t.elems(b); info.Bytes != 4*n {
							why = fmt.Sprintf("stored with %d bytes, expected %d float32 values", info.Bytes, n)
						}
					case found && info.CRC32C != t.crc(sums[i]):
						why = fmt.Sprintf("stored with checksum %08x, reported %08x", info.CRC32C, t.crc(sums[i]))
					}
					if why != "" {
						mu.Lock()
						bad = append(bad, badBlock{int32(b), t.name, why})
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	if err == nil {
		err = ctx.Err()
	}
	slices.SortFunc(bad, func(a, b badBlock) int { return cmp.Compare(a.block, b.block) })
	return bad, err
}

// checkGradUnit checks the stored blocks of gradient unit u of j (see
// backward.go) against the checksums reported for them and, for a layer
// (mha) job, that each of the unit's gradient shares (gradShares) is
// stored with its size: a unit whose worker reported it without a share
// (or whose share vanished, or has another size) is bad, so it is redone
// like a missing gradient block. A share has no reported checksum; what
// it holds is the worker's (it is computed from the same complete block
// whose checksum is checked here, in the same write, mha_grad.go).
func checkGradUnit(ctx context.Context, st outputStore, j *cpb.Job, u int32) ([]badBlock, error) {
	tensors, block, crcs, found := gradUnit(j, u)
	var bad []badBlock
	for i, name := range tensors {
		info, e := st.BlockInfo(ctx, j.Id, name, int(block))
		why, err := storedBad(e)
		switch {
		case err != nil:
			return bad, err
		case why == "" && found && info.CRC32C != crcs[i]:
			why = fmt.Sprintf("stored with checksum %08x, reported %08x", info.CRC32C, crcs[i])
		}
		if why != "" {
			bad = append(bad, badBlock{u, name, why})
		}
	}
	for _, sh := range gradShares(j.Spec, u < int32(qBlocks(j.Spec)), block) {
		info, e := st.BlockInfo(ctx, j.Id, sh.name, int(block))
		why, err := storedBad(e)
		switch {
		case err != nil:
			return bad, err
		case why == "" && info.Bytes != 4*sh.elems:
			why = fmt.Sprintf("stored with %d bytes, expected %d float32 values", info.Bytes, sh.elems)
		}
		if why != "" {
			bad = append(bad, badBlock{u, sh.name, why})
		}
	}
	return bad, nil
}

// storedBad classifies the error of a BlockInfo: why the block is bad
// ("missing from the store", "unreadable in the store: ..."), "" when
// there was no error, or err when the store could not be asked.
func storedBad(e error) (why string, err error) {
	var corrupt *transport.CorruptBlockError
	switch {
	case e == nil:
		return "", nil
	case errors.Is(e, transport.ErrBlockNotFound):
		return "missing from the store", nil
	case errors.As(e, &corrupt):
		return "unreadable in the store: " + corrupt.Reason, nil
	}
	return "", e
}

// verified reports whether the outputs of j's current epoch checked out
// (the forward phase of a FORWARD_BACKWARD job waits for it).
func (l *leader) verified(j *cpb.Job) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.verifying[j.Id]
	return v != nil && v.epoch == j.Epoch && !v.running && v.err == nil && len(v.bad) == 0
}

// complete is called by the scheduler for a RUNNING job whose blocks are
// all done: it finishes the job once its outputs check out, re-plans the
// blocks that do not, and fails it after MaxVerifyTries re-plans.
func (l *leader) complete(j *cpb.Job) {
	c := l.c
	st := c.outputsOf(j.Owner)
	if st == nil {
		if forwardOfFB(j) {
			l.locked(func() { l.verifying[j.Id] = &verifyState{epoch: j.Epoch} })
			l.wake()
			return
		}
		l.finish(j, pb.JobState_JOB_STATE_SUCCEEDED, "")
		return
	}
	now := c.now()
	var (
		start, running bool
		bad            []badBlock
		verr           error
	)
	l.locked(func() {
		v := l.verifying[j.Id]
		start = v == nil || v.epoch != j.Epoch || (!v.running && v.err != nil && now.Sub(v.at) >= verifyRetry)
		if start {
			v = &verifyState{epoch: j.Epoch, running: true}
			l.verifying[j.Id] = v
		}
		running, bad, verr = v.running, v.bad, v.err
	})
	if start {
		l.startCheck(j, st)
		return
	}
	if running || verr != nil {
		return
	}
	if len(bad) == 0 {
		if forwardOfFB(j) {
			l.wake() // checked: the scheduler starts the backward pass
			return
		}
		l.finish(j, pb.JobState_JOB_STATE_SUCCEEDED, "")
		return
	}
	for _, b := range bad {
		problem := "mismatch"
		if strings.HasPrefix(b.why, "missing") {
			problem = "missing"
		}
		c.met.verifyFailures.WithLabelValues(problem).Inc()
	}
	what := bad[0].String()
	if len(bad) > 1 {
		what += fmt.Sprintf(" and %d more", len(bad)-1)
	}
	l.log.Warn("outputs not in the store as reported", "job", j.Id, "epoch", j.Epoch, "bad", len(bad), "first", bad[0].String(), "redos", j.Redos)
	if int(j.Redos) >= c.cfg.MaxVerifyTries {
		l.finish(j, pb.JobState_JOB_STATE_FAILED, fmt.Sprintf("%s after %d re-plans of the outputs", what, j.Redos))
		return
	}
	var blocks []int32
	for _, b := range bad {
		if n := len(blocks); n == 0 || blocks[n-1] != b.block {
			blocks = append(blocks, b.block)
		}
	}
	r, err := c.apply(cpb.CommandType_COMMAND_TYPE_REDO_BLOCKS, &cpb.RedoBlocks{JobId: j.Id, Epoch: j.Epoch, Blocks: blocks,
		Reason: what, UnixMs: now.UnixMilli()})
	if err != nil {
		l.log.Warn("redo not committed", "job", j.Id, "err", err)
		return
	}
	if r.Err != nil {
		l.log.Debug("redo refused", "job", j.Id, "err", r.Err)
		return
	}
	l.mu.Lock()
	delete(l.verifying, j.Id)
	l.replan[j.Id] = replanReq{epoch: j.Epoch, reason: what}
	l.mu.Unlock()
	l.publish(r.Job, pb.JobEventType_JOB_EVENT_TYPE_ERROR, -1, "", what+"; re-planning")
	l.wake()
}

// startCheck checks j's outputs in the background and wakes the scheduler
// with the result.
func (l *leader) startCheck(j *cpb.Job, st outputStore) {
	if !l.enter() {
		return
	}
	go func() {
		defer l.wg.Done()
		var (
			bad []badBlock
			err error
		)
		l.guard("checking outputs", func() {
			ctx, cancel := context.WithTimeout(l.ctx, verifyTimeout)
			defer cancel()
			bad, err = checkOutputs(ctx, st, j, nil)
		})
		if l.ctx.Err() != nil {
			return
		}
		if err != nil {
			l.log.Warn("cannot check outputs yet; will retry", "job", j.Id, "err", err)
		}
		l.mu.Lock()
		if v := l.verifying[j.Id]; v != nil && v.epoch == j.Epoch {
			v.running, v.at, v.bad, v.err = false, l.c.now(), bad, err
		}
		l.mu.Unlock()
		l.wake()
	}()
}

// outputsCheck is a cached answer of get's check of a succeeded job.
type outputsCheck struct {
	at      time.Time
	missing string // "" when all there
}

// outputsMissing says which outputs of succeeded job j have vanished from
// the store ("" when all are there, or the store cannot tell now). The
// answer is cached for outputsCheckEvery.
func (l *leader) outputsMissing(j *cpb.Job) string {
	st := l.c.outputsOf(j.Owner)
	if st == nil || j.State != pb.JobState_JOB_STATE_SUCCEEDED {
		return ""
	}
	now := l.c.now()
	l.mu.Lock()
	if oc, ok := l.outChecks[j.Id]; ok && now.Sub(oc.at) < outputsCheckEvery {
		l.mu.Unlock()
		return oc.missing
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(l.ctx, outputsCheckTimeout)
	defer cancel()
	sample := sampleBlocks(j.BlocksTotal, outputsCheckBlocks)
	bad, err := checkOutputs(ctx, st, j, sample)
	missing := ""
	switch {
	case err != nil:
		// Cannot tell: claim nothing (cached too, so that a slow store
		// is not asked again on every get).
	case len(bad) > 0:
		missing = fmt.Sprintf("outputs missing or changed in the store: %s (%d of %d blocks checked)", bad[0], len(bad), len(sample))
	}
	l.mu.Lock()
	if len(l.outChecks) >= maxOutputChecks {
		clear(l.outChecks)
	}
	l.outChecks[j.Id] = outputsCheck{at: now, missing: missing}
	l.mu.Unlock()
	return missing
}

// sampleBlocks returns up to n block indices spread evenly over [0,total),
// always including the first and the last.
func sampleBlocks(total int64, n int) []int64 {
	if total <= int64(n) {
		out := make([]int64, total)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i) * (total - 1) / int64(n-1)
	}
	return out
}

// maxOutputChecks bounds the cache of get's output checks.
const maxOutputChecks = 4096
