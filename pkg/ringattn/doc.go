// Package ringattn runs one rank's part of a distributed exact-attention
// plan (see pkg/shard) and, for tests and `ringattn attend --ranks R`, all
// ranks of a plan in one process.
//
// RunRank executes rank Ring.Rank() of a shard.Plan:
//
//   - Ring strategies (contiguous, zigzag, striped): the rank keeps one
//     online-softmax kernels.State per owned query block. At ring step s it
//     folds the key/value blocks it holds (those rank (r-s) mod W started
//     with) into every owned query block they are visible to — one
//     kernels.State.FoldBlocks call per run of query blocks — while other
//     goroutines send blocks on and receive the blocks of step s+1 (double
//     buffering). A block travels only to the ranks whose query blocks see
//     it (shard.Plan.Traffic): from its holder straight to the next rank in
//     ring order that needs it, and so on, skipping the others; ranks that
//     need nothing of it neither receive nor forward it (RankConfig.FullRing
//     passes every block through every rank instead). After W steps each
//     state has seen every visible key exactly once; it is finalized and
//     written to the Sink with its log-sum-exp.
//   - Split-KV: every rank folds its key range into all query blocks,
//     finalizes a partial (O, LSE), and the partials are merged up a binary
//     tree (KindPartial frames, kernels.MergeOutputs) to rank 0, which
//     writes the outputs.
//
// RunRankBackward executes one rank of a plan's backward pass from the
// forward's O and LSE and the output gradient dO (Source tensors "o",
// "lse", "do"): ring strategies send the key/value blocks along the
// forward's routes, with their dK/dV accumulators (KindGrad frames) one
// step behind, visiting the ranks that need the block, and one hop home, so each rank ends with the exact dQ of its
// query blocks (kernels.BackwardBlock per run and held block) and the exact
// dK/dV of the key blocks it started with; split-KV ranks compute complete
// dK/dV of their key range and sum dQ partials (KindDQ frames) up the
// reduction tree. Only complete gradient blocks are written, to a GradSink,
// tagged with the epoch; a plan over a subset of the query blocks may not
// produce dK/dV (DESIGN.md §7 is the fencing argument). Lost accumulators
// and partials are recomputed from the Source bit-identically.
// RunLocalBackward runs every rank over a MemNet into a MemGradSink.
//
// The Source (the tensor store in a cluster) is the fallback: a key/value
// frame that does not arrive within the ring's receive timeout, or arrives
// malformed, is fetched from the Source and forwarded like a received one;
// a lost split-KV partial is recomputed from the Source. Either way the
// arithmetic, and so the result, is exactly that of the fault-free run.
// A dead peer (ErrPeerGone) or the end of the context stops the rank
// promptly with an error, and RunRank returns only after its goroutines
// have exited.
//
// The package declares the interfaces it needs — Ring (send to a rank,
// receive from a rank by Key), Source and Sink — and implements them in
// memory: MemNet (with fault hooks: drop, delay, duplicate, reorder, kill),
// MemSource and MemSink (which also implement the optional RunSource and
// RunSink, serving a run of consecutive blocks in one piece). MemSource is
// also a ViewSource: it lends views into the whole tensors, which ranks
// fold in place (kernels.KV.Stride) and, over a FrameSharer ring such as
// MemNet, forward by reference; other rings are sent contiguous copies.
// transport.NATSRing implements Ring for the cluster. RunLocal runs every
// rank of a plan over a MemNet. Layer holds the projections of multi-head
// self-attention layer jobs.
//
// DESIGN.md in this directory makes the exactness argument and describes
// the schedules, forward and backward, and the fencing of re-planned epochs.
package ringattn
