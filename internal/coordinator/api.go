package coordinator

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	cpb "github.com/ringattn/ringattn/internal/coordinator/pb"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// The client API is transport's API service, served by the leader only:
// followers do not answer, so a client sees "no responders" (or a timeout)
// during an election and retries; a submit retried with the same
// idempotency key returns the same job. Every reply carries pb.Error; an
// error is also sent as a micro service error (Nats-Service-Error and
// Nats-Service-Error-Code headers, code = HTTP-like status) with the
// encoded reply as its body.

// serviceVersion is the micro service version (micro wants semver).
const serviceVersion = "1.0.0"

// API endpoint names under Subjects.APIPrefix (transport's).
const (
	EndpointSubmit  = transport.EndpointSubmit
	EndpointGet     = transport.EndpointGet
	EndpointCancel  = transport.EndpointCancel
	EndpointList    = transport.EndpointList
	EndpointCluster = transport.EndpointCluster
)

// apiConfig is how the leader serves the API: requests run on their own
// goroutines, at most Limits.MaxConcurrentRequests at once (busy.go), each
// bounded by Limits.MaxRequestBytes and counted by endpoint and code.
func (l *leader) apiConfig() transport.APIConfig {
	c := l.c
	return transport.APIConfig{
		ServeConfig: transport.ServeConfig{
			Dispatch: l.dispatch(l.apiGate, nil),
			OnPanic:  l.onServePanic,
		},
		Version:         serviceVersion,
		Description:     "ringattn coordinator client API (leader " + c.cfg.NodeID + ")",
		Metadata:        map[string]string{"node": c.cfg.NodeID, "build": c.cfg.Version, metaHTTP: c.httpURL()},
		BusyRetryAfter:  busyRetryAfter,
		MaxRequestBytes: c.cfg.Limits.MaxRequestBytes,
		EnforceTenants:  c.enforceTenants(),
		Observe: func(endpoint string, code pb.ErrorCode) {
			name := "ok"
			if code != pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
				name = strings.ToLower(strings.TrimPrefix(code.String(), "ERROR_CODE_"))
			}
			c.met.apiRequests.WithLabelValues(endpoint, name).Inc()
		},
	}
}

// apiHandlers are the API's endpoints, each contained (apiEndpoint).
func (l *leader) apiHandlers() transport.APIHandlers {
	return transport.APIHandlers{
		Submit:  apiEndpoint(l, EndpointSubmit, l.apiSubmit),
		Get:     apiEndpoint(l, EndpointGet, l.apiGet),
		Cancel:  apiEndpoint(l, EndpointCancel, l.apiCancel),
		List:    apiEndpoint(l, EndpointList, l.apiList),
		Cluster: apiEndpoint(l, EndpointCluster, l.apiCluster),
	}
}

// apiEndpoint wraps handler h of endpoint name for transport.ServeAPI: a
// panic in it is contained here (logged with its stack, counted in
// ringattn_coordinator_panics_total{where="api_<name>"}) and answered
// ERROR_CODE_INTERNAL; the leader goes on. ctx is the request's (it ends
// when the leader stops serving) and is passed on to h.
func apiEndpoint[Req, Rep proto.Message](l *leader, name string, h func(context.Context, Req) (Rep, *apiError)) func(context.Context, Req) (Rep, error) {
	return func(ctx context.Context, req Req) (rep Rep, err error) {
		defer func() {
			if perr := l.recovered("api_"+name, recover()); perr != nil {
				err = (&apiError{code: pb.ErrorCode_ERROR_CODE_INTERNAL, wrap: perr,
					msg: fmt.Sprintf("internal error while serving %s (logged on leader %s); retrying will not help", name, l.c.cfg.NodeID)}).api()
			}
		}()
		if hk := l.c.hooks.Load(); hk != nil && hk.api != nil {
			data, _ := proto.Marshal(req)
			hk.api(name, data)
		}
		rep, ae := h(ctx, req)
		if ae != nil {
			return rep, ae.api()
		}
		return rep, nil
	}
}

// newJobID returns a fresh job id, safe as a NATS subject token.
func newJobID() string { return "j-" + strings.ToLower(rand.Text()[:16]) }

func (l *leader) apiSubmit(ctx context.Context, req *pb.SubmitRequest) (*pb.SubmitReply, *apiError) {
	c := l.c
	if ae := validateSpec(req.Spec, c.cfg.Limits, c.now()); ae != nil {
		return nil, ae
	}
	owner := transport.CallerOf(ctx).Tenant
	// Fast path for retries: the key is already in the log.
	var (
		existing *cpb.Job
		user     *cpb.Job // another live job reading the same inputs
		queued   int
	)
	key, ref := req.Spec.IdempotencyKey, specInputRef(req.Spec)
	c.fsm.view(func(s *State) {
		if key != "" {
			existing = s.JobByKey(owner, key)
		}
		if existing == nil {
			queued = s.Counts()[pb.JobState_JOB_STATE_QUEUED]
			user = s.inputUser(owner, ref)
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
	ik := inputKey{owner, ref}
	l.mu.Lock()
	holder, busy := l.inputs[ik]
	if !busy {
		l.inputs[ik] = key
	}
	l.mu.Unlock()
	if busy && (holder != key || key == "") {
		return nil, inputInUse(ref, "being submitted")
	}
	if !busy {
		defer func() {
			l.mu.Lock()
			delete(l.inputs, ik)
			l.mu.Unlock()
		}()
	}
	// The per-tenant quota holds tenants apart: without enforced tenants
	// (no auth) every caller is an admin and MaxQueued alone bounds them.
	var maxActive int64
	if c.enforceTenants() {
		maxActive = int64(c.cfg.MaxActivePerTenant)
	}
	r, err := c.apply(cpb.CommandType_COMMAND_TYPE_SUBMIT, &cpb.Submit{JobId: newJobID(), Spec: req.Spec, UnixMs: c.now().UnixMilli(),
		MaxQueued: int64(c.cfg.Limits.MaxQueued), Owner: owner, MaxActivePerTenant: maxActive})
	if err != nil {
		return nil, apiErrorOf(err)
	}
	if r.Err != nil {
		return nil, apiErrorOf(r.Err)
	}
	if !r.Existing {
		l.log.Info("job submitted", "job", r.Job.Id, "tenant", owner, "key", req.Spec.IdempotencyKey, "kind", req.Spec.Kind, "n", req.Spec.N, "nk", req.Spec.Nk)
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

func (l *leader) apiGet(ctx context.Context, req *pb.GetRequest) (*pb.GetReply, *apiError) {
	j, ae := l.lookup(ctx, req.JobId)
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

// lookup is job id as the caller of ctx may see it: another tenant's job
// is NOT_FOUND, with the very error of a job that does not exist.
func (l *leader) lookup(ctx context.Context, id string) (*cpb.Job, *apiError) {
	if ae := validName("job_id", id, true); ae != nil {
		return nil, ae
	}
	var j *cpb.Job
	l.c.fsm.view(func(s *State) { j = s.Job(id) })
	if j == nil || !mayAccess(transport.CallerOf(ctx), j) {
		return nil, &apiError{code: pb.ErrorCode_ERROR_CODE_NOT_FOUND, field: "job_id", msg: "unknown job " + id + " (never submitted, or expired and purged)", wrap: ErrNotFound}
	}
	return j, nil
}

func (l *leader) apiCancel(ctx context.Context, req *pb.CancelRequest) (*pb.CancelReply, *apiError) {
	c := l.c
	if len(req.Reason) > maxReasonBytes {
		return nil, invalidField("reason", "%d bytes: want at most %d", len(req.Reason), maxReasonBytes)
	}
	if _, ae := l.lookup(ctx, req.JobId); ae != nil {
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

func (l *leader) apiList(ctx context.Context, req *pb.ListRequest) (*pb.ListReply, *apiError) {
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
	caller := transport.CallerOf(ctx)
	return l.c.listOf(req.States, int(req.Limit), func(j *cpb.Job) bool { return mayAccess(caller, j) }), nil
}

// list is every job in states (all when none), newest first, at most
// limit (0: 1000).
func (c *Coordinator) list(states []pb.JobState, limit int) *pb.ListReply {
	return c.listOf(states, limit, nil)
}

// listOf is list of the jobs keep accepts (all when nil).
func (c *Coordinator) listOf(states []pb.JobState, limit int, keep func(*cpb.Job) bool) *pb.ListReply {
	if limit == 0 {
		limit = 1000
	}
	var jobs []*cpb.Job
	c.fsm.view(func(s *State) {
		jobs = s.Jobs(func(j *cpb.Job) bool {
			return (len(states) == 0 || slices.Contains(states, j.State)) && (keep == nil || keep(j))
		})
	})
	slices.Reverse(jobs)
	out := &pb.ListReply{Total: int64(len(jobs))}
	for _, j := range jobs[:min(limit, len(jobs))] {
		out.Jobs = append(out.Jobs, c.status(j))
	}
	return out
}

func (l *leader) apiCluster(context.Context, *pb.ClusterRequest) (*pb.ClusterReply, *apiError) {
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
