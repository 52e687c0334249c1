package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/ringattn"
)

// Send publishes f to rank `to`, piece by piece within the flow-control
// window. It returns once every piece is published (not delivered). It
// fails only for bad arguments, a closed ring or connection, or ctx; a peer
// that stops acknowledging for SendTimeout makes Send abandon the frame and
// return nil (the peer's Recv then times out and uses its Source).
func (r *NATSRing) Send(ctx context.Context, to int, f ringattn.Frame) error {
	shape, err := r.checkSend(to, f)
	if err != nil {
		return err
	}
	// One frame at a time per destination keeps its pieces contiguous.
	select {
	case r.sendMu[to] <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.sendMu[to] }()

	per := r.cfg.PieceBytes / r.cfg.Encoding.ElemBytes()
	pieces := cutPieces(f.Tensors, per)
	out := outFrame{
		to:      to,
		f:       f,
		subject: r.subj.RingFrom(r.sender, r.cfg.Job, r.cfg.Epoch, to),
		shape:   shape,
		count:   len(pieces),
		per:     per,
	}
	for i, p := range pieces {
		if stop, err := r.sendPiece(ctx, &out, i, p); stop {
			return err
		}
	}
	r.mu.Lock()
	r.stats.FramesSent++
	r.mu.Unlock()
	return nil
}

// checkSend validates Send's arguments before anything is sent or locked
// and returns the frame's hShape header (its tensor lengths).
func (r *NATSRing) checkSend(to int, f ringattn.Frame) (string, error) {
	if err := r.checkRank("send to", to); err != nil {
		return "", err
	}
	if !f.Kind.Known() {
		return "", fmt.Errorf("%w: frame kind %d: want %d..%d (KindKV..KindDQ)", ErrInvalidName, f.Kind, ringattn.KindKV, ringattn.MaxKind)
	}
	if f.Stride != 0 {
		return "", fmt.Errorf("%w: frame %+v has views (Stride %d): want contiguous tensors", ErrInvalidShape, f.Key, f.Stride)
	}
	eb := r.cfg.Encoding.ElemBytes()
	var total int64
	shape := make([]string, len(f.Tensors))
	for i, t := range f.Tensors {
		total += int64(len(t) * eb)
		shape[i] = strconv.Itoa(len(t))
	}
	if len(f.Tensors) > maxFrameTensors {
		return "", fmt.Errorf("%w: frame %+v has %d tensors: want <= %d", ErrTooLarge, f.Key, len(f.Tensors), maxFrameTensors)
	}
	if total > r.cfg.MaxFrameBytes {
		return "", fmt.Errorf("%w: frame %+v is %d bytes: want <= %d (RingConfig.MaxFrameBytes)",
			ErrTooLarge, f.Key, total, r.cfg.MaxFrameBytes)
	}
	return strings.Join(shape, ","), nil
}

// piece is one message of a frame: values [off, off+n) of tensor `tensor`.
type piece struct{ tensor, off, n int }

// cutPieces cuts tensors into pieces of at most per values, tensor by
// tensor; a frame without values is one empty piece.
func cutPieces(tensors [][]float32, per int) []piece {
	var pieces []piece
	for ti, t := range tensors {
		for off := 0; off < len(t); off += per {
			pieces = append(pieces, piece{ti, off, min(per, len(t)-off)})
		}
	}
	if len(pieces) == 0 {
		pieces = append(pieces, piece{0, 0, 0})
	}
	return pieces
}

// outFrame is a frame Send is sending: what its pieces share.
type outFrame struct {
	to      int
	f       ringattn.Frame
	subject string
	shape   string // hShape
	count   int    // pieces
	per     int    // values per full piece
	buf     []byte // encoding buffer, reused across pieces
}

// sendPiece waits for window room and publishes piece i of out. stop is
// true when Send is over: with nil error when the frame was abandoned
// (the peer stopped acknowledging, closed, or the publish failed), with
// the error for a closed ring or connection or ctx.
func (r *NATSRing) sendPiece(ctx context.Context, out *outFrame, i int, p piece) (stop bool, err error) {
	eb := r.cfg.Encoding.ElemBytes()
	seq, err := r.acquire(ctx, out.to, p.n*eb)
	if err != nil {
		switch {
		case errors.Is(err, errStalled):
			r.abandon(out.f.Key, out.to, i, out.count, "peer stopped acknowledging")
			return true, nil
		case errors.Is(err, errPeerClosed):
			r.abandon(out.f.Key, out.to, i, out.count, "peer ring closed")
			return true, nil
		}
		return true, err
	}
	data := r.pieceData(out, p)
	m := nats.NewMsg(out.subject)
	m.Data = data
	r.pieceHeader(m.Header, out, seq, i, p, data)
	if err := r.publish(m); err != nil {
		if errors.Is(err, nats.ErrConnectionClosed) {
			return true, fmt.Errorf("transport: ring send %+v to rank %d: %w", out.f.Key, out.to, err)
		}
		// Not sent: return its credit, give up on the frame.
		r.mu.Lock()
		r.unsentLocked(out.to, seq)
		r.mu.Unlock()
		r.abandon(out.f.Key, out.to, i, out.count, err.Error())
		return true, nil
	}
	r.mu.Lock()
	r.stats.PiecesSent++
	r.stats.BytesSent += int64(len(data))
	r.mu.Unlock()
	return false, nil
}

// pieceData returns piece p's payload: an F32 piece on a little-endian
// machine is the tensor's own memory (nats.go copies it before PublishMsg
// returns), others are encoded into out.buf (a fresh buffer per piece when
// a test mutates messages, since those may be kept).
func (r *NATSRing) pieceData(out *outFrame, p piece) []byte {
	if p.n == 0 {
		return nil
	}
	enc := r.cfg.Encoding
	src := out.f.Tensors[p.tensor][p.off : p.off+p.n]
	if enc == F32 && littleEndian && r.mutate == nil {
		return f32Bytes(src)
	}
	eb := enc.ElemBytes()
	if out.buf == nil || r.mutate != nil {
		out.buf = make([]byte, out.per*eb)
	}
	data := out.buf[:p.n*eb]
	encodeTo(data, src, enc)
	return data
}

// pieceHeader fills the headers of piece i (sequence number seq) of out.
func (r *NATSRing) pieceHeader(h nats.Header, out *outFrame, seq uint64, i int, p piece, data []byte) {
	r.header(h, seq)
	h.Set(hKind, strconv.Itoa(int(out.f.Kind)))
	h.Set(hStep, strconv.Itoa(out.f.Step))
	h.Set(hBlock, strconv.Itoa(out.f.Block))
	h.Set(hPiece, strconv.Itoa(i))
	h.Set(hCount, strconv.Itoa(out.count))
	h.Set(hTensor, strconv.Itoa(p.tensor))
	h.Set(hOff, strconv.Itoa(p.off))
	h.Set(hShape, out.shape)
	h.Set(hEnc, r.cfg.Encoding.String())
	h.Set(hCRC, strconv.FormatUint(uint64(CRC32C(data)), 16))
	padHeader(h)
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
	w := windowWait{first: true}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		r.mu.Lock()
		seq, probe, ch, err := r.acquireLocked(to, n, &w)
		r.mu.Unlock()
		if probe != nil {
			if perr := r.nc.PublishMsg(probe); errors.Is(perr, nats.ErrConnectionClosed) {
				return 0, perr
			}
		}
		if err != nil || seq != 0 {
			return seq, err
		}
		wait := min(r.cfg.ProbeInterval, w.budget-time.Since(w.start))
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// windowWait is acquire's progress: since when it has waited without an
// acknowledgement from the peer, and how long it may.
type windowWait struct {
	first  bool
	acked  uint64
	start  time.Time
	budget time.Duration
}

// acquireLocked is one look at the window to `to`: a sequence number (>
// 0) when n bytes fit, else a probe to publish (or nil), the channel to
// wait on, and an error when acquire gives up.
func (r *NATSRing) acquireLocked(to, n int, w *windowWait) (seq uint64, probe *nats.Msg, ch chan struct{}, err error) {
	if r.closed {
		return 0, nil, nil, ErrClosed
	}
	l := &r.links[to]
	if l.peerClosed {
		return 0, r.probeLocked(to, time.Now()), nil, errPeerClosed
	}
	if l.established && (l.bytes == 0 || l.bytes+n <= r.cfg.WindowBytes) {
		l.nextSeq++
		l.inflight = append(l.inflight, inflight{l.nextSeq, n})
		l.bytes += n
		return l.nextSeq, nil, nil, nil
	}
	if w.first || l.acked != w.acked {
		w.first, w.acked, w.start = false, l.acked, time.Now()
	}
	w.budget = r.cfg.SendTimeout
	if l.stalled {
		w.budget = min(w.budget, 2*r.cfg.ProbeInterval)
	}
	now := time.Now()
	if now.Sub(w.start) >= w.budget {
		l.stalled = true
		return 0, nil, nil, errStalled
	}
	if !l.established || l.stalled || now.Sub(w.start) >= r.cfg.ProbeInterval {
		probe = r.probeLocked(to, now)
	}
	return 0, probe, r.notify, nil
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
	probe := nats.NewMsg(r.subj.RingFrom(r.sender, r.cfg.Job, r.cfg.Epoch, to))
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
	if !r.fromWorkerLocked(m, from) {
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
