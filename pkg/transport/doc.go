// Package transport is everything of ringattn that crosses a process
// boundary, over NATS (DESIGN.md §4):
//
//   - Config and Connect: one way for every binary to reach
//     NATS (URLs, user/password, token, creds or nkey file, TLS), reconnecting
//     forever with exponential backoff and jitter, connection events logged
//     through an injected *slog.Logger, rejected credentials reported as one
//     error wrapping ErrAuth. (The flags and environment variables that
//     fill a Config live in internal/natsflags, for cmd/*.)
//   - Conn: the typed control plane, so no other package speaks NATS.
//     APIClient (Submit, Get, Cancel, List, Cluster, Watch; *APIError) and
//     Conn.ServeAPI (the NATS micro service of the coordinator's API);
//     SendHeartbeat/PublishHeartbeat/ServeHeartbeats, Assign/
//     ServeAssignments, Report/ServeReports, PublishEvent/WatchEvents/
//     OnEvents.
//     Every serve checks a message's size before decoding it once,
//     contains a handler's panic (logged, counted in HandlerPanics,
//     answered or dropped) and takes a Dispatch hook for concurrency.
//   - One codec between the wire and the planner/kernels types:
//     SpecToRequest, ParamsFromSpec, JobFromPB (an assignment's params and
//     plan), PlanToPB/PlanFromPB, MaskFromPB/MaskToPB, KernelMask/
//     ShardMask, DefaultBlock and DefaultScale/ResolveScale, and the one
//     name rule ValidateName, refusing bad messages with a *FieldError
//     naming the field.
//   - Subjects: every subject name, under a configurable prefix. Subjects
//     that speak for someone carry them as a token:
//     <p>.api.<tenant>.<endpoint>, <p>.worker.<id>.heartbeat,
//     <p>.coord.report.<id>, <p>.job.<tenant>.<job>.events,
//     <p>.ring.<worker>.<job>.<epoch>.<rank>. The serving side checks the
//     body against the token (ServeHeartbeats/ServeReports refuse a
//     worker speaking as another, Conn.Rejected; a ring with
//     RingConfig.Workers drops frames from the wrong worker,
//     RingStats.Forged); ServeAPI puts the caller, read from the token,
//     in the handler's context (Caller, CallerOf; APIConfig.EnforceTenants).
//   - Roles (perms.go): Subjects.Permissions(role, id) derives the NATS
//     publish/subscribe allow and deny lists and inbox (Subjects.Inbox,
//     Config.ForRole) of the coordinator, each worker, each tenant's
//     client and the admin, including the JetStream API of the buckets
//     each may use; EmbeddedConfig.Users runs a server with them,
//     Permissions.Conf renders them for a nats.conf. A tenant's tensors
//     live in its own bucket (TenantBucket), whose MaxBytes is its quota.
//     EnsureNKeySeed makes the per-role nkeys of `ringattn dev --auth`.
//   - StartEmbedded: an in-process nats-server with JetStream (file store,
//     max payload set, 127.0.0.1 and a random port by default, optional
//     user/password, token, nkeys and mutual TLS), restartable on the same
//     port and store for fault tests; package transporttest wraps it for
//     the tests of every package.
//   - Store: the tensor store on a JetStream object store bucket, one object
//     per (job, tensor, block) named "<job>/<tensor>/<block>", each with its
//     CRC32C, encoding (f32 or bf16) and length as metadata, verified on
//     every read (*CorruptBlockError, ErrBlockNotFound); a canceled read
//     returns at once. A key/value bucket "<bucket>-index" beside it holds a
//     key per block, so DeleteNamespace (and DeleteJob) cost in proportion
//     to the namespace; Namespaces lists them for a sweeper; BlockInfo
//     returns a block's stored CRC32C without reading it. Store.Source and
//     Store.Sink adapt it to the ring engine; Store.GradSink writes a
//     backward's complete gradient blocks ("dq", "dk", "dv") with the
//     writing epoch in their metadata (BlockInfo.Epoch). PutTensors also
//     records each block's slab layout (a CRC32C per batch × head) and
//     aligns its chunks to the heads, so GetHeads reads a range of heads
//     without the others (a head plan's rank reads 1/G of the inputs);
//     blocks without the layout (PutBlock, earlier versions) are read
//     whole and cut.
//   - NATSRing: ringattn.Ring over NATS core subjects. Frames are cut into
//     pieces no larger than the server's max payload, each carrying (job,
//     epoch, sender, session, sequence, kind, step, block, piece, count,
//     tensor, offset, shape, encoding, CRC32C) in headers. The receiver
//     acknowledges pieces and the sender keeps at most a window of bytes
//     unacknowledged, so a fast sender never overruns NATS's slow-consumer
//     limits; completed frames wait in a bounded buffer. Lost, corrupt,
//     duplicate, foreign and malformed pieces are dropped (every header is
//     bounded before use; the handlers recover from panics, log and count
//     them: RingStats.Malformed, HandlerPanics), and Recv reports a missing
//     frame as ringattn.ErrTimeout so the engine fetches the block from the
//     Store instead. A sender waits (probing) for a peer whose ring is not
//     subscribed yet, and abandons a frame, never the job, when its peer
//     stops acknowledging for SendTimeout. Best-effort control notices
//     (Subjects.RingCtl) spare those timeouts: a ring announces on Close
//     that it closed (peers abandon frames to it at once, and stop waiting
//     for frames from it once all it sent has arrived), and a sender names
//     each frame it abandons to its receiver, whose Recv of it returns at
//     once. A lost notice costs only the timeout it would have saved.
//
// Tensor payloads are raw little-endian float32 (or bfloat16, rounded to
// nearest even). Control-plane messages are protobuf, in package pb.
//
// This package imports pkg/ringattn for the interfaces it implements, never
// the other way round, and nothing from internal/ or cmd/.
package transport
