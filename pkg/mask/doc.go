// Package mask is the attention mask's semantics, defined once: which
// (query, key) pairs of an attention problem are visible. The kernels
// (pkg/kernels) use it to mask scores and skip tiles, the planner
// (pkg/shard) to count visible pairs and skip block pairs; both re-export
// Mask under their own name. It imports nothing of this module.
//
// A Mask combines a causal mask, a sliding window and packed documents,
// aligned bottom-right per document (as FlashAttention >= 2.1), for N
// queries over Nk keys (cross-attention when N != Nk). Every query row sees
// one interval [lo, hi) of keys (Eval.Row), possibly empty; both bounds are
// non-decreasing in the row. Rows summarises a block of rows so that a tile
// of keys is classified (Rows.Classify: Hidden, Full or Partial) without
// evaluating the mask per pair.
//
// Validate checks a mask against N and Nk and returns an *Error naming the
// field at fault ("mask.seqlens", ...); Eval assumes a valid mask.
package mask
