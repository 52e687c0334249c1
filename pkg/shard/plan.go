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
	// Heads is pure head parallelism: the key/value heads are cut into G
	// groups (GQA groups whole), one rank per group holds every block of
	// its heads, and nothing travels between ranks. G is
	// Request.HeadGroups, or the most groups Hkv and the ranks allow.
	Heads Strategy = "heads"
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
	// HeadGroups cuts the Hkv key/value heads into this many groups of
	// Hkv/HeadGroups heads (and their Hq/Hkv query heads each), each run
	// by its own Ranks/HeadGroups ranks (see heads.go). 0 lets Auto choose
	// by the cost model (an explicit strategy then means 1); when QBlocks
	// is set it must be the G the unfinished units were planned with.
	HeadGroups int
	// GFLOPS is the speed of a rank of weight 1 in GFLOP/s for the cost
	// model (Plan.Predict); 0 means the Weights are GFLOP/s themselves, or
	// DefaultGFLOPS per rank when Weights is nil.
	GFLOPS float64
	// Link is a rank's link bandwidth in bytes/s for the cost model,
	// measured or configured; 0 means DefaultLink.
	Link float64
	// WholeBlocks tells the cost model that the ranks read their inputs
	// from a store of whole blocks (every head of a block in one object,
	// as the cluster's): a rank of a head group reads all heads of its
	// blocks, G times its share, before it starts, and each output block
	// is gathered to one writer (Plan.GatherBytes). Without it reads cost
	// nothing (in-process sources lend views).
	WholeBlocks bool
	// HeadReads, with WholeBlocks, says the store also serves a range of
	// a block's heads (the cluster's does, for inputs written with their
	// slab layout): a head group's rank then reads its group's heads
	// only, its share; outputs are still gathered to one writer.
	HeadReads bool
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
	// HeadGroups is the number G of key/value head groups (0 or 1: every
	// rank computes all heads). With G > 1 the ranks are laid out group
	// by group, W/G each, and Rank.QBlocks, Rank.KVBlocks and Planned hold
	// units g·QBlockCount+b (query) and g·KBlockCount+j (key/value): block
	// b (j) of group g's heads. Each group's ranks form their own ring of
	// W/G steps; see heads.go.
	HeadGroups int
	Steps      int
	Ranks      []Rank
	// Imbalance is max(rank cost) / mean(rank cost), weighted by speed
	// (1 is perfect): max_r(Cost_r/w_r) / (ΣCost/Σw).
	Imbalance float64

	// Request is the normalized request the plan was made for (Block,
	// ElemBytes, Weights and Strategy filled in, QBlocks sorted).
	Request Request
	// Planned lists the query blocks (units when HeadGroups > 1) of this
	// plan in ascending order (all of them, or Request.QBlocks when
	// re-planning).
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
	QBlocks  []int   // query blocks (units) whose output this rank owns (SplitKV: all planned blocks)
	KVBlocks []int   // key/value blocks (units) this rank loads at step 0
	Cost     float64 // FLOPs of the (query, key) pairs the mask leaves visible
	Bytes    int64   // bytes this rank sends over the whole plan
}
