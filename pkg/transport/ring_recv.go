package transport

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/ringattn"
)

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
		f, acks, settled, err := r.takeLocked(fk)
		ch := r.notify
		r.mu.Unlock()
		if settled {
			r.sendAcks(acks)
			return f, err
		}
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
			if err := r.recvTimedOut(fk, timer); err != nil {
				return ringattn.Frame{}, err
			}
		}
	}
}

// takeLocked settles Recv of fk if it can: the frame (and the withheld
// acknowledgements its leaving the buffer releases), or why it will not
// come. settled is false while Recv should wait.
func (r *NATSRing) takeLocked(fk frameKey) (f ringattn.Frame, acks []pendingAck, settled bool, err error) {
	if r.closed {
		return ringattn.Frame{}, nil, true, ErrClosed
	}
	if f, ok := r.ready[fk]; ok {
		delete(r.ready, fk)
		delete(r.failed, fk) // an earlier copy was lost: this one completed
		r.done[fk] = delivered
		r.readyB -= frameBytes(f)
		r.stats.FramesReceived++
		return f, r.releaseLocked(), true, nil
	}
	if err, ok := r.failed[fk]; ok {
		delete(r.failed, fk)
		r.done[fk] = gaveUp
		return ringattn.Frame{}, nil, true, fmt.Errorf("transport: ring frame %+v from rank %d: %w: %w", fk.key, fk.from, err, ringattn.ErrTimeout)
	}
	if r.done[fk] == dropped {
		return ringattn.Frame{}, nil, true, fmt.Errorf("transport: ring frame %+v from rank %d: %w: %w", fk.key, fk.from, ErrAbandoned, ringattn.ErrTimeout)
	}
	if r.senderEndedLocked(fk.from) {
		r.done[fk] = gaveUp
		r.stats.SenderClosed++
		return ringattn.Frame{}, nil, true, fmt.Errorf("transport: ring frame %+v from rank %d: %w: %w", fk.key, fk.from, errSenderClosed, ringattn.ErrTimeout)
	}
	return ringattn.Frame{}, nil, false, nil
}

// recvTimedOut handles the expiry of Recv's timer: nil when Recv should
// look again (the frame settled meanwhile, or its pieces are arriving and
// the timer was extended), else the timeout error.
func (r *NATSRing) recvTimedOut(fk frameKey, timer *time.Timer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ready := r.ready[fk]
	_, failed := r.failed[fk]
	if ready || failed || r.done[fk] == dropped || r.closed || r.senderEndedLocked(fk.from) {
		return nil // settled meanwhile: the loop reports it
	}
	// The frame is arriving right now: wait while pieces keep coming.
	if a := r.peers[fk.from].asm; a != nil && a.key == fk.key {
		if idle := time.Since(a.lastPiece); idle < r.cfg.RecvTimeout {
			timer.Reset(r.cfg.RecvTimeout - idle)
			return nil
		}
	}
	r.done[fk] = gaveUp
	r.stats.Timeouts++
	return fmt.Errorf("transport: ring frame %+v from rank %d not received within %v: %w",
		fk.key, fk.from, r.cfg.RecvTimeout, ringattn.ErrTimeout)
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
		m := nats.NewMsg(r.subj.RingAckFrom(r.sender, r.cfg.Job, r.cfg.Epoch, a.to))
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
	if !r.fromWorker(m, from) {
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
	if err == nil {
		a.next++
		a.lastPiece = time.Now()
		a.advance(at.n)
		if a.next == a.count && a.curT != len(a.lens) {
			err = fmt.Errorf("%w: frame of %d pieces ended before its tensors were filled", errMalformed, a.count)
		}
	}
	switch {
	case err != nil:
		r.pieceFailedLocked(from, err)
	case a.next == a.count:
		r.completeLocked(from, a)
	}
}

// pieceFailedLocked counts a malformed or corrupt piece from rank `from`
// and fails the frame it belonged to.
func (r *NATSRing) pieceFailedLocked(from int, err error) {
	if errors.Is(err, errMalformed) {
		r.stats.Malformed++
	} else {
		r.stats.Corrupt++
	}
	if p := &r.peers[from]; p.asm != nil {
		r.failLocked(frameKey{from, p.asm.key}, err)
		p.asm = nil
	}
}

// completeLocked moves rank from's frame a, whose last piece arrived,
// into the buffer for Recv (or drops it as late).
func (r *NATSRing) completeLocked(from int, a *assembly) {
	r.peers[from].asm = nil
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
