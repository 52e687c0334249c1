package transport

import (
	"strconv"

	"github.com/nats-io/nats.go"
)

// Control notices (hCtl values).
const (
	ctlOpen    = "open"    // the sender's ring listens (a new session)
	ctlClosed  = "closed"  // the sender's ring closed: send it nothing more
	ctlAbandon = "abandon" // the sender gave up on the frame named by hKind/hStep/hBlock
)

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
	m := nats.NewMsg(r.subj.RingCtlFrom(r.sender, r.cfg.Job, r.cfg.Epoch, to))
	m.Header.Set(hJob, r.cfg.Job)
	m.Header.Set(hEpoch, strconv.FormatUint(r.cfg.Epoch, 10))
	m.Header.Set(hFrom, strconv.Itoa(r.cfg.Rank))
	m.Header.Set(hSess, r.session)
	m.Header.Set(hCtl, what)
	return m
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
	if !r.fromWorkerLocked(m, from) {
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
		r.peerClosedLocked(from, sess, h.Get(hSeq))
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

// peerClosedLocked handles rank from's notice that its ring (session
// sess) closed, having sent this ring nothing after sequence number seq
// (unparsable: unknown).
func (r *NATSRing) peerClosedLocked(from int, sess, seq string) {
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
	if seq, err := strconv.ParseUint(seq, 10, 64); err == nil {
		r.ended[from] = senderEnd{sess, seq}
		r.broadcastLocked() // Recvs waiting on it re-check
	}
	// A close of an earlier incarnation (the peer answered since with
	// another session) is old news.
	if l.peerClosed || (l.peerSess != "" && l.peerSess != sess) {
		return
	}
	l.peerClosed = true
	// What is in flight to it is lost: a ring listening there again
	// starts with an open window.
	for _, p := range l.inflight {
		if p.bytes > 0 {
			r.stats.PiecesLost++
		}
	}
	l.inflight, l.bytes = l.inflight[:0], 0
	r.broadcastLocked()
	r.logger.Info("peer ring closed; frames to it are abandoned", "peer", from)
}

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
