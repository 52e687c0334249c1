// Package shard plans how an attention problem is split among ranks.
//
// The query and key sequences are cut into blocks of Request.Block tokens
// (the last block ragged, no padding). A Plan deals query blocks (whose
// output a rank owns) and key/value blocks (which a rank loads first) to W
// ranks with one of four strategies:
//
//   - contiguous: rank r gets one run of consecutive blocks;
//   - zigzag: the blocks are cut into 2W chunks and rank r gets chunks r and
//     2W-1-r, which balances a causal mask;
//   - striped: rank r gets every block b with b mod W == r;
//   - splitkv: every rank gets all query blocks and one key/value range;
//     partial (O, LSE) results are merged up a binary tree (Plan.Reduction).
//
// A plan may also split the heads (Plan.HeadGroups, heads.go): G groups of
// Hkv/G key/value heads (GQA groups whole), each run by W/G ranks as a
// ring of its own over its heads only, down to strategy heads (one rank
// per group, no ring traffic at all). Its lists then hold units
// g·QBlockCount+b and g·KBlockCount+j; Plan.GroupPlan gives each group's
// plan as an ordinary one. Auto picks the head groups and the strategy by
// a cost model (cost.go, Plan.Predict): compute at the ranks' speeds and
// the bytes of the short-circuit schedule over the link.
//
// Ring strategies run W steps: at step s rank r holds the key/value blocks
// rank Holder(r, s) = (r-s) mod W started with, folds them into its query
// blocks and passes them on to rank r+1. Over the W steps every visible
// (query block, key block) pair is computed exactly once; pairs the mask
// hides entirely (PairsRow == 0) are skipped.
//
// Ranks may carry weights (measured GFLOP/s): ring strategies give a rank a
// number of query blocks proportional to its weight, splitkv cuts key ranges
// so that their visible FLOPs are proportional to it. Every plan reports each
// rank's Cost (4·B·Hq·D FLOPs per visible pair), the Bytes it sends, and the
// Imbalance max_r(Cost_r/w_r) / (ΣCost/Σw). NewPlan documents how the
// planner chooses a strategy when none is requested. Request.QBlocks
// re-plans a subset of the query blocks (the unfinished ones of an earlier
// epoch) while all key/value blocks are still dealt out.
//
// The mask semantics (causal, sliding window, packed documents, aligned
// bottom-right per document) are pkg/mask's, the one definition the
// kernels use too; this package imports nothing else of this module.
package shard
