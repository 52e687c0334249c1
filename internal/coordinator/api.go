package coordinator

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The client API is a NATS micro service registered by the leader only:
// followers do not answer, so a client sees "no responders" (or a timeout)
// during an election and retries; a submit retried with the same
// idempotency key returns the same job. Every reply carries pb.Error; an
// error is also sent as a micro service error (Nats-Service-Error and
// Nats-Service-Error-Code headers, code = HTTP-like status) with the
// encoded reply as its body.

// serviceVersion is the micro service version (micro wants semver).
const serviceVersion = "1.0.0"

// API endpoint names under Subjects.APIPrefix.
const (
	EndpointSubmit  = "submit"
	EndpointGet     = "get"
	EndpointCancel  = "cancel"
	EndpointList    = "list"
	EndpointCluster = "cluster"
)

func (l *leader) startAPI() (micro.Service, error) {
	c := l.c
	svc, err := micro.AddService(c.nc, micro.Config{
		Name:        c.subj.APIService(),
		Version:     serviceVersion,
		Description: "ringattn coordinator client API (leader " + c.cfg.NodeID + ")",
		Metadata:    map[string]string{"node": c.cfg.NodeID, "build": c.cfg.Version, metaHTTP: c.httpURL()},
	})
	if err != nil {
		return nil, err
	}
	g := svc.AddGroup(c.subj.APIPrefix())
	for name, h := range l.endpoints() {
		if err := g.AddEndpoint(name, l.handler(name, h)); err != nil {
			_ = svc.Stop()
			return nil, err
		}
	}
	return svc, nil
}

// endpoints maps each API endpoint to its handler.
func (l *leader) endpoints() map[string]func([]byte) (proto.Message, *apiError) {
	return map[string]func([]byte) (proto.Message, *apiError){
		EndpointSubmit:  l.apiSubmit,
		EndpointGet:     l.apiGet,
		EndpointCancel:  l.apiCancel,
		EndpointList:    l.apiList,
		EndpointCluster: l.apiCluster,
	}
}

// errorReply builds the reply message of an endpoint carrying an error.
func errorReply(endpoint string, e *pb.Error) proto.Message {
	switch endpoint {
	case EndpointSubmit:
		return &pb.SubmitReply{Error: e}
	case EndpointGet:
		return &pb.GetReply{Error: e}
	case EndpointCancel:
		return &pb.CancelReply{Error: e}
	case EndpointList:
		return &pb.ListReply{Error: e}
	default:
		return &pb.ClusterReply{Error: e}
	}
}

func httpCode(c pb.ErrorCode) string {
	switch c {
	case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return "400"
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return "404"
	case pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION:
		return "409"
	case pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED:
		return "429"
	case pb.ErrorCode_ERROR_CODE_NOT_LEADER, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_BUSY:
		return "503"
	default:
		return "500"
	}
}

func (l *leader) handler(endpoint string, h func([]byte) (proto.Message, *apiError)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		if !l.apiGate.try() {
			l.replyBusy(endpoint, req)
			return
		}
		if !l.enter() {
			l.apiGate.done()
			return
		}
		go func() {
			defer l.wg.Done()
			defer l.apiGate.done()
			reply, ae := l.serve(endpoint, h, req.Data())
			data, err := proto.Marshal(reply)
			if err != nil {
				_ = req.Error("500", err.Error(), nil)
				return
			}
			if ae != nil {
				err = req.Error(httpCode(ae.code), ae.Error(), data)
			} else {
				err = req.Respond(data)
			}
			if err != nil {
				l.log.Debug("api reply failed", "endpoint", endpoint, "err", err)
			}
		}()
	})
}

// serve runs one API request through its handler h and returns the reply
// to send (an error reply when ae != nil). A panic in h is contained: the
// client gets ERROR_CODE_INTERNAL and the leader goes on.
func (l *leader) serve(endpoint string, h func([]byte) (proto.Message, *apiError), data []byte) (reply proto.Message, ae *apiError) {
	defer func() {
		if err := l.recovered("api_"+endpoint, recover()); err != nil {
			reply, ae = nil, &apiError{code: pb.ErrorCode_ERROR_CODE_INTERNAL, wrap: err,
				msg: fmt.Sprintf("internal error while serving %s (logged on leader %s); retrying will not help", endpoint, l.c.cfg.NodeID)}
		}
		code := "ok"
		if ae != nil {
			reply = errorReply(endpoint, ae.proto())
			code = strings.ToLower(strings.TrimPrefix(ae.code.String(), "ERROR_CODE_"))
		}
		l.c.met.apiRequests.WithLabelValues(endpoint, code).Inc()
	}()
	if n := len(data); n > l.c.cfg.Limits.MaxRequestBytes {
		return nil, &apiError{code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, field: "request", wrap: ErrLimit,
			msg: fmt.Sprintf("%d bytes: want at most %d (Limits.MaxRequestBytes)", n, l.c.cfg.Limits.MaxRequestBytes)}
	}
	if hk := l.c.hooks.Load(); hk != nil && hk.api != nil {
		hk.api(endpoint, data)
	}
	return h(data)
}

func decodeReq(data []byte, m proto.Message) *apiError {
	if err := proto.Unmarshal(data, m); err != nil {
		return invalidField("request", "not a valid %T: %v", m, err)
	}
	return nil
}

// newJobID returns a fresh job id, safe as a NATS subject token.
func newJobID() string { return "j-" + strings.ToLower(rand.Text()[:16]) }

func (l *leader) apiSubmit(data []byte) (proto.Message, *apiError) {
	c := l.c
	var req pb.SubmitRequest
	if ae := decodeReq(data, &req); ae != nil {
		return nil, ae
	}
	if ae := validateSpec(req.Spec, c.cfg.Limits, c.now()); ae != nil {
		return nil, ae
	}
	// Fast path for retries: the key is already in the log.
	var (
		existing *cpb.Job
		user     *cpb.Job // another live job reading the same inputs
		queued   int
	)
	key, ref := req.Spec.IdempotencyKey, specInputRef(req.Spec)
	c.fsm.view(func(s *State) {
		if key != "" {
			existing = s.JobByKey(key)
		}
		if existing == nil {
			queued = s.Counts()[pb.JobState_JOB_STATE_QUEUED]
			user = s.inputUser(ref)
		}
	})
	if existing != nil {
		if existing.State != pb.JobState_JOB_STATE_EXPIRED && !sameSpec(existing.Spec, req.Spec) {
			return nil, apiErrorOf(fmt.Errorf("%w: key %q is job %s, submitted with a different spec", ErrIdempotencyConflict, key, existing.Id))
		}
		return &pb.SubmitReply{Job: l.status(existing), Existing: true}, nil
	}
	if user != nil {
		return nil, inputInUse(ref, user.Id)
	}
	// Fast path: a queue seen full here is full (the log only grows it
	// by submits); the binding check is in State.Apply.
	if queued >= c.cfg.Limits.MaxQueued {
		return nil, apiErrorOf(fmt.Errorf("%w: %d jobs queued, want fewer than %d (Limits.MaxQueued); retry later", ErrQueueFull, queued, c.cfg.Limits.MaxQueued))
	}
	// Reserve the input namespace while the submit is proposed, so that
	// two submits racing with the same namespace (and different keys)
	// cannot both pass the check above; retries of one key share it.
	l.mu.Lock()
	holder, busy := l.inputs[ref]
	if !busy {
		l.inputs[ref] = key
	}
	l.mu.Unlock()
	if busy && (holder != key || key == "") {
		return nil, inputInUse(ref, "being submitted")
	}
	if !busy {
		defer func() {
			l.mu.Lock()
			delete(l.inputs, ref)
			l.mu.Unlock()
		}()
	}
	r, err := c.apply(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: newJobID(), Spec: req.Spec, UnixMs: c.now().UnixMilli(),
		MaxQueued: int64(c.cfg.Limits.MaxQueued)})
	if err != nil {
		return nil, apiErrorOf(err)
	}
	if r.Err != nil {
		return nil, apiErrorOf(r.Err)
	}
	if !r.Existing {
		l.log.Info("job submitted", "job", r.Job.Id, "key", req.Spec.IdempotencyKey, "kind", req.Spec.Kind, "n", req.Spec.N, "nk", req.Spec.Nk)
		l.wake()
	}
	return &pb.SubmitReply{Job: l.status(r.Job), Existing: r.Existing}, nil
}

// maxListStates bounds the states a list request filters by (each state
// once, and some slack).
const maxListStates = 16

// inputInUse refuses a submit whose input namespace a live job reads.
func inputInUse(ref, by string) *apiError {
	if by != "being submitted" {
		by = "in use by job " + by
	}
	return &apiError{code: pb.ErrorCode_ERROR_CODE_FAILED_PRECONDITION, field: "spec.input_ref", wrap: ErrInputInUse,
		msg: fmt.Sprintf("%q is %s: inputs of a live job are immutable; upload under a fresh namespace", ref, by)}
}

func (l *leader) apiGet(data []byte) (proto.Message, *apiError) {
	var req pb.GetRequest
	if ae := decodeReq(data, &req); ae != nil {
		return nil, ae
	}
	j, ae := l.lookup(req.JobId)
	if ae != nil {
		return nil, ae
	}
	st := l.status(j)
	// A succeeded job whose outputs have vanished stays SUCCEEDED (it did)
	// but says so, and lists no outputs to fetch (verify.go).
	if missing := l.outputsMissing(j); missing != "" {
		st.Reason, st.Outputs = missing, nil
	}
	return &pb.GetReply{Job: st}, nil
}

func (l *leader) lookup(id string) (*cpb.Job, *apiError) {
	if ae := validName("job_id", id, true); ae != nil {
		return nil, ae
	}
	var j *cpb.Job
	l.c.fsm.view(func(s *State) { j = s.Job(id) })
	if j == nil {
		return nil, &apiError{code: pb.ErrorCode_ERROR_CODE_NOT_FOUND, field: "job_id", msg: "unknown job " + id + " (never submitted, or expired and purged)", wrap: ErrNotFound}
	}
	return j, nil
}

func (l *leader) apiCancel(data []byte) (proto.Message, *apiError) {
	c := l.c
	var req pb.CancelRequest
	if ae := decodeReq(data, &req); ae != nil {
		return nil, ae
	}
	if len(req.Reason) > maxReasonBytes {
		return nil, invalidField("reason", "%d bytes: want at most %d", len(req.Reason), maxReasonBytes)
	}
	if _, ae := l.lookup(req.JobId); ae != nil {
		return nil, ae
	}
	reason := req.Reason
	if reason == "" {
		reason = "canceled by client"
	}
	r, err := c.apply(cpb.CommandType_COMMAND_TYPE_JOB_CANCELED, &cpb.JobCanceled{JobId: req.JobId, Reason: reason, UnixMs: c.now().UnixMilli()})
	if err != nil {
		return nil, apiErrorOf(err)
	}
	if r.Err != nil {
		return nil, apiErrorOf(r.Err)
	}
	if !r.Existing {
		l.finished(r.Job)
	}
	return &pb.CancelReply{Job: l.status(r.Job)}, nil
}

func (l *leader) apiList(data []byte) (proto.Message, *apiError) {
	var req pb.ListRequest
	if ae := decodeReq(data, &req); ae != nil {
		return nil, ae
	}
	if req.Limit < 0 {
		return nil, invalidField("limit", "%d: want >= 0 (0 means 1000)", req.Limit)
	}
	if len(req.States) > maxListStates {
		return nil, invalidField("states", "%d states: want at most %d", len(req.States), maxListStates)
	}
	for _, st := range req.States {
		if _, known := pb.JobState_name[int32(st)]; !known || st == pb.JobState_JOB_STATE_UNSPECIFIED {
			return nil, invalidField("states", "%d: want a job state (JOB_STATE_QUEUED ... JOB_STATE_EXPIRED)", st)
		}
	}
	return l.c.list(req.States, int(req.Limit)), nil
}

func (c *Coordinator) list(states []pb.JobState, limit int) *pb.ListReply {
	if limit == 0 {
		limit = 1000
	}
	var jobs []*cpb.Job
	c.fsm.view(func(s *State) {
		jobs = s.Jobs(func(j *cpb.Job) bool { return len(states) == 0 || slices.Contains(states, j.State) })
	})
	slices.Reverse(jobs)
	out := &pb.ListReply{Total: int64(len(jobs))}
	for _, j := range jobs[:min(limit, len(jobs))] {
		out.Jobs = append(out.Jobs, c.status(j))
	}
	return out
}

func (l *leader) apiCluster(data []byte) (proto.Message, *apiError) {
	var req pb.ClusterRequest
	if ae := decodeReq(data, &req); ae != nil {
		return nil, ae
	}
	return l.c.cluster(), nil
}

// cluster describes the Raft configuration, the leader's worker registry
// and the job counts as this node sees them.
func (c *Coordinator) cluster() *pb.ClusterReply {
	addr, id := c.raft.LeaderWithID()
	out := &pb.ClusterReply{
		LeaderId: string(id), Term: c.raft.CurrentTerm(), CommitIndex: c.raft.CommitIndex(),
		AppliedIndex: c.raft.AppliedIndex(), JobsByState: map[string]int64{}, Version: c.cfg.Version,
	}
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			out.Peers = append(out.Peers, &pb.Peer{Id: string(s.ID), Address: string(s.Address), Leader: s.Address == addr && addr != "", Voter: s.Suffrage == raft.Voter})
		}
	}
	var jobs []*cpb.Job
	c.fsm.view(func(s *State) {
		for st, n := range s.Counts() {
			out.JobsByState[stateName(st)] = int64(n)
		}
		jobs = s.Jobs(func(j *cpb.Job) bool { return j.State == pb.JobState_JOB_STATE_RUNNING })
	})
	out.QueueDepth = out.JobsByState[stateName(pb.JobState_JOB_STATE_QUEUED)]
	if l := c.currentLeader(); l != nil {
		out.Workers = l.workerInfos(usedSlots(jobs))
	}
	return out
}

func (l *leader) status(j *cpb.Job) *pb.JobStatus { return l.c.status(j) }

// status is the client view of a job record. On the leader a running
// job's step counters come from the workers' heartbeats (soft state: 0 of
// 0 on followers). It takes leader.mu: call it holding no lock.
func (c *Coordinator) status(j *cpb.Job) *pb.JobStatus {
	st := &pb.JobStatus{
		Id: j.Id, State: j.State, Epoch: j.Epoch, Reason: j.Reason, BlocksDone: int64(len(j.DoneBlocks)),
		BlocksTotal: j.BlocksTotal, CreatedUnixMs: j.CreatedUnixMs, StartedUnixMs: j.StartedUnixMs,
		FinishedUnixMs: j.FinishedUnixMs, Spec: j.Spec, Strategy: j.Plan.GetStrategy(),
		Phase: phaseName(j),
	}
	if l := c.currentLeader(); l != nil {
		st.StepsDone, st.StepsTotal = l.stepsOf(j)
	}
	if j.State == pb.JobState_JOB_STATE_EXPIRED {
		st.BlocksDone = 0
		return st
	}
	if Terminal(j.State) {
		st.ExpiresUnixMs = j.FinishedUnixMs + c.cfg.JobTTL.Milliseconds()
	}
	for _, rk := range j.Plan.GetRanks() {
		st.Workers = append(st.Workers, rk.WorkerId)
	}
	if j.State == pb.JobState_JOB_STATE_SUCCEEDED {
		st.OutputRef = j.Id
		st.Outputs = outputNames(j.Spec)
	}
	return st
}

func stateName(s pb.JobState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_"))
}

func reportStatusName(s pb.ReportStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "REPORT_STATUS_"))
}
