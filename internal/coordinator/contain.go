package coordinator

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Containment. A panic anywhere in the leader must not kill the process:
// with three coordinators, a job that makes the planner panic would kill
// every leader in turn. Every entry point of the leader (the scheduler tick
// and each job it handles, planning, the heartbeat and report handlers and
// every API request) recovers, logs the stack at ERROR, counts the panic in
// ringattn_coordinator_panics_total{where} and then:
//
//   - planning or scheduling one job: that job is failed through Raft
//     ("internal error while planning: ..."), so no later leader plans it
//     again and the other jobs go on;
//   - an API request: the client gets ERROR_CODE_INTERNAL;
//   - a report: the worker gets REJECTED (it drops the report; the rank is
//     re-sent or re-planned like any lost one);
//   - a heartbeat: it is dropped.
//
// A panic inside Raft's Apply is not contained here: the FSM decides that a
// committed entry it cannot apply stops the node (see fsm.go).

// panicError is a recovered panic turned into an error.
type panicError struct {
	where string
	val   any
	stack string
}

func (e *panicError) Error() string {
	return fmt.Sprintf("internal error while %s: %v", e.where, e.val)
}

// errPlanTimeout: planning did not finish within Config.PlanTimeout.
var errPlanTimeout = errors.New("planning took too long")

// recovered logs and counts a recovered panic and returns it as an error
// (nil when v is nil: nothing panicked).
func (l *leader) recovered(where string, v any, attrs ...any) error {
	if v == nil {
		return nil
	}
	pe := &panicError{where: where, val: v, stack: string(debug.Stack())}
	l.logPanic(pe, attrs...)
	return pe
}

// logPanic logs a recovered panic with its stack at ERROR and counts it.
func (l *leader) logPanic(pe *panicError, attrs ...any) {
	l.c.met.panics.WithLabelValues(pe.where).Inc()
	l.log.Error("recovered from a panic", append([]any{"where", pe.where, "panic", fmt.Sprint(pe.val), "stack", pe.stack}, attrs...)...)
}

// guard runs fn, containing a panic (logged and counted).
func (l *leader) guard(where string, fn func()) {
	defer func() {
		_ = l.recovered(where, recover())
	}()
	fn()
}

// guardJob runs fn for job j; a panic fails that job (and only that job)
// with the panic as its reason.
func (l *leader) guardJob(where string, j *cpb.Job, fn func()) {
	defer func() {
		if err := l.recovered(where, recover(), "job", j.GetId()); err != nil && l.ctx.Err() == nil {
			l.finish(j, pb.JobState_JOB_STATE_FAILED, err.Error())
		}
	}()
	fn()
}

// hooks are test seams; nil fields do nothing.
type hooks struct {
	// plan runs just before a job is planned, inside the planner's
	// containment (a panic there is a planner panic).
	plan func(j *cpb.Job)
	// api runs before an API request's handler.
	api func(endpoint string, data []byte)
	// tick runs before the scheduler handles a running job.
	tick func(j *cpb.Job)
	// heartbeat and report run before those handlers decode.
	heartbeat func(data []byte)
	report    func(data []byte)
}

// setHooks installs test hooks (tests only).
func (c *Coordinator) setHooks(h *hooks) { c.hooks.Store(h) }

type hookPtr = atomic.Pointer[hooks]

// planWithin runs the planner for req, giving up when ctx ends (a
// deadline, or the leader stepping down: nothing waits for a plan). A
// panic in the planner (or in before) comes back as a *panicError; the
// caller fails the job with it. shard.NewPlanContext stops soon after ctx
// ends; the planner still runs on its own goroutine so that a planner (or
// hook) that does not look at ctx cannot hold up the scheduler either:
// such a goroutine is abandoned and finishes on its own.
func planWithin(ctx context.Context, req shard.Request, before func()) (*shard.Plan, error) {
	type result struct {
		p   *shard.Plan
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				ch <- result{err: &panicError{where: "planning", val: v, stack: string(debug.Stack())}}
			}
		}()
		if before != nil {
			before()
		}
		p, err := shard.NewPlanContext(ctx, req)
		ch <- result{p, err}
	}()
	select {
	case r := <-ch:
		return r.p, r.err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, errPlanTimeout
		}
		return nil, ctx.Err()
	}
}
