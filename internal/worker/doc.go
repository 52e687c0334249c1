// Package worker is the ringattn worker service (DESIGN.md §3–§5): the
// stateless, replaceable process where the computation happens.
//
// A Worker connects to NATS through a transport.Conn (every control-plane
// exchange is one of its typed calls; this package does not speak NATS
// itself), measures its kernel speed, and heartbeats to
// the coordinator leader every second with its slots, GFLOP/s, version,
// memory and the shards it holds (running, or finished with the report not
// yet acknowledged), each with its progress: steps_done counts the blocks
// the rank has read from the store, the ring steps it has folded and the
// output blocks it has written, so it grows at least once per ring step
// while the rank works; the leader re-plans a rank whose count stops. The leader sends it assignments, one rank of one job
// epoch each; assignments are idempotent per (job, epoch, rank): a
// re-issued one never restarts the work, and a finished one re-sends its
// report. For each rank the worker fetches exactly its blocks from the
// JetStream tensor store (a rank of a head plan only its heads of them,
// transport.Store.GetHeads; runs of query blocks several at once), runs
// pkg/ringattn over a transport.NATSRing (the store is the fallback for a
// late or lost ring frame), writes its output blocks back to the store
// (runs several at once), and reports ShardDone with the CRC32C of every
// block, retrying with backoff until a leader acknowledges it; a leader
// change in between loses nothing because the report is kept and re-sent.
//
// Layer jobs (mha) project only the rank's own sequence blocks: its query
// blocks for Q and its initial key/value blocks for K and V; a block
// fetched from the store as a fallback is projected from its x rows too.
// After the ring the rank applies the output projection to its own rows and
// writes "y" blocks. A layer job with a backward pass (FORWARD_BACKWARD)
// also writes the attention's o and lse in its forward epochs; its
// backward ranks form dO from the uploaded dy, run the attention backward
// and, with each complete gradient block, write that block's share of the
// layer's gradients (DESIGN.md, "Layer gradients"; mha_grad.go).
//
// Nothing received is trusted: assignments are validated field by field
// (their params and plan by transport.JobFromPB, the codec the leader
// planned with; the rest in task.go), heartbeat acks, report acks and job
// events are checked by functions with fuzz targets, and a panic in any
// handler, the heartbeat loop,
// report delivery or a rank's computation is recovered (logged with its
// stack, counted in ringattn_worker_panics_total); a rank that panicked
// reports FAILED, not fatal, so the leader re-plans it elsewhere.
//
// A shard stops promptly when the leader lists it in HeartbeatAck.abort,
// when the job's event stream announces a newer epoch or the job's end, or
// when a newer epoch of the same job is assigned to this worker.
//
// Run's context ending is an abrupt stop (as if the process died: no leave
// notice). Drain is the graceful path used on SIGTERM: the worker takes no
// new work, heartbeats leaving = true so the leader re-plans at once,
// finishes or abandons its shards within the drain timeout, delivers its
// pending reports, and Run returns nil.
//
// Memory is bounded by the shard: a rank holds its own query blocks, its
// online-softmax state, and the key/value blocks in flight (double
// buffered), never the full sequence and never an N×N matrix. With S = N/W
// rows per rank, f32 and Hkv = Hq = H, the live set is about
//
//	q S·B·H·D·4 + state (O S·B·H·D·4, m and l 2·S·B·H·4) + K,V held and
//	K,V incoming 2·2·S·B·H·D·4  ≈  6·S·B·H·D·4 bytes
//
// plus one block in transit to or from the store or the ring. A new shard
// starts computing only after any shard stopped on this worker has unwound,
// so a worker holds at most Slots shards. Go's collector lets the heap grow
// to about twice the live set (GOGC=100); set GOMEMLIMIT to trade CPU for a
// tighter bound.
package worker
