package testenv

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// rawSubmit sends one submit request to the API (no client retries) and
// returns the reply, whose Existing says whether the key matched an
// earlier submit.
func rawSubmit(ctx context.Context, l *ledger, spec *pb.JobSpec, timeout time.Duration) (*pb.SubmitReply, error) {
	data, err := proto.Marshal(&pb.SubmitRequest{Spec: spec})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := l.nc.RequestWithContext(rctx, l.c.NATSConfig("").Subjects().API("submit"), data)
	if err != nil {
		return nil, err
	}
	var r pb.SubmitReply
	if err := proto.Unmarshal(msg.Data, &r); err != nil {
		return nil, err
	}
	if e := r.GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
		return &r, &client.APIError{Code: e.GetCode(), Field: e.GetField(), Message: e.GetMessage()}
	}
	return &r, nil
}

// submitUntilAnswered repeats a raw submit (same spec, same key) while no
// leader answers, as a client retrying after a lost reply would.
func submitUntilAnswered(ctx context.Context, t *testing.T, l *ledger, spec *pb.JobSpec) (*pb.SubmitReply, int) {
	t.Helper()
	var r *pb.SubmitReply
	tries := 0
	err := localcluster.Poll(ctx, localcluster.PollInterval, func() (err error) {
		tries++
		r, err = rawSubmit(ctx, l, spec, time.Second)
		if err != nil && !errors.Is(err, client.ErrUnavailable) && !isNATSRetryable(err) {
			return localcluster.Permanent(err)
		}
		return err
	}, "submit with key "+spec.GetIdempotencyKey())
	if err != nil {
		t.Fatal(err)
	}
	return r, tries
}

// uploadSpec uploads a job's inputs under a namespace of its own and
// returns its spec with the idempotency key.
func uploadSpec(ctx context.Context, t *testing.T, l *ledger, j *job, key string) *pb.JobSpec {
	t.Helper()
	store, err := l.cl.Store(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, ref := j.ref, "in-"+key
	for _, in := range []struct {
		name string
		x    []float32
		sh   transport.Shape
	}{
		{transport.TensorQ, j.q, transport.Shape{p.B, p.Hq, p.N, p.D}},
		{transport.TensorK, j.k, transport.Shape{p.B, p.Hkv, p.Nk, p.D}},
		{transport.TensorV, j.v, transport.Shape{p.B, p.Hkv, p.Nk, p.D}},
	} {
		if _, err := store.PutTensor(ctx, ref, in.name, in.x, in.sh, j.block, transport.F32); err != nil {
			t.Fatal(err)
		}
	}
	return &pb.JobSpec{Kind: pb.JobKind_JOB_KIND_ATTENTION, B: int64(p.B), Hq: int64(p.Hq), Hkv: int64(p.Hkv),
		N: int64(p.N), Nk: int64(p.Nk), D: int64(p.D), Block: int64(j.block), WantLse: true,
		Mask: &pb.Mask{Causal: p.Mask.Causal}, InputRef: ref, IdempotencyKey: key}
}

// jobsWithKey counts the jobs List holds whose spec carries key.
func jobsWithKey(ctx context.Context, t *testing.T, l *ledger, key string) []string {
	t.Helper()
	var ids []string
	err := localcluster.Poll(ctx, localcluster.PollInterval, func() error {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		all, err := l.cl.List(rctx, 0)
		if err != nil {
			return err
		}
		ids = ids[:0]
		for _, st := range all {
			if st.GetSpec().GetIdempotencyKey() == key {
				ids = append(ids, st.GetId())
			}
		}
		return nil
	}, "listing jobs")
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestSystemIdempotentAcrossLeaderChange submits with an idempotency key
// on real processes, SIGKILLs the leader right after the submit is
// acknowledged, and retries the same submit against the new leader: it
// must answer the same job (existing). Then a second key's submit is
// sent while the (new) leader is being SIGKILLed, its reply possibly
// lost, and retried until answered: exactly one job holds the key. Both
// jobs finish exactly.
func TestSystemIdempotentAcrossLeaderChange(t *testing.T) {
	c := startCluster(t, fastConfig(t, 3))
	l := newLedger(t, c)
	ctx := testCtx(t)

	// 1. Acknowledged, then the leader dies; the retry goes to the next.
	j1 := newJob(40, 1, 4, 2, 1024, 1024, 32, 128, true)
	key1 := fmt.Sprintf("idem-ack-%d", time.Now().UnixNano())
	spec1 := uploadSpec(ctx, t, l, j1, key1)
	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := rawSubmit(ctx, l, spec1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if first.GetExisting() {
		t.Fatalf("the first submit of key %q answered existing", key1)
	}
	next, err := c.WaitLeader(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	retry, tries := submitUntilAnswered(ctx, t, l, spec1)
	t.Logf("key %s: job %s acknowledged by %s, which was SIGKILLed; retry answered by %s after %v (%d tries): job %s existing=%v",
		key1, first.GetJob().GetId(), leader.Name, next.Name, round(time.Since(at)), tries, retry.GetJob().GetId(), retry.GetExisting())
	if retry.GetJob().GetId() != first.GetJob().GetId() || !retry.GetExisting() {
		t.Errorf("retry of key %q after the leader change answered job %s (existing=%v), want job %s (existing=true)",
			key1, retry.GetJob().GetId(), retry.GetExisting(), first.GetJob().GetId())
	}
	l.add(j1, first.GetJob().GetId())
	if err := c.RestartAndWait(ctx, leader); err != nil {
		t.Fatal(err)
	}

	// 2. The submit is in flight while the leader dies.
	j2 := newJob(41, 1, 4, 2, 1024, 1024, 32, 128, false)
	key2 := fmt.Sprintf("idem-flight-%d", time.Now().UnixNano())
	spec2 := uploadSpec(ctx, t, l, j2, key2)
	leader, err = c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		r   *pb.SubmitReply
		err error
	}
	ans := make(chan answer, 1)
	go func() {
		r, err := rawSubmit(ctx, l, spec2, 3*time.Second)
		ans <- answer{r, err}
	}()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	a := <-ans
	if _, err := c.WaitLeader(ctx, leader); err != nil {
		t.Fatal(err)
	}
	retry2, tries := submitUntilAnswered(ctx, t, l, spec2)
	t.Logf("key %s: submit in flight while %s was SIGKILLed answered %v (err %v); retry answered job %s existing=%v after %d tries",
		key2, leader.Name, a.r.GetJob().GetId(), a.err, retry2.GetJob().GetId(), retry2.GetExisting(), tries)
	if a.err == nil && a.r.GetJob().GetId() != retry2.GetJob().GetId() {
		t.Errorf("key %q: the in-flight submit answered job %s, the retry job %s: want one job", key2, a.r.GetJob().GetId(), retry2.GetJob().GetId())
	}
	if a.err == nil && !retry2.GetExisting() {
		t.Errorf("key %q: the in-flight submit was answered, yet the retry created a job (existing=false)", key2)
	}
	l.add(j2, retry2.GetJob().GetId())
	for _, key := range []string{key1, key2} {
		if ids := jobsWithKey(ctx, t, l, key); len(ids) != 1 {
			t.Errorf("List holds %d jobs with key %q (%v), want exactly 1", len(ids), key, ids)
		}
	}
	l.verify(ctx)
}

// isNATSRetryable: the request found no responder or got no reply in
// time (the leader is changing).
func isNATSRetryable(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrConnectionReconnecting)
}
