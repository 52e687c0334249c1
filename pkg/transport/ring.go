package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
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

// Piece headers.
const (
	hJob    = "Ra-Job"
	hEpoch  = "Ra-Epoch"
	hFrom   = "Ra-From"
	hSess   = "Ra-Sess"
	hSeq    = "Ra-Seq"
	hProbe  = "Ra-Probe"
	hKind   = "Ra-Kind"
	hStep   = "Ra-Step"
	hBlock  = "Ra-Block"
	hPiece  = "Ra-Piece"
	hCount  = "Ra-Count"
	hTensor = "Ra-Tensor"
	hOff    = "Ra-Off"
	hShape  = "Ra-Shape"
	hEnc    = "Ra-Enc"
	hCRC    = "Ra-Crc"
	hPad    = "Ra-Pad"
	// hRSess is the receiver's ring session on an acknowledgement.
	hRSess = "Ra-Rsess"
	// hCtl says what a control notice on Subjects.RingCtl announces.
	hCtl = "Ra-Ctl"
)

// Control notices (hCtl values).
const (
	ctlOpen    = "open"    // the sender's ring listens (a new session)
	ctlClosed  = "closed"  // the sender's ring closed: send it nothing more
	ctlAbandon = "abandon" // the sender gave up on the frame named by hKind/hStep/hBlock
)

// RingConfig configures one rank's NATSRing for one job epoch.
type RingConfig struct {
	Job   string
	Epoch uint64
	Rank  int
	Size  int
	// Prefix is the subject prefix (default "ringattn").
	Prefix string
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
	maxPiece := int(nc.MaxPayload()) - HeaderRoom
	if cfg.PieceBytes == 0 {
		cfg.PieceBytes = min(DefaultPieceBytes, maxPiece)
	}
	cfg.PieceBytes &^= 3 // whole values of either encoding
	if cfg.WindowBytes == 0 {
		cfg.WindowBytes = max(DefaultWindowBytes, cfg.PieceBytes)
	}
	if cfg.RecvTimeout == 0 {
		cfg.RecvTimeout = DefaultRecvTimeout
	}
	if cfg.SendTimeout == 0 {
		cfg.SendTimeout = DefaultSendTimeout
	}
	if cfg.BufferBytes == 0 {
		cfg.BufferBytes = DefaultBufferBytes
	}
	if cfg.MaxFrameBytes == 0 {
		cfg.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	switch {
	case cfg.Size < 1:
		return nil, invalid("RingConfig.Size = %d: want >= 1", cfg.Size)
	case cfg.Rank < 0 || cfg.Rank >= cfg.Size:
		return nil, invalid("RingConfig.Rank = %d: want 0..%d", cfg.Rank, cfg.Size-1)
	case !cfg.Encoding.valid():
		return nil, invalid("RingConfig.Encoding = %v: want F32 or BF16", cfg.Encoding)
	case cfg.PieceBytes < 4 || cfg.PieceBytes > maxPiece:
		return nil, invalid("RingConfig.PieceBytes = %d: want 4..%d (server max payload %d minus HeaderRoom)",
			cfg.PieceBytes, maxPiece, nc.MaxPayload())
	case cfg.WindowBytes < cfg.PieceBytes:
		return nil, invalid("RingConfig.WindowBytes = %d: want >= PieceBytes (%d)", cfg.WindowBytes, cfg.PieceBytes)
	case cfg.RecvTimeout < 0 || cfg.SendTimeout < 0 || cfg.ProbeInterval < 0:
		return nil, invalid("RingConfig timeouts: want > 0")
	case cfg.BufferBytes < 0:
		return nil, invalid("RingConfig.BufferBytes = %d: want > 0", cfg.BufferBytes)
	case cfg.MaxFrameBytes < 0:
		return nil, invalid("RingConfig.MaxFrameBytes = %d: want > 0", cfg.MaxFrameBytes)
	}
	if cfg.Prefix != "" && !subjectRE.MatchString(cfg.Prefix) {
		return nil, invalid("RingConfig.Prefix = %q: want dot-separated tokens of [A-Za-z0-9_-]", cfg.Prefix)
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
	var err error
	r.inbox, err = nc.Subscribe(r.subj.Ring(cfg.Job, cfg.Epoch, cfg.Rank), r.guard("piece", r.onPiece))
	if err != nil {
		return nil, fmt.Errorf("transport: ring subscribe: %w", err)
	}
	// At most a window per sender (plus probes) is ever outstanding; the
	// limits only guard against a misbehaving publisher.
	if err := r.inbox.SetPendingLimits(1<<20, max(64<<20, 2*int(cfg.WindowBytes)*cfg.Size)); err != nil {
		r.inbox.Unsubscribe()
		return nil, fmt.Errorf("transport: ring pending limits: %w", err)
	}
	r.acks, err = nc.Subscribe(r.subj.RingAck(cfg.Job, cfg.Epoch, cfg.Rank), r.guard("ack", r.onAck))
	if err != nil {
		r.inbox.Unsubscribe()
		return nil, fmt.Errorf("transport: ring subscribe: %w", err)
	}
	r.ctl, err = nc.Subscribe(r.subj.RingCtl(cfg.Job, cfg.Epoch, cfg.Rank), r.guard("ctl", r.onCtl))
	if err != nil {
		r.inbox.Unsubscribe()
		r.acks.Unsubscribe()
		return nil, fmt.Errorf("transport: ring subscribe: %w", err)
	}
	// Make sure the server has both subscriptions before anyone sends.
	// While reconnecting, nats.go re-subscribes on reconnect and senders
	// probe until this rank answers, so only a closed connection fails.
	if err := nc.FlushTimeout(cfg.RecvTimeout); err != nil {
		if nc.IsClosed() {
			r.Close()
			return nil, fmt.Errorf("transport: ring subscribe: %w", err)
		}
		r.logger.Warn("ring subscriptions not confirmed by the server yet", "err", err)
	}
	// A peer that heard an earlier incarnation of this rank close sends to
	// this one again.
	r.announce(ctlOpen, nil)
	return r, nil
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

// malformedLocked counts a message dropped for its headers.
func (r *NATSRing) malformedLocked() { r.stats.Malformed++ }

func (r *NATSRing) malformed() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.malformedLocked()
}

// announce publishes a control notice to every peer (best-effort); with
// seqs, the close notice to rank t carries seqs[t], the last sequence
// number this ring gave a piece or probe to t.
func (r *NATSRing) announce(what string, seqs []uint64) {
	for to := range r.cfg.Size {
		if to == r.cfg.Rank {
			continue
		}
		m := r.ctlMsg(to, what)
		if seqs != nil {
			m.Header.Set(hSeq, strconv.FormatUint(seqs[to], 10))
		}
		if err := r.nc.PublishMsg(m); err != nil {
			r.logger.Debug("ring notice not sent", "to", to, "notice", what, "err", err)
		}
	}
}

func (r *NATSRing) ctlMsg(to int, what string) *nats.Msg {
	m := nats.NewMsg(r.subj.RingCtl(r.cfg.Job, r.cfg.Epoch, to))
	m.Header.Set(hJob, r.cfg.Job)
	m.Header.Set(hEpoch, strconv.FormatUint(r.cfg.Epoch, 10))
	m.Header.Set(hFrom, strconv.Itoa(r.cfg.Rank))
	m.Header.Set(hSess, r.session)
	m.Header.Set(hCtl, what)
	return m
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

// Send publishes f to rank `to`, piece by piece within the flow-control
// window. It returns once every piece is published (not delivered). It
// fails only for bad arguments, a closed ring or connection, or ctx; a peer
// that stops acknowledging for SendTimeout makes Send abandon the frame and
// return nil (the peer's Recv then times out and uses its Source).
func (r *NATSRing) Send(ctx context.Context, to int, f ringattn.Frame) error {
	if err := r.checkRank("send to", to); err != nil {
		return err
	}
	if f.Kind != ringattn.KindKV && f.Kind != ringattn.KindPartial {
		return fmt.Errorf("%w: frame kind %d: want KindKV or KindPartial", ErrInvalidName, f.Kind)
	}
	if f.Stride != 0 {
		return fmt.Errorf("%w: frame %+v has views (Stride %d): want contiguous tensors", ErrInvalidShape, f.Key, f.Stride)
	}
	enc := r.cfg.Encoding
	eb := enc.ElemBytes()
	var total int64
	shape := make([]string, len(f.Tensors))
	for i, t := range f.Tensors {
		total += int64(len(t) * eb)
		shape[i] = strconv.Itoa(len(t))
	}
	if len(f.Tensors) > maxFrameTensors {
		return fmt.Errorf("%w: frame %+v has %d tensors: want <= %d", ErrTooLarge, f.Key, len(f.Tensors), maxFrameTensors)
	}
	if total > r.cfg.MaxFrameBytes {
		return fmt.Errorf("%w: frame %+v is %d bytes: want <= %d (RingConfig.MaxFrameBytes)",
			ErrTooLarge, f.Key, total, r.cfg.MaxFrameBytes)
	}
	// One frame at a time per destination keeps its pieces contiguous.
	select {
	case r.sendMu[to] <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.sendMu[to] }()

	type piece struct{ tensor, off, n int }
	per := r.cfg.PieceBytes / eb
	var pieces []piece
	for ti, t := range f.Tensors {
		for off := 0; off < len(t); off += per {
			pieces = append(pieces, piece{ti, off, min(per, len(t)-off)})
		}
	}
	if len(pieces) == 0 {
		pieces = append(pieces, piece{0, 0, 0})
	}
	subject := r.subj.Ring(r.cfg.Job, r.cfg.Epoch, to)
	shapeHdr := strings.Join(shape, ",")
	var buf []byte // encoding buffer, reused across pieces
	for i, p := range pieces {
		seq, err := r.acquire(ctx, to, p.n*eb)
		if err != nil {
			switch {
			case errors.Is(err, errStalled):
				r.abandon(f.Key, to, i, len(pieces), "peer stopped acknowledging")
				return nil
			case errors.Is(err, errPeerClosed):
				r.abandon(f.Key, to, i, len(pieces), "peer ring closed")
				return nil
			}
			return err
		}
		var data []byte
		if p.n > 0 {
			src := f.Tensors[p.tensor][p.off : p.off+p.n]
			if enc == F32 && littleEndian && r.mutate == nil {
				data = f32Bytes(src) // nats.go copies it before PublishMsg returns
			} else {
				if buf == nil || r.mutate != nil {
					buf = make([]byte, per*eb)
				}
				data = buf[:p.n*eb]
				encodeTo(data, src, enc)
			}
		}
		m := nats.NewMsg(subject)
		m.Data = data
		r.header(m.Header, seq)
		m.Header.Set(hKind, strconv.Itoa(int(f.Kind)))
		m.Header.Set(hStep, strconv.Itoa(f.Step))
		m.Header.Set(hBlock, strconv.Itoa(f.Block))
		m.Header.Set(hPiece, strconv.Itoa(i))
		m.Header.Set(hCount, strconv.Itoa(len(pieces)))
		m.Header.Set(hTensor, strconv.Itoa(p.tensor))
		m.Header.Set(hOff, strconv.Itoa(p.off))
		m.Header.Set(hShape, shapeHdr)
		m.Header.Set(hEnc, enc.String())
		m.Header.Set(hCRC, strconv.FormatUint(uint64(CRC32C(data)), 16))
		padHeader(m.Header)
		if err := r.publish(m); err != nil {
			if errors.Is(err, nats.ErrConnectionClosed) {
				return fmt.Errorf("transport: ring send %+v to rank %d: %w", f.Key, to, err)
			}
			// Not sent: return its credit, give up on the frame.
			r.mu.Lock()
			r.unsentLocked(to, seq)
			r.mu.Unlock()
			r.abandon(f.Key, to, i, len(pieces), err.Error())
			return nil
		}
		r.mu.Lock()
		r.stats.PiecesSent++
		r.stats.BytesSent += int64(len(data))
		r.mu.Unlock()
	}
	r.mu.Lock()
	r.stats.FramesSent++
	r.mu.Unlock()
	return nil
}

func (r *NATSRing) header(h nats.Header, seq uint64) {
	h.Set(hJob, r.cfg.Job)
	h.Set(hEpoch, strconv.FormatUint(r.cfg.Epoch, 10))
	h.Set(hFrom, strconv.Itoa(r.cfg.Rank))
	h.Set(hSess, r.session)
	h.Set(hSeq, strconv.FormatUint(seq, 10))
}

func (r *NATSRing) publish(m *nats.Msg) error {
	if r.mutate == nil {
		return r.nc.PublishMsg(m)
	}
	for _, mm := range r.mutate(m) {
		if err := r.nc.PublishMsg(mm); err != nil {
			return err
		}
	}
	return nil
}

// abandon counts frame `key` to rank `to` as abandoned before its piece
// `piece` was published (so the peer can never complete it) and tells the
// peer, whose Recv of it then returns at once.
func (r *NATSRing) abandon(key ringattn.Key, to, piece, count int, why string) {
	r.mu.Lock()
	r.stats.FramesAbandoned++
	closed := r.links[to].peerClosed
	r.mu.Unlock()
	level := slog.LevelWarn
	if closed {
		level = slog.LevelDebug // expected: the peer finished; its close was logged
	}
	r.logger.Log(context.Background(), level, "ring frame abandoned; the peer will use the store", "to", to,
		"kind", key.Kind, "step", key.Step, "block", key.Block, "piece", piece, "count", count, "reason", why)
	m := r.ctlMsg(to, ctlAbandon)
	m.Header.Set(hKind, strconv.Itoa(int(key.Kind)))
	m.Header.Set(hStep, strconv.Itoa(key.Step))
	m.Header.Set(hBlock, strconv.Itoa(key.Block))
	if err := r.nc.PublishMsg(m); err != nil {
		r.logger.Debug("ring abandon notice not sent", "to", to, "err", err)
	}
}

var (
	errStalled    = errors.New("stalled")
	errPeerClosed = errors.New("peer ring closed")
)

// acquire waits until n more bytes fit in the window to `to` and returns
// the piece's sequence number. Before the first piece to a peer it probes
// until the peer answers (its ring may not be subscribed yet: a worker
// that starts later than its neighbour). It probes the peer while stalled
// and gives up with errStalled after SendTimeout without progress, or with
// errPeerClosed at once while the peer is known closed (after one
// rate-limited probe: a peer listening again answers it).
func (r *NATSRing) acquire(ctx context.Context, to, n int) (uint64, error) {
	start := time.Now()
	var acked uint64
	first := true
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return 0, ErrClosed
		}
		l := &r.links[to]
		if l.peerClosed {
			probe := r.probeLocked(to, time.Now())
			r.mu.Unlock()
			if probe != nil {
				if err := r.nc.PublishMsg(probe); errors.Is(err, nats.ErrConnectionClosed) {
					return 0, err
				}
			}
			return 0, errPeerClosed
		}
		if l.established && (l.bytes == 0 || l.bytes+n <= r.cfg.WindowBytes) {
			l.nextSeq++
			seq := l.nextSeq
			l.inflight = append(l.inflight, inflight{seq, n})
			l.bytes += n
			r.mu.Unlock()
			return seq, nil
		}
		if first || l.acked != acked {
			first, acked, start = false, l.acked, time.Now()
		}
		budget := r.cfg.SendTimeout
		if l.stalled {
			budget = min(budget, 2*r.cfg.ProbeInterval)
		}
		now := time.Now()
		if now.Sub(start) >= budget {
			l.stalled = true
			r.mu.Unlock()
			return 0, errStalled
		}
		var probe *nats.Msg
		if !l.established || l.stalled || now.Sub(start) >= r.cfg.ProbeInterval {
			probe = r.probeLocked(to, now)
		}
		ch := r.notify
		r.mu.Unlock()
		if probe != nil {
			if err := r.nc.PublishMsg(probe); errors.Is(err, nats.ErrConnectionClosed) {
				return 0, err
			}
		}
		wait := min(r.cfg.ProbeInterval, budget-time.Since(start))
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// probeLocked returns a probe to publish to `to`, or nil when the last one
// went out less than ProbeInterval ago.
func (r *NATSRing) probeLocked(to int, now time.Time) *nats.Msg {
	l := &r.links[to]
	if now.Sub(l.lastProbe) < r.cfg.ProbeInterval {
		return nil
	}
	l.lastProbe = now
	l.nextSeq++
	l.inflight = append(l.inflight, inflight{l.nextSeq, 0})
	probe := nats.NewMsg(r.subj.Ring(r.cfg.Job, r.cfg.Epoch, to))
	r.header(probe.Header, l.nextSeq)
	probe.Header.Set(hProbe, "1")
	r.stats.Probes++
	return probe
}

// ackLocked releases the window up to seq; earlier pieces still in flight
// were lost (the receiver acknowledges in arrival order, which is send
// order).
func (r *NATSRing) ackLocked(to int, seq uint64) {
	l := &r.links[to]
	i := 0
	for ; i < len(l.inflight) && l.inflight[i].seq <= seq; i++ {
		if l.inflight[i].seq < seq && l.inflight[i].bytes > 0 {
			r.stats.PiecesLost++
		}
		l.bytes -= l.inflight[i].bytes
	}
	if i > 0 {
		l.inflight = append(l.inflight[:0], l.inflight[i:]...)
		l.acked++
		l.established = true
		l.stalled = false
		r.broadcastLocked()
	}
}

// unsentLocked returns the credit of piece seq, which was never published.
func (r *NATSRing) unsentLocked(to int, seq uint64) {
	l := &r.links[to]
	for i, p := range l.inflight {
		if p.seq == seq {
			l.bytes -= p.bytes
			l.inflight = append(l.inflight[:i], l.inflight[i+1:]...)
			r.broadcastLocked()
			return
		}
	}
}

func (r *NATSRing) onAck(m *nats.Msg) {
	h := m.Header
	if h.Get(hSess) != r.session {
		return // an ack for an earlier incarnation of this rank
	}
	from, err1 := strconv.Atoi(h.Get(hFrom))
	seq, err2 := strconv.ParseUint(h.Get(hSeq), 10, 64)
	rsess := h.Get(hRSess)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err1 != nil || err2 != nil || from < 0 || from >= r.cfg.Size || len(rsess) > maxSessionLen {
		r.malformedLocked()
		return
	}
	if !r.closed {
		r.ackLocked(from, seq)
		r.peerLiveLocked(from, rsess)
	}
}

// peerLiveLocked records that rank `from` listens with session sess (an
// acknowledgement or an open notice): unless that session announced it
// closed, frames go to the peer again.
func (r *NATSRing) peerLiveLocked(from int, sess string) {
	l := &r.links[from]
	if sess == "" || l.gone[sess] {
		return
	}
	l.peerSess = sess
	if l.peerClosed {
		l.peerClosed = false
		r.broadcastLocked()
		r.logger.Info("peer ring listens again; sending to it", "peer", from)
	}
}

// onCtl handles control notices from peers.
func (r *NATSRing) onCtl(m *nats.Msg) {
	h := m.Header
	from, err := strconv.Atoi(h.Get(hFrom))
	sess := h.Get(hSess)
	r.mu.Lock()
	defer r.mu.Unlock()
	if h.Get(hJob) != r.cfg.Job || h.Get(hEpoch) != strconv.FormatUint(r.cfg.Epoch, 10) {
		r.stats.Foreign++
		return
	}
	if err != nil || from < 0 || from >= r.cfg.Size || from == r.cfg.Rank || sess == "" || len(sess) > maxSessionLen {
		r.malformedLocked()
		return
	}
	if r.closed {
		return
	}
	switch h.Get(hCtl) {
	case ctlOpen:
		r.peerLiveLocked(from, sess)
		if r.ended[from].sess != sess {
			r.ended[from] = senderEnd{} // a new incarnation may send again
		}
	case ctlClosed:
		l := &r.links[from]
		if l.gone == nil {
			l.gone = make(map[string]bool)
		}
		if len(l.gone) >= maxGone && !l.gone[sess] {
			for old := range l.gone { // forget one: sessions long gone rarely speak again
				delete(l.gone, old)
				break
			}
		}
		l.gone[sess] = true
		r.stats.PeersClosed++
		if seq, err := strconv.ParseUint(h.Get(hSeq), 10, 64); err == nil {
			r.ended[from] = senderEnd{sess, seq}
			r.broadcastLocked() // Recvs waiting on it re-check
		}
		// A close of an earlier incarnation (the peer answered since with
		// another session) is old news.
		if !l.peerClosed && (l.peerSess == "" || l.peerSess == sess) {
			l.peerClosed = true
			// What is in flight to it is lost: a ring listening there
			// again starts with an open window.
			for _, p := range l.inflight {
				if p.bytes > 0 {
					r.stats.PiecesLost++
				}
			}
			l.inflight, l.bytes = l.inflight[:0], 0
			r.broadcastLocked()
			r.logger.Info("peer ring closed; frames to it are abandoned", "peer", from)
		}
	case ctlAbandon:
		key, err := parseKey(h)
		if err != nil {
			r.malformedLocked()
			return
		}
		r.droppedLocked(frameKey{from, key})
	default:
		r.malformedLocked()
	}
}

// parseKey reads a frame key from hKind, hStep and hBlock: a known kind,
// a step and a block >= 0.
func parseKey(h nats.Header) (ringattn.Key, error) {
	kind, err1 := strconv.Atoi(h.Get(hKind))
	step, err2 := strconv.Atoi(h.Get(hStep))
	block, err3 := strconv.Atoi(h.Get(hBlock))
	switch {
	case err1 != nil || (ringattn.Kind(kind) != ringattn.KindKV && ringattn.Kind(kind) != ringattn.KindPartial) ||
		kind != int(ringattn.Kind(kind)):
		return ringattn.Key{}, fmt.Errorf("%w: header %s = %.64q: want %d or %d", errMalformed, hKind, h.Get(hKind),
			ringattn.KindKV, ringattn.KindPartial)
	case err2 != nil || step < 0:
		return ringattn.Key{}, fmt.Errorf("%w: header %s = %.64q: want an integer >= 0", errMalformed, hStep, h.Get(hStep))
	case err3 != nil || block < 0:
		return ringattn.Key{}, fmt.Errorf("%w: header %s = %.64q: want an integer >= 0", errMalformed, hBlock, h.Get(hBlock))
	}
	return ringattn.Key{Kind: ringattn.Kind(kind), Step: step, Block: block}, nil
}

// errMalformed is wrapped (with ErrCorrupt) by a piece whose headers are
// out of range; it is counted in RingStats.Malformed.
var errMalformed = fmt.Errorf("%w: malformed ring message", ErrCorrupt)

// droppedLocked records that frame fk's sender abandoned it: its Recv (and
// any repeated Recv) returns ringattn.ErrTimeout at once, and pieces of it
// still on their way are dropped as late. A frame already complete (or
// delivered) is kept: a sender abandons a frame before its last piece, so
// that is a copy this notice does not concern.
func (r *NATSRing) droppedLocked(fk frameKey) {
	if _, ok := r.ready[fk]; ok || r.done[fk] == delivered || r.done[fk] == dropped {
		return
	}
	r.done[fk] = dropped
	delete(r.failed, fk)
	if p := &r.peers[fk.from]; p.asm != nil && p.asm.key == fk.key {
		p.asm = nil
	}
	r.stats.AbandonedByPeer++
	r.broadcastLocked()
}

// senderEndedLocked reports whether rank `from` closed its ring and
// everything it sent this ring has arrived: a frame not here now never
// will be.
func (r *NATSRing) senderEndedLocked(from int) bool {
	e, p := r.ended[from], &r.peers[from]
	return e.sess != "" && (e.seq == 0 || (p.session == e.sess && p.handled >= e.seq))
}

// Recv returns the frame with key `key` from rank `from`. It returns an
// error wrapping ringattn.ErrTimeout when the frame has not arrived within
// RecvTimeout, or is known lost or corrupt (then also wrapping ErrCorrupt);
// at once when its sender announced it abandoned it (then also wrapping
// ErrAbandoned), or closed its ring and everything it sent has arrived.
// Copies of the frame arriving after Recv gave up (or ctx ended) are
// dropped, unless Recv asks for it again.
func (r *NATSRing) Recv(ctx context.Context, from int, key ringattn.Key) (ringattn.Frame, error) {
	if err := r.checkRank("receive from", from); err != nil {
		return ringattn.Frame{}, err
	}
	fk := frameKey{from, key}
	timer := time.NewTimer(r.cfg.RecvTimeout)
	defer timer.Stop()
	r.mu.Lock()
	if !r.closed && r.done[fk] == gaveUp {
		delete(r.done, fk) // asked again (a partial awaited for several timeouts): let it in
	}
	r.mu.Unlock()
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return ringattn.Frame{}, ErrClosed
		}
		if f, ok := r.ready[fk]; ok {
			delete(r.ready, fk)
			delete(r.failed, fk) // an earlier copy was lost: this one completed
			r.done[fk] = delivered
			r.readyB -= frameBytes(f)
			r.stats.FramesReceived++
			acks := r.releaseLocked()
			r.mu.Unlock()
			r.sendAcks(acks)
			return f, nil
		}
		if err, ok := r.failed[fk]; ok {
			delete(r.failed, fk)
			r.done[fk] = gaveUp
			r.mu.Unlock()
			return ringattn.Frame{}, fmt.Errorf("transport: ring frame %+v from rank %d: %w: %w", key, from, err, ringattn.ErrTimeout)
		}
		if r.done[fk] == dropped {
			r.mu.Unlock()
			return ringattn.Frame{}, fmt.Errorf("transport: ring frame %+v from rank %d: %w: %w", key, from, ErrAbandoned, ringattn.ErrTimeout)
		}
		if r.senderEndedLocked(from) {
			r.done[fk] = gaveUp
			r.stats.SenderClosed++
			r.mu.Unlock()
			return ringattn.Frame{}, fmt.Errorf("transport: ring frame %+v from rank %d: %w: %w", key, from, errSenderClosed, ringattn.ErrTimeout)
		}
		ch := r.notify
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			// The caller stopped waiting (a worker's short wait on a
			// stalled peer reads the store): a late copy must not sit in
			// the buffer for good.
			r.mu.Lock()
			if _, ok := r.ready[fk]; !ok && !r.closed && r.done[fk] == 0 {
				r.done[fk] = gaveUp
			}
			r.mu.Unlock()
			return ringattn.Frame{}, ctx.Err()
		case <-timer.C:
			r.mu.Lock()
			_, ready := r.ready[fk]
			_, failed := r.failed[fk]
			if ready || failed || r.done[fk] == dropped || r.closed || r.senderEndedLocked(from) {
				r.mu.Unlock()
				continue // settled meanwhile: the loop reports it
			}
			// The frame is arriving right now: wait while pieces keep coming.
			if a := r.peers[from].asm; a != nil && a.key == key {
				if idle := time.Since(a.lastPiece); idle < r.cfg.RecvTimeout {
					timer.Reset(r.cfg.RecvTimeout - idle)
					r.mu.Unlock()
					continue
				}
			}
			r.done[fk] = gaveUp
			r.stats.Timeouts++
			r.mu.Unlock()
			return ringattn.Frame{}, fmt.Errorf("transport: ring frame %+v from rank %d not received within %v: %w",
				key, from, r.cfg.RecvTimeout, ringattn.ErrTimeout)
		}
	}
}

func frameBytes(f ringattn.Frame) int64 {
	var n int64
	for _, t := range f.Tensors {
		n += int64(len(t)) * 4
	}
	return n
}

// releaseLocked returns the withheld acks that now fit the buffer.
func (r *NATSRing) releaseLocked() []pendingAck {
	var acks []pendingAck
	for from := range r.peers {
		p := &r.peers[from]
		for len(p.withheld) > 0 && r.readyB <= int64(r.cfg.BufferBytes) {
			acks = append(acks, pendingAck{from, p.session, p.withheld[0]})
			p.withheld = p.withheld[1:]
		}
	}
	return acks
}

func (r *NATSRing) sendAcks(acks []pendingAck) {
	for _, a := range acks {
		m := nats.NewMsg(r.subj.RingAck(r.cfg.Job, r.cfg.Epoch, a.to))
		m.Header.Set(hFrom, strconv.Itoa(r.cfg.Rank))
		m.Header.Set(hSess, a.session)
		m.Header.Set(hRSess, r.session)
		m.Header.Set(hSeq, strconv.FormatUint(a.seq, 10))
		if err := r.nc.PublishMsg(m); err != nil {
			r.logger.Debug("ring ack not sent", "to", a.to, "err", err)
		}
	}
}

// failLocked records that frame fk cannot be completed.
func (r *NATSRing) failLocked(fk frameKey, err error) {
	if r.done[fk] != 0 {
		return
	}
	if _, ok := r.ready[fk]; ok {
		return
	}
	if _, ok := r.failed[fk]; ok {
		return
	}
	r.stats.Incomplete++
	if len(r.failed) >= maxFailed {
		// Lost frames nobody asks for (forged pieces?): the Recv of this
		// one times out instead of failing at once.
		r.logger.Warn("ring frame lost; too many lost frames pending to record it", "from", fk.from,
			"kind", fk.key.Kind, "step", fk.key.Step, "block", fk.key.Block, "err", err)
		return
	}
	r.failed[fk] = err
	r.broadcastLocked()
	r.logger.Warn("ring frame lost", "from", fk.from, "kind", fk.key.Kind, "step", fk.key.Step,
		"block", fk.key.Block, "err", err)
}

var (
	errIncomplete   = errors.New("pieces lost in transit")
	errSenderClosed = errors.New("its sender's ring closed before sending it")
)

// onPiece runs on the subscription's goroutine for every piece.
func (r *NATSRing) onPiece(m *nats.Msg) {
	h := m.Header
	if h.Get(hJob) != r.cfg.Job || h.Get(hEpoch) != strconv.FormatUint(r.cfg.Epoch, 10) {
		r.mu.Lock()
		r.stats.Foreign++
		r.mu.Unlock()
		return
	}
	from, err1 := strconv.Atoi(h.Get(hFrom))
	seq, err2 := strconv.ParseUint(h.Get(hSeq), 10, 64)
	sess := h.Get(hSess)
	if err1 != nil || err2 != nil || from < 0 || from >= r.cfg.Size || sess == "" || len(sess) > maxSessionLen {
		r.malformed()
		return
	}
	acks, data := r.admit(m, from, sess, seq)
	// Acknowledge before copying the piece: the sender's window reopens
	// while this one is decoded.
	if len(acks) > 0 {
		r.sendAcks(acks)
	}
	if data {
		r.assemble(from, m)
	}
	r.handled(from, sess, seq)
}

func (r *NATSRing) admit(m *nats.Msg, from int, sess string, seq uint64) (acks []pendingAck, data bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.admitLocked(m, from, sess, seq)
}

// handled records that piece seq of sess from rank `from` was dealt with.
func (r *NATSRing) handled(from int, sess string, seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := &r.peers[from]; p.session == sess && seq > p.handled {
		p.handled = seq
		if e := r.ended[from]; e.sess == sess && seq >= e.seq {
			r.broadcastLocked() // the sender's last piece: Recvs waiting on it re-check
		}
	}
}

// admitLocked applies the per-link sequence: duplicates are dropped, a gap
// fails the frame in progress, and the piece is acknowledged (now, or once
// the buffer has room). It reports whether m carries frame data.
func (r *NATSRing) admitLocked(m *nats.Msg, from int, sess string, seq uint64) (acks []pendingAck, data bool) {
	if r.closed {
		return nil, false
	}
	p := &r.peers[from]
	if p.session != sess {
		if p.asm != nil {
			r.failLocked(frameKey{from, p.asm.key}, errIncomplete)
		}
		*p = peerState{session: sess}
	}
	if seq <= p.lastSeq {
		r.stats.Duplicates++
		return nil, false
	}
	gap := seq > p.lastSeq+1
	p.lastSeq = seq
	if e := &r.ended[from]; e.sess != "" && e.sess != sess && !r.links[from].gone[sess] {
		*e = senderEnd{} // a live incarnation sends again
	}
	if gap && p.asm != nil {
		r.failLocked(frameKey{from, p.asm.key}, errIncomplete)
		p.asm = nil
	}
	// Acknowledge in arrival order, withholding while the buffer is full.
	if len(p.withheld) > 0 || r.readyB > int64(r.cfg.BufferBytes) {
		p.withheld = append(p.withheld, seq)
	} else {
		acks = []pendingAck{{from, sess, seq}}
	}
	if m.Header.Get(hProbe) != "" {
		return acks, false
	}
	r.stats.PiecesReceived++
	r.stats.BytesReceived += int64(len(m.Data))
	return acks, true
}

// assemble adds a data piece to its sender's frame in progress: headers and
// state under the lock, CRC32C and decoding outside it (only this
// subscription's goroutine touches a frame before it completes).
func (r *NATSRing) assemble(from int, m *nats.Msg) {
	a, at, enc, err := r.place(from, m)
	if a == nil && err == nil {
		return // dropped: a copy, a late frame, the rest of a lost one, or closed
	}
	if err == nil {
		err = verifyPiece(m, a, at, enc)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	p := &r.peers[from]
	if err == nil {
		a.next++
		a.lastPiece = time.Now()
		a.advance(at.n)
		if a.next == a.count && a.curT != len(a.lens) {
			err = fmt.Errorf("%w: frame of %d pieces ended before its tensors were filled", errMalformed, a.count)
		}
	}
	if err != nil {
		if errors.Is(err, errMalformed) {
			r.stats.Malformed++
		} else {
			r.stats.Corrupt++
		}
		if p.asm != nil {
			r.failLocked(frameKey{from, p.asm.key}, err)
			p.asm = nil
		}
		return
	}
	if a.next < a.count {
		return
	}
	p.asm = nil
	for i, t := range a.tensors {
		if t == nil { // no piece: an empty tensor
			a.tensors[i] = make([]float32, a.lens[i])
		}
	}
	fk := frameKey{from, a.key}
	if r.done[fk] != 0 {
		r.stats.Late++
		return
	}
	r.ready[fk] = ringattn.Frame{Key: a.key, Tensors: a.tensors}
	r.readyB += a.bytes
	r.stats.PeakBufferedBytes = max(r.stats.PeakBufferedBytes, r.readyB)
	r.broadcastLocked()
}

// place runs placeLocked under the lock; nothing for a closed ring.
func (r *NATSRing) place(from int, m *nats.Msg) (*assembly, piecePlace, Encoding, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, piecePlace{}, 0, nil
	}
	return r.placeLocked(&r.peers[from], from, m)
}

// advance moves the assembly's cursor past n values and any empty
// tensors after them.
func (a *assembly) advance(n int) {
	a.curOff += n
	for a.curT < len(a.lens) && a.curOff == a.lens[a.curT] {
		a.curT++
		a.curOff = 0
	}
}

// piecePlace is where a piece goes: values [off, off+n) of tensor t.
type piecePlace struct{ t, off, n int }

// payloadAlign is the alignment padHeader gives a piece's payload within
// the buffer a receiver's nats.go allocates for the message (header, then
// payload): a cache line, so an F32 piece is adopted as a tensor in place
// (bytesF32 needs 4) and the kernels read it from aligned rows.
const payloadAlign = 64

// padHeader adds a Ra-Pad header sized so that the header's wire length
// (as nats.go writes it: "NATS/1.0\r\n", "Key: value\r\n" per value, "\r\n")
// is a multiple of payloadAlign.
func padHeader(h nats.Header) {
	size := len("NATS/1.0\r\n") + 2
	for k, vs := range h {
		if k == hPad {
			continue
		}
		for _, v := range vs {
			size += len(k) + len(v) + 4
		}
	}
	size += len(hPad) + 4 + 1 // the pad header with a 1-byte value
	h.Set(hPad, strings.Repeat("x", 1+(payloadAlign-size%payloadAlign)%payloadAlign))
}

// verifyPiece checks m's CRC32C and decodes it into its place in a: a
// piece that is a whole F32 tensor becomes that tensor (nats.go hands each
// message its own payload), others are copied into it.
func verifyPiece(m *nats.Msg, a *assembly, at piecePlace, enc Encoding) error {
	h := m.Header
	want, err := strconv.ParseUint(h.Get(hCRC), 16, 32)
	if err != nil {
		return fmt.Errorf("%w: piece header %s = %.64q: want up to 8 hex digits", errMalformed, hCRC, h.Get(hCRC))
	}
	if got := CRC32C(m.Data); got != uint32(want) {
		return fmt.Errorf("%w: piece %s/%s CRC32C %08x, header says %08x", ErrCorrupt,
			h.Get(hPiece), h.Get(hCount), got, want)
	}
	if at.n == 0 {
		return nil
	}
	if enc == F32 && at.off == 0 && at.n == a.lens[at.t] && a.tensors[at.t] == nil {
		if v, ok := bytesF32(m.Data); ok {
			a.tensors[at.t] = v
			return nil
		}
	}
	if a.tensors[at.t] == nil {
		a.tensors[at.t] = make([]float32, a.lens[at.t])
	}
	decodeTo(a.tensors[at.t][at.off:at.off+at.n], m.Data, enc)
	return nil
}

// placeLocked finds where piece m goes in peer p's frame in progress,
// starting a frame at piece 0. It returns a nil assembly (and nil error)
// for pieces to drop silently, an error for malformed ones. Every header
// is bounded before use: the headers come from the network.
func (r *NATSRing) placeLocked(p *peerState, from int, m *nats.Msg) (*assembly, piecePlace, Encoding, error) {
	h := m.Header
	key, err := parseKey(h)
	if err != nil {
		return nil, piecePlace{}, 0, err
	}
	var ints [4]int
	for i, k := range []string{hPiece, hCount, hTensor, hOff} {
		v, err := strconv.Atoi(h.Get(k))
		if err != nil || v < 0 {
			return nil, piecePlace{}, 0, fmt.Errorf("%w: piece header %s = %.64q: want an integer >= 0", errMalformed, k, h.Get(k))
		}
		ints[i] = v
	}
	piece, count, tensor, off := ints[0], ints[1], ints[2], ints[3]
	if count < 1 || piece >= count {
		return nil, piecePlace{}, 0, fmt.Errorf("%w: piece %d of %d: want 0 <= piece < count", errMalformed, piece, count)
	}
	fk := frameKey{from, key}
	if piece == 0 {
		if p.asm != nil {
			r.failLocked(frameKey{from, p.asm.key}, errIncomplete)
			p.asm = nil
		}
		if d := r.done[fk]; d == gaveUp || d == dropped {
			r.stats.Late++
			return nil, piecePlace{}, 0, nil // arrived after Recv or its sender gave up on it
		}
		if _, ok := r.ready[fk]; ok || r.done[fk] == delivered {
			r.stats.Duplicates++
			return nil, piecePlace{}, 0, nil // a copy of a frame we have
		}
		a := &assembly{key: key, count: count}
		elems, err := r.parseShape(a, h.Get(hShape))
		if err != nil {
			return nil, piecePlace{}, 0, err
		}
		// Every piece carries a value, but an empty frame's only piece.
		if int64(count) > max(1, elems) {
			return nil, piecePlace{}, 0, fmt.Errorf("%w: %d pieces for a frame of %d values", errMalformed, count, elems)
		}
		a.advance(0)
		p.asm = a
	} else if p.asm == nil || p.asm.key != key || p.asm.next != piece || p.asm.count != count {
		if p.asm != nil {
			r.failLocked(frameKey{from, p.asm.key}, errIncomplete)
			p.asm = nil
		}
		if _, ok := r.ready[fk]; !ok && r.done[fk] == 0 {
			r.failLocked(fk, errIncomplete)
		}
		return nil, piecePlace{}, 0, nil
	}
	a := p.asm
	enc, err := ParseEncoding(h.Get(hEnc))
	if err != nil {
		return nil, piecePlace{}, 0, fmt.Errorf("%w: piece header %s = %.64q: want f32 or bf16", errMalformed, hEnc, h.Get(hEnc))
	}
	eb := enc.ElemBytes()
	n := len(m.Data) / eb
	// Pieces come in order: the next values of the current tensor (an
	// empty piece only for a frame without values).
	if len(m.Data)%eb != 0 ||
		(n == 0 && a.curT != len(a.lens)) ||
		(n > 0 && (a.curT >= len(a.lens) || tensor != a.curT || off != a.curOff || n > a.lens[tensor]-off)) {
		return nil, piecePlace{}, 0, fmt.Errorf("%w: piece %d/%d of %d bytes at tensor %d offset %d: want whole %v values at tensor %d offset %d",
			errMalformed, piece, count, len(m.Data), tensor, off, enc, a.curT, a.curOff)
	}
	return a, piecePlace{tensor, off, n}, enc, nil
}

// parseShape reads hShape (the frame's tensor lengths, comma-separated)
// into a, bounding the tensors by maxFrameTensors and their float32 bytes
// by MaxFrameBytes before anything is sized by them. It returns the
// frame's value count.
func (r *NATSRing) parseShape(a *assembly, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if c := strings.Count(s, ",") + 1; c > maxFrameTensors {
		return 0, fmt.Errorf("%w: frame of %d tensors, want <= %d", errMalformed, c, maxFrameTensors)
	}
	a.lens = make([]int, 0, strings.Count(s, ",")+1)
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%w: piece header %s = %.64q: want tensor lengths >= 0", errMalformed, hShape, s)
		}
		if int64(n) > (r.cfg.MaxFrameBytes-a.bytes)/4 {
			return 0, fmt.Errorf("%w: %w: frame of more than %d bytes (RingConfig.MaxFrameBytes)", errMalformed, ErrTooLarge, r.cfg.MaxFrameBytes)
		}
		a.bytes += int64(n) * 4
		a.lens = append(a.lens, n)
	}
	a.tensors = make([][]float32, len(a.lens))
	return a.bytes / 4, nil
}

var _ ringattn.Ring = (*NATSRing)(nil)
