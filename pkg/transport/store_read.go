package transport

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// blockMeta is what a block's object metadata says about its bytes.
type blockMeta struct {
	enc   Encoding
	elems int
	crc   uint32
}

// parseBlockMeta checks the metadata PutBlock wrote against the object's
// size (both read from the network): the encoding, an element count that
// is exactly size/ElemBytes, and an 8-hex-digit CRC32C.
func parseBlockMeta(size uint64, md map[string]string) (blockMeta, error) {
	var m blockMeta
	encS, ok := md[metaEncoding]
	enc, err := ParseEncoding(encS)
	if !ok || err != nil {
		return m, fmt.Errorf("metadata %s = %q: want f32 or bf16", metaEncoding, encS)
	}
	eb := uint64(enc.ElemBytes())
	elems, err := strconv.ParseUint(md[metaElems], 10, 63)
	if err != nil || size%eb != 0 || elems != size/eb || elems > math.MaxInt {
		return m, fmt.Errorf("size %d bytes does not match %s = %q of %v", size, metaElems, md[metaElems], enc)
	}
	crcS := md[metaCRC]
	crc, err := strconv.ParseUint(crcS, 16, 32)
	if err != nil || len(crcS) != 8 {
		return m, fmt.Errorf("metadata %s = %q: want 8 hex digits", metaCRC, crcS)
	}
	return blockMeta{enc: enc, elems: int(elems), crc: uint32(crc)}, nil
}

var errObjectSize = errors.New("object size differs")

// readObject fills b with the chunks of object info, checks there are no
// more and verifies the object's SHA-256 digest. It reads the chunks from
// the bucket's stream itself (an ordered consumer on the object's chunk
// subject, as the object store does) because the object store's reader
// ignores its context while it waits for a chunk: a canceled read would
// hang up to its deadline. Here ctx ends the read at once, and the
// consumer is stopped before returning.
func (s *Store) readObject(ctx context.Context, info *jetstream.ObjectInfo, b []byte) error {
	if info.Size == 0 {
		if info.Chunks != 0 {
			return fmt.Errorf("%w: %d chunks of an empty object", errObjectSize, info.Chunks)
		}
		return nil
	}
	if info.NUID == "" || !strings.HasPrefix(info.Digest, digestPrefix) {
		return jetstream.ErrBadObjectMeta
	}
	stream := "OBJ_" + s.cfg.Bucket
	cons, err := s.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$O." + s.cfg.Bucket + ".C." + info.NUID},
		// The server drops a consumer whose delete below was lost after
		// this long without pulls.
		InactiveThreshold: readConsumerIdle,
	})
	if err != nil {
		return err
	}
	// A few chunks ahead (the client sizes a channel by the message
	// count: keep it to what the object has).
	ahead := readAheadBytes(s.cfg.ChunkBytes)
	msgs := min(int(min(info.Chunks, 1<<20))+1, max(8, ahead/s.cfg.ChunkBytes))
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(msgs, ahead))
	if err != nil {
		return err
	}
	defer s.stopReadConsumer(ctx, stream, cons, it)
	sum := sha256.New()
	off := 0
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w (%w)", ctx.Err(), err)
			}
			return err
		}
		data := msg.Data()
		if len(data) > len(b)-off {
			return fmt.Errorf("%w: more than %d bytes", errObjectSize, len(b))
		}
		off += copy(b[off:], data)
		sum.Write(data)
		md, err := msg.Metadata()
		if err != nil {
			return err
		}
		if md.NumPending == 0 {
			break
		}
	}
	if off != len(b) {
		return fmt.Errorf("%w: ended before %d bytes", errObjectSize, len(b))
	}
	if base64.URLEncoding.EncodeToString(sum.Sum(nil)) != info.Digest[len(digestPrefix):] {
		return jetstream.ErrDigestMismatch
	}
	return nil
}

// stopReadConsumer stops it and deletes cons, a read's consumer on
// stream. Stopping leaves the consumer on the server: delete it, even when
// ctx ended (bounded, so a cancel still returns promptly). Not while
// disconnected: the request would only wait out its timeout, and the
// server drops the idle consumer anyway.
func (s *Store) stopReadConsumer(ctx context.Context, stream string, cons jetstream.Consumer, it jetstream.MessagesContext) {
	it.Stop()
	if ci := cons.CachedInfo(); ci != nil && s.js.Conn().IsConnected() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readConsumerDelete)
		if err := s.js.DeleteConsumer(dctx, stream, ci.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			s.logger.Debug("tensor store read consumer not deleted; the server drops it when idle", "consumer", ci.Name, "err", err)
		}
		cancel()
	}
}

// digestPrefix starts an object's digest in the object store's metadata.
const digestPrefix = "SHA-256="

// A block read's consumer is deleted within readConsumerDelete when the
// read ends; failing that, the server drops it after readConsumerIdle.
const (
	readConsumerDelete = 500 * time.Millisecond
	readConsumerIdle   = 30 * time.Second
)

// readAheadBytes is how many chunk bytes a read asks the server for ahead
// of consuming them: a few chunks, so the transfer streams.
func readAheadBytes(chunk int) int { return max(4*chunk, 16<<20) }
