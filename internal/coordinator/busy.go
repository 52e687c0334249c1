package coordinator

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// Load shedding (DESIGN.md, "Bounded concurrency"). Each API request and
// each worker report runs on its own goroutine, at most
// Limits.MaxConcurrentRequests and Limits.MaxConcurrentReports at once; one
// more is answered at once from the NATS callback, without touching the
// state: BUSY with a retry-after for the API, RETRY for a report (workers
// retry reports anyway). Heartbeats are handled inline on their
// subscription and need no bound.

const (
	// busyRetryAfter is the retry-after a BUSY reply names.
	busyRetryAfter = 200 * time.Millisecond
	// queueRetryAfter is the retry-after a full-queue refusal names.
	queueRetryAfter = time.Second
)

// slots is a counting semaphore that never blocks.
type slots chan struct{}

func newSlots(n int) slots { return make(slots, max(n, 1)) }

// try takes a slot; false when all are taken.
func (g slots) try() bool {
	select {
	case g <- struct{}{}:
		return true
	default:
		return false
	}
}

// done returns a slot taken by try.
func (g slots) done() { <-g }

// busyError is the reply to an API request over the concurrency limit.
func busyError(limit int) *apiError {
	return &apiError{code: pb.ErrorCode_ERROR_CODE_BUSY, wrap: ErrBusy, retryAfter: busyRetryAfter,
		msg: fmt.Sprintf("coordinator busy: %d requests in progress (Limits.MaxConcurrentRequests); retry after %v", limit, busyRetryAfter)}
}

// replyBusy answers an API request the leader has no capacity for.
func (l *leader) replyBusy(endpoint string, req micro.Request) {
	ae := busyError(cap(l.apiGate))
	l.c.met.apiRequests.WithLabelValues(endpoint, "busy").Inc()
	data, err := proto.Marshal(errorReply(endpoint, ae.proto()))
	if err == nil {
		err = req.Error(httpCode(ae.code), ae.Error(), data)
	}
	if err != nil {
		l.log.Debug("api busy reply failed", "endpoint", endpoint, "err", err)
	}
}

// onReport runs one worker report on its own goroutine, or answers RETRY
// at once when Limits.MaxConcurrentReports are in progress.
func (l *leader) onReport(m *nats.Msg) {
	if !l.reportGate.try() {
		l.c.met.reports.WithLabelValues("busy").Inc()
		l.respond(m, ack(pb.ReportStatus_REPORT_STATUS_RETRY, 0,
			"coordinator busy: %d reports in progress (Limits.MaxConcurrentReports); retry after %v", cap(l.reportGate), busyRetryAfter))
		return
	}
	if !l.enter() {
		l.reportGate.done()
		return
	}
	go func() {
		defer l.wg.Done()
		defer l.reportGate.done()
		if a := l.handleReport(m.Data); a != nil {
			l.respond(m, a)
		}
	}()
}
