package ringattn

import (
	"context"
	"errors"
)

// Kind says what a Frame carries.
type Kind uint8

const (
	// KindKV is a key/value block travelling the ring: Tensors = [K, V],
	// each [B, Hkv, len, D] of the block.
	KindKV Kind = 1
	// KindPartial is a split-KV partial result on its way up the reduction
	// tree: Tensors = [O, LSE] for the rank's query rows.
	KindPartial Kind = 2
)

// MaxKind is the largest Kind a frame may carry (KindHeadOut); a ring
// transport refuses frames of any other kind.
const MaxKind = KindHeadOut

// Known reports whether k is one of the kinds above (KindKV..MaxKind).
func (k Kind) Known() bool { return k >= KindKV && k <= MaxKind }

// Key identifies a frame within one job epoch: what it is, at which step of
// the schedule, and which block (KV block index, or the sending rank for
// partials).
type Key struct {
	Kind  Kind
	Step  int
	Block int
}

// Frame is one message between ranks.
type Frame struct {
	Key
	Tensors [][]float32
	// Stride, when not 0, says the tensors are views into larger tensors:
	// each holds B·H heads of rows, head i from row i·Stride. Only a
	// FrameSharer ring carries such frames; 0 means contiguous tensors.
	Stride int
}

// Ring moves frames between the ranks of one job epoch. Implementations: the
// in-memory ring of this package (tests, `attend --ranks`) and
// transport.NATSRing (the cluster).
//
// Send may return before the peer has received the frame; it blocks while
// the implementation's bounded buffer is full. Recv returns the frame with
// exactly the given key from the given rank, discarding or holding others;
// it returns ErrTimeout when the frame does not arrive within the ring's
// receive timeout (the caller then fetches the block from its Source), and
// ctx.Err() when ctx ends.
type Ring interface {
	Rank() int
	Size() int
	Send(ctx context.Context, to int, f Frame) error
	Recv(ctx context.Context, from int, key Key) (Frame, error)
}

// Source fetches any input block by tensor name ("q", "k", "v") and block
// index; it is the store behind the ring and the fallback when a frame is
// late or lost. The returned slice is [B, H, len, D] of the block and must
// not be modified by the caller.
type Source interface {
	Fetch(ctx context.Context, tensor string, block int) ([]float32, error)
}

// Sink receives a rank's finished output rows: o is [B, Hq, len, D] and lse
// [B, Hq, len] of query block `block`.
type Sink interface {
	Put(ctx context.Context, block int, o, lse []float32) error
}

// RunSource is optionally implemented by a Source that can serve a run of
// consecutive blocks in one slice, [B, H, rows, D] over the rows of blocks
// first .. first+count-1, saving a copy (MemSource does). RunRank uses it
// for its query blocks.
type RunSource interface {
	FetchRun(ctx context.Context, tensor string, first, count int) ([]float32, error)
}

// ViewSource is optionally implemented by a Source that can lend the rows
// of blocks first .. first+count-1 of a tensor without copying them: head
// (b, h) of the run starts at row (b·H+h)·stride of data, and its rows are
// contiguous. The data must not be modified. MemSource implements it, and
// RunRank then folds its query rows and its initial key/value blocks in
// place.
type ViewSource interface {
	View(ctx context.Context, tensor string, first, count int) (data []float32, stride int, err error)
}

// FrameSharer is optionally implemented by a Ring that hands frames to the
// receiver by reference within one process (MemNet). It accepts frames with
// a Stride, so a rank forwards the views it holds without copying them;
// other rings are sent contiguous copies.
type FrameSharer interface {
	SharesFrames() bool
}

// RunSink is optionally implemented by a Sink that accepts a run of
// consecutive output blocks at once: o is [B, Hq, rows, D] and lse
// [B, Hq, rows] over the rows of blocks first .. first+count-1.
type RunSink interface {
	PutRun(ctx context.Context, first, count int, o, lse []float32) error
}

// Sentinel errors.
var (
	// ErrTimeout is returned by Ring.Recv when a frame did not arrive in time.
	ErrTimeout = errors.New("ringattn: ring receive timed out")
	// ErrPeerGone is returned when a peer rank is known to be dead.
	ErrPeerGone = errors.New("ringattn: peer rank gone")
)
