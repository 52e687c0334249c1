// Package simulate predicts how a shard.Plan runs on W workers: an event
// simulation of the ring steps (or the split-KV folds and reduction tree)
// from a measured kernel speed, the transport's CPU cost per byte, and a
// link's bandwidth and latency. It is how a user sizes a real cluster
// (`ringattn bench simulate`), and its --validate mode compares its
// predictions with real in-process rings of 2 and 4 ranks.
//
// # Model
//
// Every rank runs pkg/ringattn's schedule. At ring step s rank r folds the
// key/value blocks of rank (r-s) mod W that its query blocks see (one fold
// per run of consecutive query blocks, as the engine does) while it sends
// the blocks its receivers fold at step s+1 and receives those it folds at
// step s+1. Which blocks go where is shard.Plan.Traffic: each block only
// to the ranks that need it, in ring order (Config.FullRing: through every
// rank, as before short-circuits). The step ends when the fold, the sends
// and the receives are all done, plus a fixed per-step overhead. A Send returns when its last piece is published,
// with at most the flow-control window still unacknowledged; the receiving
// transport takes pieces in as they come, before its Recv asks, up to its
// buffer (the engine asks for step s+1's frames when it starts step s;
// until then a sender stops a buffer and a window ahead). After the
// last step a rank finalizes and writes its outputs. Split-KV plans fold
// once and merge the partial (O, LSE) up the plan's binary tree.
//
// Resources are shared fluidly (see fluid.go): a host's cores among its
// runnable threads (the kernel's, one per transport stream), each link's
// bandwidth among the flows on it, and a flow moves at most a window per
// round trip. The kernel's speed is GFLOP/s on all of a host's cores;
// a fold of U = B·Hq·⌈rows/192⌉ tile units keeps U/⌈U/cores⌉ cores busy,
// and tiles a mask leaves partly visible cost whole tiles.
//
// Not modelled: loading the inputs from the tensor store and writing the
// outputs to it, NATS server CPU on hosts other than the endpoints,
// receive timeouts and their fallbacks, memory bandwidth contention.
package simulate
