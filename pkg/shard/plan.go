package shard

import (
	"errors"

	"github.com/ringattn/ringattn/pkg/mask"
)

// Strategy names how query and key/value blocks are dealt to ranks.
type Strategy string

const (
	// Auto lets the planner pick by shape and mask.
	Auto Strategy = ""
	// Contiguous gives rank r one run of consecutive blocks.
	Contiguous Strategy = "contiguous"
	// Zigzag cuts the blocks into 2W chunks and gives rank r chunks r and
	// 2W-1-r: balanced under a causal mask.
	Zigzag Strategy = "zigzag"
	// Striped gives rank r every block b with b mod W == r.
	Striped Strategy = "striped"
	// SplitKV gives every rank all query blocks and one range of key/value
	// blocks; partial (O, LSE) are merged up a binary tree to rank 0.
	// For short queries over long keys (decoding).
	SplitKV Strategy = "splitkv"
)

// DefaultBlock is the default block length in tokens.
const DefaultBlock = 1024

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("shard: invalid request")

// Mask selects which keys a query may see; the zero value masks nothing.
// It is pkg/mask's Mask, shared with pkg/kernels; see DESIGN.md §2.
type Mask = mask.Mask

// Request is what the planner needs to know about a job epoch.
type Request struct {
	B, Hq, Hkv, D int
	N, Nk         int // query and key lengths
	Block         int // tokens per block; 0 means DefaultBlock
	Mask          Mask
	// Ranks is the number of ranks W (>= 1).
	Ranks int
	// Weights are the ranks' relative speeds (measured GFLOP/s); nil means equal.
	Weights  []float64
	Strategy Strategy
	// QBlocks restricts the plan to these query blocks (re-planning the
	// unfinished ones in a new epoch); nil means all.
	QBlocks []int
	// ElemBytes is the wire size of one element: 4 (f32) or 2 (bf16); 0 means 4.
	ElemBytes int
}

// Plan is one epoch's assignment of blocks to ranks and its ring schedule.
//
// Query block i covers positions [i·Block, min((i+1)·Block, N)), key block j
// covers [j·Block, min((j+1)·Block, Nk)). At ring step s (0 <= s < Steps)
// rank r holds the key/value blocks that rank (r-s) mod W started with, folds
// them into the state of its query blocks, and sends them on to rank r+1
// (except after the last step). SplitKV plans have one step and a reduction.
type Plan struct {
	Strategy    Strategy
	N, Nk       int
	Block       int
	QBlockCount int // blocks of the query sequence
	KBlockCount int // blocks of the key sequence
	Steps       int
	Ranks       []Rank
	// Imbalance is max(rank cost) / mean(rank cost), weighted by speed
	// (1 is perfect): max_r(Cost_r/w_r) / (ΣCost/Σw).
	Imbalance float64

	// Request is the normalized request the plan was made for (Block,
	// ElemBytes, Weights and Strategy filled in, QBlocks sorted).
	Request Request
	// Planned lists the query blocks of this plan in ascending order (all
	// blocks, or Request.QBlocks when re-planning).
	Planned []int
	// Reduce is the split-KV reduction schedule (nil for ring strategies).
	Reduce []ReduceStep
}

// ReduceStep is one edge of the split-KV reduction tree: at level Level,
// rank From sends its partial (O, LSE), already merged with everything it
// received at lower levels, to rank To, which merges it into its own. Rank
// From takes no further part; after the last level rank 0 holds the result.
type ReduceStep struct {
	Level, From, To int
}

// Rank is one rank's share of a plan.
type Rank struct {
	QBlocks  []int   // query blocks whose output this rank owns (SplitKV: all planned blocks)
	KVBlocks []int   // key/value blocks this rank loads at step 0
	Cost     float64 // FLOPs of the (query, key) pairs the mask leaves visible
	Bytes    int64   // bytes this rank sends over the whole plan
}
