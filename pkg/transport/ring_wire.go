package transport

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/ringattn"
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

// parseKey reads a frame key from hKind, hStep and hBlock: a known kind,
// a step and a block >= 0.
func parseKey(h nats.Header) (ringattn.Key, error) {
	kind, err1 := strconv.Atoi(h.Get(hKind))
	step, err2 := strconv.Atoi(h.Get(hStep))
	block, err3 := strconv.Atoi(h.Get(hBlock))
	switch {
	case err1 != nil || kind != int(ringattn.Kind(kind)) || !ringattn.Kind(kind).Known():
		return ringattn.Key{}, fmt.Errorf("%w: header %s = %.64q: want %d..%d", errMalformed, hKind, h.Get(hKind),
			ringattn.KindKV, ringattn.MaxKind)
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
	key, ph, err := parsePieceHeader(h)
	if err != nil {
		return nil, piecePlace{}, 0, err
	}
	fk := frameKey{from, key}
	if ph.piece == 0 {
		if ok, err := r.startFrameLocked(p, fk, ph.count, h.Get(hShape)); !ok || err != nil {
			return nil, piecePlace{}, 0, err
		}
	} else if p.asm == nil || p.asm.key != key || p.asm.next != ph.piece || p.asm.count != ph.count {
		if p.asm != nil {
			r.failLocked(frameKey{from, p.asm.key}, errIncomplete)
			p.asm = nil
		}
		if _, ok := r.ready[fk]; !ok && r.done[fk] == 0 {
			r.failLocked(fk, errIncomplete)
		}
		return nil, piecePlace{}, 0, nil
	}
	enc, err := ParseEncoding(h.Get(hEnc))
	if err != nil {
		return nil, piecePlace{}, 0, fmt.Errorf("%w: piece header %s = %.64q: want f32 or bf16", errMalformed, hEnc, h.Get(hEnc))
	}
	at, err := p.asm.fit(ph, len(m.Data), enc)
	if err != nil {
		return nil, piecePlace{}, 0, err
	}
	return p.asm, at, enc, nil
}

// pieceHeader is a piece's place as its headers give it.
type pieceHeader struct{ piece, count, tensor, off int }

// parsePieceHeader reads a piece's frame key and place: integers >= 0,
// piece < count.
func parsePieceHeader(h nats.Header) (ringattn.Key, pieceHeader, error) {
	key, err := parseKey(h)
	if err != nil {
		return ringattn.Key{}, pieceHeader{}, err
	}
	var ints [4]int
	for i, k := range [...]string{hPiece, hCount, hTensor, hOff} {
		v, err := strconv.Atoi(h.Get(k))
		if err != nil || v < 0 {
			return ringattn.Key{}, pieceHeader{}, fmt.Errorf("%w: piece header %s = %.64q: want an integer >= 0", errMalformed, k, h.Get(k))
		}
		ints[i] = v
	}
	ph := pieceHeader{ints[0], ints[1], ints[2], ints[3]}
	if ph.count < 1 || ph.piece >= ph.count {
		return ringattn.Key{}, pieceHeader{}, fmt.Errorf("%w: piece %d of %d: want 0 <= piece < count", errMalformed, ph.piece, ph.count)
	}
	return key, ph, nil
}

// startFrameLocked starts frame fk of count pieces (shape: its hShape) at
// its piece 0, failing the frame peer p had in progress. ok is false (and
// err nil) for a frame to drop silently: late, or a copy of one we have.
func (r *NATSRing) startFrameLocked(p *peerState, fk frameKey, count int, shape string) (ok bool, err error) {
	if p.asm != nil {
		r.failLocked(frameKey{fk.from, p.asm.key}, errIncomplete)
		p.asm = nil
	}
	if d := r.done[fk]; d == gaveUp || d == dropped {
		r.stats.Late++
		return false, nil // arrived after Recv or its sender gave up on it
	}
	if _, ok := r.ready[fk]; ok || r.done[fk] == delivered {
		r.stats.Duplicates++
		return false, nil // a copy of a frame we have
	}
	a := &assembly{key: fk.key, count: count}
	elems, err := r.parseShape(a, shape)
	if err != nil {
		return false, err
	}
	// Every piece carries a value, but an empty frame's only piece.
	if int64(count) > max(1, elems) {
		return false, fmt.Errorf("%w: %d pieces for a frame of %d values", errMalformed, count, elems)
	}
	a.advance(0)
	p.asm = a
	return true, nil
}

// fit checks that a piece of size bytes in encoding enc, placed by ph, is
// the assembly's next values: pieces come in order, the next values of
// the current tensor (an empty piece only for a frame without values).
func (a *assembly) fit(ph pieceHeader, size int, enc Encoding) (piecePlace, error) {
	eb := enc.ElemBytes()
	n := size / eb
	if size%eb != 0 ||
		(n == 0 && a.curT != len(a.lens)) ||
		(n > 0 && (a.curT >= len(a.lens) || ph.tensor != a.curT || ph.off != a.curOff || n > a.lens[ph.tensor]-ph.off)) {
		return piecePlace{}, fmt.Errorf("%w: piece %d/%d of %d bytes at tensor %d offset %d: want whole %v values at tensor %d offset %d",
			errMalformed, ph.piece, ph.count, size, ph.tensor, ph.off, enc, a.curT, a.curOff)
	}
	return piecePlace{ph.tensor, ph.off, n}, nil
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
