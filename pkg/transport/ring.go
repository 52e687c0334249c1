package transport

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/ringattn/ringattn/pkg/ringattn"
)

// Ring defaults.
const (
	DefaultRecvTimeout   = 10 * time.Second
	DefaultSendTimeout   = 30 * time.Second
	DefaultProbeInterval = 250 * time.Millisecond
	DefaultPieceBytes    = 4 << 20
	DefaultWindowBytes   = 16 << 20
	DefaultBufferBytes   = 256 << 20
	DefaultMaxFrameBytes = 1 << 30
	// HeaderRoom is what a piece leaves of the server's max payload for
	// its headers.
	HeaderRoom = 1 << 10
	// maxFrameTensors bounds the tensors of one frame.
	maxFrameTensors = 64
	// maxSessionLen bounds a ring session id read from a header (a NUID
	// is 22 characters).
	maxSessionLen = 64
	// maxFailed bounds the frames known lost that wait for their Recv,
	// and maxGone the closed sessions remembered per peer: a publisher
	// forging them cannot grow the ring without bound.
	maxFailed = 4096
	maxGone   = 64
)

// RingConfig configures one rank's NATSRing for one job epoch.
type RingConfig struct {
	Job   string
	Epoch uint64
	Rank  int
	Size  int
	// Prefix is the subject prefix (default "ringattn").
	Prefix string
	// Worker is the id of the worker running this rank: the sender token
	// of every subject the ring publishes on (Subjects.RingFrom), which
	// the server's permissions pin to the worker's identity. Empty: the
	// Workers entry of Rank, else AnonSender (auth off).
	Worker string
	// Workers, when set, are the worker ids of the ranks (len Size): a
	// frame, acknowledgement or notice claiming to come from rank r is
	// dropped (counted in RingStats.Forged) unless its subject's sender is
	// Workers[r], so with per-worker permissions no worker speaks for
	// another rank's worker.
	Workers []string
	// Encoding of frame tensors on the wire (F32 default; BF16 halves the
	// bytes and rounds values).
	Encoding Encoding
	// RecvTimeout bounds each Recv (default 10 s), extended while pieces of
	// the awaited frame keep arriving (a large frame on a slow link is not
	// stalled); then Recv returns an error wrapping ringattn.ErrTimeout and
	// the caller uses its Source.
	RecvTimeout time.Duration
	// SendTimeout is how long Send waits without any acknowledgement from
	// the peer before it abandons the frame (default 30 s); the peer then
	// falls back to its Source.
	SendTimeout time.Duration
	// PieceBytes is the largest piece payload (default 4 MiB, at most the
	// server's max payload minus HeaderRoom).
	PieceBytes int
	// WindowBytes is how many piece bytes may be unacknowledged per peer
	// (default 16 MiB, at least PieceBytes). Keep WindowBytes times the
	// senders per receiver well under the server's max_pending (64 MiB).
	WindowBytes int
	// BufferBytes bounds the received frames waiting for Recv; beyond it
	// the receiver withholds acknowledgements so senders stop (default
	// 256 MiB).
	BufferBytes int
	// MaxFrameBytes rejects larger frames (default 1 GiB).
	MaxFrameBytes int64
	// ProbeInterval is how often a sender stalled on its window asks the
	// peer which pieces arrived (default 250 ms).
	ProbeInterval time.Duration
	// Logger receives warnings about lost, corrupt and abandoned frames.
	Logger *slog.Logger
}

// RingStats are cumulative counters of a NATSRing.
type RingStats struct {
	FramesSent, FramesReceived int64
	PiecesSent, PiecesReceived int64
	BytesSent, BytesReceived   int64 // wire payload bytes
	// FramesAbandoned counts frames Send gave up on (window stalled for
	// SendTimeout, a publish failed while disconnected, or the peer's ring
	// announced it closed).
	FramesAbandoned int64
	// PiecesLost counts sent pieces the peer never saw.
	PiecesLost int64
	Probes     int64
	// Receiver side: duplicates ignored, pieces of other jobs/epochs
	// dropped, pieces failing CRC32C, frames that could not be completed,
	// Recv timeouts, and frames arriving after their Recv gave up.
	Duplicates, Foreign, Corrupt, Incomplete, Timeouts, Late int64
	// Malformed counts pieces, acknowledgements and notices dropped for a
	// header out of range or not parsing (a bad kind, count, tensor,
	// offset, shape, encoding, session...); the frame they claimed to be
	// part of is lost.
	Malformed int64
	// HandlerPanics counts messages whose handler panicked: each is
	// logged at ERROR with its stack and dropped, the process goes on.
	HandlerPanics int64
	// Forged counts messages dropped because their subject's sender is
	// not the worker of the rank they claim to come from
	// (RingConfig.Workers).
	Forged int64
	// AbandonedByPeer counts frames whose sender announced it gave up on
	// them (their Recv returns at once); PeersClosed counts peers'
	// announcements that their ring closed; SenderClosed counts Recvs that
	// returned at once because the frame's sender closed its ring after
	// everything it sent had arrived.
	AbandonedByPeer, PeersClosed, SenderClosed int64
	// BufferedBytes are decoded frames waiting for Recv now; Peak is the
	// most there ever were.
	BufferedBytes, PeakBufferedBytes int64
}

// NATSRing implements ringattn.Ring over NATS core subjects for one rank of
// one job epoch. Frames to rank t are published to Subjects.Ring(job,
// epoch, t) as pieces of at most PieceBytes with their identity and CRC32C
// in headers. Each piece carries a per-link sequence number; the receiver
// acknowledges pieces on Subjects.RingAck(job, epoch, sender) in the order
// they arrived, and the sender keeps at most WindowBytes unacknowledged, so
// neither the server nor the receiver is ever handed more than the window.
// An acknowledgement of sequence s tells the sender every earlier
// unacknowledged piece was lost; a stalled sender sends a probe to learn
// that. The receiver withholds acknowledgements while more than
// BufferBytes of completed frames wait for Recv. Lost, corrupt and late
// frames are dropped; Recv reports them (or a timeout) as
// ringattn.ErrTimeout so the engine fetches the block from the store.
//
// Control notices on Subjects.RingCtl(job, epoch, rank) save waiting: a
// ring announces to its peers that it opened and, on Close, that it
// closed, and a sender that abandons a frame names it to the receiver.
// A sender abandons every frame to a peer known closed at once (still
// probing, rate-limited, so a peer listening again is found by its
// acknowledgement); a Recv of a frame its sender abandoned returns
// ringattn.ErrTimeout at once. The notices are best-effort: a lost one
// costs SendTimeout or RecvTimeout, as without them. Acknowledgements carry
// the receiver's session, so a notice of an earlier incarnation's close
// does not silence a peer that listens again.
//
// Lock order: sendMu[to] before mu; no lock is held while publishing.
type NATSRing struct {
	nc      *nats.Conn
	cfg     RingConfig
	subj    Subjects
	logger  *slog.Logger
	session string
	sender  string // the sender token of this ring's subjects
	inbox   *nats.Subscription
	acks    *nats.Subscription
	ctl     *nats.Subscription
	sendMu  []chan struct{} // per destination: one frame at a time

	// mutate, when set (tests), replaces each outgoing piece by what it
	// returns: nothing drops it, two messages duplicate it.
	mutate func(*nats.Msg) []*nats.Msg

	mu     sync.Mutex
	notify chan struct{} // closed and replaced on every state change
	closed bool
	links  []linkState // per destination
	peers  []peerState // per source
	ended  []senderEnd // per source: its ring closed
	ready  map[frameKey]ringattn.Frame
	failed map[frameKey]error
	done   map[frameKey]doneState // later copies of these frames are dropped
	readyB int64
	stats  RingStats
	panics atomic.Int64

	// testHook, when set (tests), runs first in every subscription
	// handler with the handler's name.
	testHook atomic.Pointer[func(handler string, m *nats.Msg)]
}

// doneState says why a frame is finished with.
type doneState uint8

const (
	delivered doneState = iota + 1 // returned by Recv
	gaveUp                         // Recv timed out, was canceled or reported it lost
	dropped                        // the sender announced it abandoned the frame
)

type frameKey struct {
	from int
	key  ringattn.Key
}

type inflight struct {
	seq   uint64
	bytes int
}

type linkState struct {
	nextSeq   uint64
	inflight  []inflight
	bytes     int
	acked     uint64 // acks received, to detect progress
	lastProbe time.Time
	// established is set by the first acknowledgement: the peer listens.
	established bool
	// stalled is set when a frame to the peer was abandoned for want of
	// acknowledgements and cleared by the next one: until then a send to
	// the peer waits two probe intervals, not SendTimeout (a peer that
	// finished or died would otherwise cost SendTimeout per frame).
	stalled bool
	// peerClosed is set by the peer's notice that its ring closed: frames
	// to it are abandoned at once. An acknowledgement or an open notice
	// from a session not in gone (the peer listens again) clears it.
	peerClosed bool
	peerSess   string          // the peer's ring session last heard from
	gone       map[string]bool // peer sessions that announced they closed
}

// senderEnd is a source's close notice: session sess sent this ring
// nothing after sequence number seq.
type senderEnd struct {
	sess string
	seq  uint64
}

type peerState struct {
	session  string
	lastSeq  uint64 // admitted
	handled  uint64 // admitted and assembled (or dropped)
	asm      *assembly
	withheld []uint64
}

type assembly struct {
	lastPiece time.Time
	key       ringattn.Key
	count     int
	next      int
	// tensors are allocated at their first piece, or adopt the piece's
	// payload when one F32 piece carries a whole tensor (no copy).
	tensors [][]float32
	lens    []int
	bytes   int64
	// The next piece's place: values from curOff of tensor curT (pieces
	// arrive in order, tensor by tensor, none empty but an empty frame's
	// one piece). curT == len(lens) once every value arrived.
	curT, curOff int
}

type pendingAck struct {
	to      int
	session string
	seq     uint64
}

// NewNATSRing subscribes rank cfg.Rank's inbox and acknowledgement subjects
// and returns the ring. Close it when the epoch ends.
func NewNATSRing(nc *nats.Conn, cfg RingConfig) (*NATSRing, error) {
	if nc == nil {
		return nil, invalid("NewNATSRing: nil connection")
	}
	if err := ValidateJobID(cfg.Job); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults(int(nc.MaxPayload()) - HeaderRoom)
	if err := cfg.validate(nc.MaxPayload()); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &NATSRing{
		nc:      nc,
		cfg:     cfg,
		subj:    NewSubjects(cfg.Prefix),
		logger:  logger.With("job", cfg.Job, "epoch", cfg.Epoch, "rank", cfg.Rank),
		session: nuid.Next(),
		sender:  cfg.Worker,
		sendMu:  make([]chan struct{}, cfg.Size),
		notify:  make(chan struct{}),
		links:   make([]linkState, cfg.Size),
		peers:   make([]peerState, cfg.Size),
		ended:   make([]senderEnd, cfg.Size),
		ready:   make(map[frameKey]ringattn.Frame),
		failed:  make(map[frameKey]error),
		done:    make(map[frameKey]doneState),
	}
	for i := range r.sendMu {
		r.sendMu[i] = make(chan struct{}, 1)
	}
	if err := r.subscribe(); err != nil {
		return nil, err
	}
	// A peer that heard an earlier incarnation of this rank close sends to
	// this one again.
	r.announce(ctlOpen, nil)
	return r, nil
}

// withDefaults fills in the zero fields of c; maxPiece is the largest
// piece the server's max payload allows.
func (c RingConfig) withDefaults(maxPiece int) RingConfig {
	if c.PieceBytes == 0 {
		c.PieceBytes = min(DefaultPieceBytes, maxPiece)
	}
	c.PieceBytes &^= 3 // whole values of either encoding
	if c.WindowBytes == 0 {
		c.WindowBytes = max(DefaultWindowBytes, c.PieceBytes)
	}
	if c.RecvTimeout == 0 {
		c.RecvTimeout = DefaultRecvTimeout
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.BufferBytes == 0 {
		c.BufferBytes = DefaultBufferBytes
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.Worker == "" && c.Rank >= 0 && c.Rank < len(c.Workers) {
		c.Worker = c.Workers[c.Rank]
	}
	if c.Worker == "" {
		c.Worker = AnonSender
	}
	return c
}

// validate checks c (defaults filled in) against a server whose max
// payload is maxPayload.
func (c RingConfig) validate(maxPayload int64) error {
	maxPiece := int(maxPayload) - HeaderRoom
	switch {
	case c.Size < 1:
		return invalid("RingConfig.Size = %d: want >= 1", c.Size)
	case c.Rank < 0 || c.Rank >= c.Size:
		return invalid("RingConfig.Rank = %d: want 0..%d", c.Rank, c.Size-1)
	case !c.Encoding.valid():
		return invalid("RingConfig.Encoding = %v: want F32 or BF16", c.Encoding)
	case c.PieceBytes < 4 || c.PieceBytes > maxPiece:
		return invalid("RingConfig.PieceBytes = %d: want 4..%d (server max payload %d minus HeaderRoom)",
			c.PieceBytes, maxPiece, maxPayload)
	case c.WindowBytes < c.PieceBytes:
		return invalid("RingConfig.WindowBytes = %d: want >= PieceBytes (%d)", c.WindowBytes, c.PieceBytes)
	case c.RecvTimeout < 0 || c.SendTimeout < 0 || c.ProbeInterval < 0:
		return invalid("RingConfig timeouts: want > 0")
	case c.BufferBytes < 0:
		return invalid("RingConfig.BufferBytes = %d: want > 0", c.BufferBytes)
	case c.MaxFrameBytes < 0:
		return invalid("RingConfig.MaxFrameBytes = %d: want > 0", c.MaxFrameBytes)
	}
	if c.Prefix != "" && !subjectRE.MatchString(c.Prefix) {
		return invalid("RingConfig.Prefix = %q: want dot-separated tokens of [A-Za-z0-9_-]", c.Prefix)
	}
	if c.Worker != AnonSender {
		if err := ValidateName("RingConfig.Worker", c.Worker); err != nil {
			return invalid("%v", err)
		}
	}
	if c.Workers != nil {
		if len(c.Workers) != c.Size {
			return invalid("RingConfig.Workers has %d ids: want Size = %d (one per rank) or none", len(c.Workers), c.Size)
		}
		for i, w := range c.Workers {
			if err := ValidateName(fmt.Sprintf("RingConfig.Workers[%d]", i), w); err != nil {
				return invalid("%v", err)
			}
		}
		if c.Workers[c.Rank] != c.Worker {
			return invalid("RingConfig.Worker = %q but Workers[%d] (this rank) = %q: want the same", c.Worker, c.Rank, c.Workers[c.Rank])
		}
	}
	return nil
}

// subscribe subscribes the ring's inbox, acknowledgement and control
// subjects and waits (up to RecvTimeout) for the server to confirm them.
func (r *NATSRing) subscribe() error {
	cfg := r.cfg
	var err error
	r.inbox, err = r.nc.Subscribe(r.subj.RingInbox(cfg.Job, cfg.Epoch, cfg.Rank), r.guard("piece", r.onPiece))
	if err != nil {
		return fmt.Errorf("transport: ring subscribe: %w", err)
	}
	// At most a window per sender (plus probes) is ever outstanding; the
	// limits only guard against a misbehaving publisher.
	if err := r.inbox.SetPendingLimits(1<<20, max(64<<20, 2*int(cfg.WindowBytes)*cfg.Size)); err != nil {
		r.inbox.Unsubscribe()
		return fmt.Errorf("transport: ring pending limits: %w", err)
	}
	r.acks, err = r.nc.Subscribe(r.subj.RingAckInbox(cfg.Job, cfg.Epoch, cfg.Rank), r.guard("ack", r.onAck))
	if err != nil {
		r.inbox.Unsubscribe()
		return fmt.Errorf("transport: ring subscribe: %w", err)
	}
	r.ctl, err = r.nc.Subscribe(r.subj.RingCtlInbox(cfg.Job, cfg.Epoch, cfg.Rank), r.guard("ctl", r.onCtl))
	if err != nil {
		r.inbox.Unsubscribe()
		r.acks.Unsubscribe()
		return fmt.Errorf("transport: ring subscribe: %w", err)
	}
	// Make sure the server has both subscriptions before anyone sends.
	// While reconnecting, nats.go re-subscribes on reconnect and senders
	// probe until this rank answers, so only a closed connection fails.
	if err := r.nc.FlushTimeout(cfg.RecvTimeout); err != nil {
		if r.nc.IsClosed() {
			r.Close()
			return fmt.Errorf("transport: ring subscribe: %w", err)
		}
		r.logger.Warn("ring subscriptions not confirmed by the server yet", "err", err)
	}
	return nil
}

// guard wraps a subscription handler so that a panic in it (a bug a
// message found) is logged at ERROR with its stack, counted in
// RingStats.HandlerPanics and the message dropped, instead of ending the
// process on nats.go's goroutine. The handlers take r.mu with deferred
// unlocks, so a panic never leaves it held.
func (r *NATSRing) guard(name string, h nats.MsgHandler) nats.MsgHandler {
	return func(m *nats.Msg) {
		defer func() {
			if v := recover(); v != nil {
				r.panics.Add(1)
				r.logger.Error("ring message handler panicked; message dropped", "handler", name,
					"subject", m.Subject, "header", m.Header, "bytes", len(m.Data), "panic", v, "stack", string(debug.Stack()))
			}
		}()
		if hook := r.testHook.Load(); hook != nil {
			(*hook)(name, m)
		}
		h(m)
	}
}

// fromWorkerLocked reports whether m, claiming to come from rank from,
// was published by that rank's worker (always, without
// RingConfig.Workers); a message that was not is counted in Forged.
func (r *NATSRing) fromWorkerLocked(m *nats.Msg, from int) bool {
	if r.cfg.Workers == nil || r.subj.ringSender(m.Subject) == r.cfg.Workers[from] {
		return true
	}
	r.stats.Forged++
	return false
}

func (r *NATSRing) fromWorker(m *nats.Msg, from int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fromWorkerLocked(m, from)
}

// malformedLocked counts a message dropped for its headers.
func (r *NATSRing) malformedLocked() { r.stats.Malformed++ }

func (r *NATSRing) malformed() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.malformedLocked()
}

// Rank returns this ring's rank.
func (r *NATSRing) Rank() int { return r.cfg.Rank }

// Size returns the number of ranks.
func (r *NATSRing) Size() int { return r.cfg.Size }

// Config returns the ring's configuration with defaults filled in.
func (r *NATSRing) Config() RingConfig { return r.cfg }

// Stats returns the ring's counters.
func (r *NATSRing) Stats() RingStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.BufferedBytes = r.readyB
	s.HandlerPanics = r.panics.Load()
	return s
}

// Close tells the peers this ring closed (so they stop sending to it),
// unsubscribes and wakes every blocked Send and Recv with ErrClosed. Safe
// to call more than once.
func (r *NATSRing) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.ready, r.failed = nil, nil
	r.readyB = 0
	r.broadcastLocked()
	// No sequence number is given out after closed is set: each peer
	// has everything this ring will ever send it once it saw seqs[peer].
	seqs := make([]uint64, r.cfg.Size)
	for to := range r.links {
		seqs[to] = r.links[to].nextSeq
	}
	r.mu.Unlock()
	if !r.nc.IsClosed() {
		r.announce(ctlClosed, seqs)
	}
	var errs []error
	for _, s := range []*nats.Subscription{r.inbox, r.acks, r.ctl} {
		if s != nil {
			if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (r *NATSRing) broadcastLocked() {
	close(r.notify)
	r.notify = make(chan struct{})
}

func (r *NATSRing) checkRank(what string, rank int) error {
	if rank < 0 || rank >= r.cfg.Size {
		return fmt.Errorf("%w: %s rank %d: want 0..%d", ErrInvalidName, what, rank, r.cfg.Size-1)
	}
	return nil
}

var _ ringattn.Ring = (*NATSRing)(nil)
