package transport

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Reading a range of heads of a block (GetHeads).
//
// A block of a [B, H, N, D] tensor is [B, H, len, D]: B·H slabs of len·D
// values, slab i being batch i / H, head i % H. PutTensors writes every
// block with its slab layout in the object's metadata — the slab count
// (metaSlabs) and the CRC32C of each slab's encoded bytes, 8 hex digits
// each (metaSlabCRC) — in chunks aligned to the slabs when a slab fits a
// chunk (slabChunk). A reader of heads [h0, h1) then fetches only the
// chunks holding them (by stream sequence, found with a headers-only scan
// of the object's chunk subject) and verifies each slab it returns against
// its CRC32C. This adds metadata keys, nothing else: a reader of the
// previous version ignores them and reads the whole object (its CRC32C and
// SHA-256 cover it as before), and GetHeads reads an object without them
// (written by PutBlock, or before this version) whole and cuts it.
const (
	metaSlabs   = "ringattn-slabs"
	metaSlabCRC = "ringattn-slab-crc32c"
	// maxSlabs bounds the slab count of a block with the slab layout (its
	// metadata then takes at most 8 KiB); blocks of more batches × heads
	// are written without it and read whole.
	maxSlabs = 1024
	// minSlabChunk is the chunk size below which chunks hold several
	// slabs (tiny chunks cost a message each).
	minSlabChunk = 256 << 10
)

// addSlabMeta adds the slab layout of b, encoded bytes of slabs equal
// slabs, to md and returns the chunk size to write b with (at most
// chunk): a multiple of the slab size, or chunk itself when a slab is
// larger. Nothing is added (and chunk returned) when b does not split
// into slabs or has more than maxSlabs.
func addSlabMeta(md map[string]string, b []byte, slabs, chunk int) int {
	if slabs < 1 || slabs > maxSlabs || len(b) == 0 || len(b)%slabs != 0 {
		return chunk
	}
	sb := len(b) / slabs
	crcs := make([]byte, 0, 8*slabs)
	for i := range slabs {
		crcs = fmt.Appendf(crcs, "%08x", CRC32C(b[i*sb:(i+1)*sb]))
	}
	md[metaSlabs] = strconv.Itoa(slabs)
	md[metaSlabCRC] = string(crcs)
	return slabChunk(sb, chunk)
}

// slabChunk is the chunk size for slabs of sb bytes with chunks of at
// most limit bytes: whole slabs, at least minSlabChunk when limit allows;
// limit when one slab is larger.
func slabChunk(sb, limit int) int {
	if sb > limit {
		return limit
	}
	k := min(max(1, minSlabChunk/sb), limit/sb)
	return k * sb
}

// slabMeta is a block's slab layout.
type slabMeta struct {
	crc []uint32 // one per slab
}

// errNoSlabs says a block has no slab layout GetHeads can use.
var errNoSlabs = errors.New("no slab layout")

// parseSlabMeta reads the slab layout of a block of m.elems values from
// its metadata (read from the network): errNoSlabs when it has none, an
// error when it is malformed (a count of 1..maxSlabs dividing the values,
// and that many 8-hex-digit CRC32Cs).
func parseSlabMeta(m blockMeta, md map[string]string) (slabMeta, error) {
	nS, hasN := md[metaSlabs]
	cS, hasC := md[metaSlabCRC]
	if !hasN && !hasC {
		return slabMeta{}, errNoSlabs
	}
	n, err := strconv.ParseUint(nS, 10, 16)
	if !hasN || err != nil || n < 1 || n > maxSlabs || uint64(m.elems)%n != 0 {
		return slabMeta{}, fmt.Errorf("metadata %s = %.16q: want 1..%d dividing the block's %d values", metaSlabs, nS, maxSlabs, m.elems)
	}
	if len(cS) != 8*int(n) {
		return slabMeta{}, fmt.Errorf("metadata %s holds %d characters: want %d (8 hex digits per slab)", metaSlabCRC, len(cS), 8*n)
	}
	sm := slabMeta{crc: make([]uint32, n)}
	for i := range sm.crc {
		v, err := strconv.ParseUint(cS[8*i:8*i+8], 16, 32)
		if err != nil {
			return slabMeta{}, fmt.Errorf("metadata %s: slab %d's CRC32C %q: want 8 hex digits", metaSlabCRC, i, cS[8*i:8*i+8])
		}
		sm.crc[i] = uint32(v)
	}
	return sm, nil
}

// HeadRange selects heads [H0, H1) of a block of B batches of Heads
// heads each ([B, Heads, len, D]).
type HeadRange struct {
	B, Heads, H0, H1 int
}

func (r HeadRange) check(ref BlockRef) error {
	if r.B < 1 || r.Heads < 1 || r.H0 < 0 || r.H1 > r.Heads || r.H0 >= r.H1 || r.B > MaxTensorValues/r.Heads {
		return fmt.Errorf("%w: heads %d..%d of %s, %d batches of %d heads: want 0 <= H0 < H1 <= Heads, B >= 1",
			ErrInvalidShape, r.H0, r.H1-1, ref, r.B, r.Heads)
	}
	return nil
}

// Cut returns heads [H0, H1) of full, a whole block ([B, Heads, len,
// D]): a sub-slice when B = 1, else a copy. A block that does not split
// into B·Heads equal heads is an error wrapping ErrInvalidShape.
func (r HeadRange) Cut(full []float32) ([]float32, error) {
	if err := r.check(BlockRef{}); err != nil {
		return nil, err
	}
	slabs := r.B * r.Heads
	if len(full)%slabs != 0 {
		return nil, fmt.Errorf("%w: a block of %d values does not split into B·H = %d heads", ErrInvalidShape, len(full), slabs)
	}
	per, n := len(full)/slabs, r.H1-r.H0
	if r.B == 1 {
		return full[r.H0*per : r.H1*per : r.H1*per], nil
	}
	out := make([]float32, r.B*n*per)
	for b := range r.B {
		copy(out[b*n*per:(b+1)*n*per], full[(b*r.Heads+r.H0)*per:(b*r.Heads+r.H1)*per])
	}
	return out, nil
}

// GetHeads fetches heads r.H0 .. r.H1-1 of one block, [B, H1-H0, len, D]
// of its [B, Heads, len, D]. A block written with its slab layout
// (PutTensors) is read in part: only the chunks holding those heads, each
// head verified against its CRC32C. Any other block — or one whose layout
// does not match r, or whose partial read fails verification — is read
// whole (GetBlock: verified, refetched once when corrupt) and cut, so the
// result is the same either way. Errors are GetBlock's.
func (s *Store) GetHeads(ctx context.Context, ns, tensor string, block int, r HeadRange) ([]float32, error) {
	if err := validateRef(ns, tensor, block); err != nil {
		return nil, err
	}
	ref := BlockRef{ns, tensor, block}
	if err := r.check(ref); err != nil {
		return nil, err
	}
	var out []float32
	err := s.retry(ctx, "get", ref, func() (err error) {
		out, err = s.getHeads(ctx, ref, r)
		return err
	})
	if err == nil {
		return out, nil
	}
	if ctx.Err() != nil {
		return nil, err
	}
	var ce *CorruptBlockError
	if errors.As(err, &ce) {
		s.corrupt.Add(1)
		s.logger.Warn("heads of a block failed verification, reading it whole", "block", ref.String(), "reason", ce.Reason)
	}
	full, err := s.GetBlock(ctx, ns, tensor, block)
	if err != nil {
		return nil, err
	}
	out, err = r.Cut(full)
	if err != nil {
		return nil, fmt.Errorf("transport: get %s: %w", ref, err)
	}
	return out, nil
}

// getHeads is one attempt of a partial read: errNoSlabs (or another
// error) sends GetHeads to a whole read.
func (s *Store) getHeads(ctx context.Context, ref BlockRef, r HeadRange) ([]float32, error) {
	corrupt := func(format string, args ...any) error {
		return &CorruptBlockError{Job: ref.Job, Tensor: ref.Tensor, Block: ref.Block, Reason: fmt.Sprintf(format, args...)}
	}
	ictx, icancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	info, err := s.obs.GetInfo(ictx, BlockName(ref.Job, ref.Tensor, ref.Block))
	icancel()
	if err != nil {
		return nil, err
	}
	if info.Size > uint64(s.cfg.MaxBlockBytes) || info.Size == 0 || info.NUID == "" {
		return nil, errNoSlabs // GetBlock reports what is wrong
	}
	m, err := parseBlockMeta(info.Size, info.Metadata)
	if err != nil {
		return nil, corrupt("%v", err)
	}
	sm, err := parseSlabMeta(m, info.Metadata)
	if errors.Is(err, errNoSlabs) {
		return nil, err
	}
	if err != nil {
		return nil, corrupt("%v", err)
	}
	if len(sm.crc) != r.B*r.Heads {
		return nil, errNoSlabs // another shape than the caller's: GetBlock's cut says so
	}
	size := int(info.Size)
	var chunk int
	if info.Opts != nil {
		chunk = int(info.Opts.ChunkSize)
	}
	if chunk < 1 || uint64(info.Chunks) != uint64((size+chunk-1)/chunk) {
		return nil, corrupt("%d chunks of at most %d bytes for %d bytes", info.Chunks, chunk, size)
	}
	sb := size / len(sm.crc) // bytes per slab
	n := r.H1 - r.H0
	eb := m.enc.ElemBytes()
	out := make([]float32, r.B*n*sb/eb)
	var dst []byte // the encoded bytes of the result's slabs, in order
	if m.enc == F32 && littleEndian {
		dst = f32Bytes(out)
	} else {
		dst = make([]byte, r.B*n*sb)
	}
	seqs, err := s.chunkSeqs(ctx, info)
	if err != nil {
		return nil, err
	}
	if len(seqs) != int(info.Chunks) {
		return nil, corrupt("%d chunk messages, info says %d", len(seqs), info.Chunks)
	}
	st, err := s.chunkStream(ctx)
	if err != nil {
		return nil, err
	}
	subj := "$O." + s.cfg.Bucket + ".C." + info.NUID
	for b := range r.B {
		lo, hi := (b*r.Heads+r.H0)*sb, (b*r.Heads+r.H1)*sb // bytes of the object
		at := dst[b*n*sb : (b+1)*n*sb]
		for c := lo / chunk; c*chunk < hi; c++ {
			actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(int64(chunk)))
			msg, err := st.GetMsg(actx, seqs[c])
			cancel()
			if err != nil {
				return nil, err
			}
			want := min(chunk, size-c*chunk)
			if msg.Subject != subj || len(msg.Data) != want {
				return nil, corrupt("chunk %d: %d bytes on %q, want %d on %q", c, len(msg.Data), msg.Subject, want, subj)
			}
			// The chunk's bytes [c·chunk, c·chunk+want) within [lo, hi).
			from, to := max(lo, c*chunk), min(hi, c*chunk+want)
			copy(at[from-lo:to-lo], msg.Data[from-c*chunk:to-c*chunk])
		}
		for h := range n {
			i := b*r.Heads + r.H0 + h
			if got := CRC32C(at[h*sb : (h+1)*sb]); got != sm.crc[i] {
				return nil, corrupt("slab %d (batch %d head %d): CRC32C %08x, metadata says %08x", i, b, i%r.Heads, got, sm.crc[i])
			}
		}
	}
	if !(m.enc == F32 && littleEndian) {
		decodeTo(out, dst, m.enc)
	}
	s.getBlocks.Add(1)
	s.getBytes.Add(int64(len(dst)))
	return out, nil
}

// chunkSeqs returns the stream sequences of the chunk messages of object
// info, in order: a headers-only scan of its chunk subject (no payloads
// move).
func (s *Store) chunkSeqs(ctx context.Context, info *jetstream.ObjectInfo) ([]uint64, error) {
	stream := "OBJ_" + s.cfg.Bucket
	actx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	defer cancel()
	cons, err := s.js.OrderedConsumer(actx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{"$O." + s.cfg.Bucket + ".C." + info.NUID},
		HeadersOnly:       true,
		InactiveThreshold: readConsumerIdle,
	})
	if err != nil {
		return nil, err
	}
	want := int(min(info.Chunks, maxSlabs*64))
	it, err := cons.Messages(jetstream.PullMaxMessages(want + 1))
	if err != nil {
		return nil, err
	}
	defer s.stopReadConsumer(actx, stream, cons, it)
	seqs := make([]uint64, 0, want)
	for len(seqs) < want {
		msg, err := it.Next(jetstream.NextContext(actx))
		if err != nil {
			if actx.Err() != nil {
				return nil, fmt.Errorf("%w (%w)", actx.Err(), err)
			}
			return nil, err
		}
		md, err := msg.Metadata()
		if err != nil {
			return nil, err
		}
		seqs = append(seqs, md.Sequence.Stream)
		if md.NumPending == 0 {
			break
		}
	}
	return seqs, nil
}

// chunkStream returns the bucket's stream (for direct gets by sequence),
// looked up once.
func (s *Store) chunkStream(ctx context.Context) (jetstream.Stream, error) {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	if s.stream != nil {
		return s.stream, nil
	}
	actx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	defer cancel()
	st, err := s.js.Stream(actx, "OBJ_"+s.cfg.Bucket)
	if err != nil {
		return nil, err
	}
	s.stream = st
	return st, nil
}

// streamCache holds the bucket's stream handle (chunkStream).
type streamCache struct {
	streamMu sync.Mutex
	stream   jetstream.Stream
}
