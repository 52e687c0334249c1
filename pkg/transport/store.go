package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/ringattn"
)

// Tensor names used by jobs.
const (
	TensorQ   = "q"
	TensorK   = "k"
	TensorV   = "v"
	TensorO   = "o"
	TensorLSE = "lse"
)

// Object metadata keys of a stored block.
const (
	metaCRC      = "ringattn-crc32c"
	metaEncoding = "ringattn-encoding"
	metaElems    = "ringattn-elems"
)

// jsErrStoreMaxBytes is JetStream's "maximum bytes exceeded" error code.
const jsErrStoreMaxBytes jetstream.ErrorCode = 10077

// Store defaults.
const (
	DefaultMaxBlockBytes  = 1 << 30
	DefaultChunkBytes     = 4 << 20
	DefaultRetryFor       = 30 * time.Second
	DefaultAttemptTimeout = 5 * time.Second
)

// attemptTimeout is how long one transfer of n bytes may take.
func (s *Store) attemptTimeout(n int64) time.Duration {
	return s.cfg.AttemptTimeout + time.Duration(n/(4<<20))*time.Second
}

// StoreConfig configures the tensor store bucket.
type StoreConfig struct {
	// Bucket is the object store bucket (default "ringattn"); it is created
	// with the limits below when missing, and bound as it is otherwise.
	Bucket string
	// MaxBytes caps the bucket's total size in bytes (0 = unlimited).
	MaxBytes int64
	// MaxBlockBytes is the largest encoded block PutBlock accepts
	// (default 1 GiB).
	MaxBlockBytes int64
	// ChunkBytes is the object store chunk size (default 4 MiB, at most the
	// server's max payload minus 4 KiB).
	ChunkBytes int
	// TTL expires objects not rewritten within it (0 = never).
	TTL time.Duration
	// Replicas of the bucket's stream in a clustered JetStream (default 1).
	Replicas int
	// Memory keeps the bucket in memory instead of files.
	Memory bool
	// AttemptTimeout bounds one read or write attempt of a small block
	// (default 5 s); each attempt gets one more second per 4 MiB, and a
	// stalled attempt is retried within RetryFor.
	AttemptTimeout time.Duration
	// RetryFor is how long a read or write is retried while NATS is
	// unreachable (restarting, reconnecting, timing out); default 30 s,
	// negative disables retries. The caller's ctx bounds it too.
	RetryFor time.Duration
}

// StoreStats are cumulative counters of a Store.
type StoreStats struct {
	PutBlocks, GetBlocks int64
	PutBytes, GetBytes   int64 // encoded bytes
	Corrupt              int64 // reads that failed verification (before refetch)
	Refetches            int64
}

// Store keeps tensors in a JetStream object store, one object per
// (job, tensor, block) named "<job>/<tensor>/<block>". Every object carries
// the CRC32C of its bytes, its encoding and element count as metadata;
// reads verify them. Safe for concurrent use.
type Store struct {
	obs    jetstream.ObjectStore
	cfg    StoreConfig
	logger *slog.Logger

	putBlocks, getBlocks, putBytes, getBytes, corrupt, refetches atomic.Int64
}

// OpenStore binds the bucket cfg.Bucket on nc, creating it if missing.
func OpenStore(ctx context.Context, nc *nats.Conn, cfg StoreConfig, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.MaxBlockBytes == 0 {
		cfg.MaxBlockBytes = DefaultMaxBlockBytes
	}
	maxChunk := int(nc.MaxPayload()) - 4<<10
	if cfg.ChunkBytes == 0 {
		cfg.ChunkBytes = min(DefaultChunkBytes, maxChunk)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = DefaultRetryFor
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	switch {
	case !nameRE.MatchString(cfg.Bucket):
		return nil, invalid("StoreConfig.Bucket = %q: want [A-Za-z0-9_-]+", cfg.Bucket)
	case cfg.MaxBytes < 0:
		return nil, invalid("StoreConfig.MaxBytes = %d: want >= 0 (0 = unlimited)", cfg.MaxBytes)
	case cfg.MaxBlockBytes < 0:
		return nil, invalid("StoreConfig.MaxBlockBytes = %d: want > 0", cfg.MaxBlockBytes)
	case cfg.ChunkBytes < 1 || cfg.ChunkBytes > maxChunk:
		return nil, invalid("StoreConfig.ChunkBytes = %d: want 1..%d (server max payload %d minus 4 KiB)",
			cfg.ChunkBytes, maxChunk, nc.MaxPayload())
	case cfg.TTL < 0:
		return nil, invalid("StoreConfig.TTL = %v: want >= 0", cfg.TTL)
	case cfg.Replicas < 1 || cfg.Replicas > 5:
		return nil, invalid("StoreConfig.Replicas = %d: want 1..5", cfg.Replicas)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("transport: jetstream: %w", err)
	}
	obs, err := js.ObjectStore(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		storage := jetstream.FileStorage
		if cfg.Memory {
			storage = jetstream.MemoryStorage
		}
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      cfg.Bucket,
			Description: "ringattn tensor blocks",
			TTL:         cfg.TTL,
			MaxBytes:    orUnlimited(cfg.MaxBytes),
			Storage:     storage,
			Replicas:    cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			obs, err = js.ObjectStore(ctx, cfg.Bucket) // lost a creation race
		}
	}
	if err != nil {
		return nil, fmt.Errorf("transport: object store bucket %q: %w", cfg.Bucket, err)
	}
	return &Store{obs: obs, cfg: cfg, logger: logger}, nil
}

func orUnlimited(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

// Bucket returns the bucket name.
func (s *Store) Bucket() string { return s.cfg.Bucket }

// ObjectStore exposes the underlying bucket (for tools and tests).
func (s *Store) ObjectStore() jetstream.ObjectStore { return s.obs }

// Stats returns the store's counters.
func (s *Store) Stats() StoreStats {
	return StoreStats{
		PutBlocks: s.putBlocks.Load(), GetBlocks: s.getBlocks.Load(),
		PutBytes: s.putBytes.Load(), GetBytes: s.getBytes.Load(),
		Corrupt: s.corrupt.Load(), Refetches: s.refetches.Load(),
	}
}

// ValidateJobID checks a job id: non-empty [A-Za-z0-9_-], at most 128 bytes.
func ValidateJobID(job string) error { return validateName("job id", job) }

func validateName(what, s string) error {
	if len(s) == 0 || len(s) > 128 || !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q: want 1..128 characters of [A-Za-z0-9_-]", ErrInvalidName, what, s)
	}
	return nil
}

func validateRef(job, tensor string, block int) error {
	if err := validateName("job id", job); err != nil {
		return err
	}
	if err := validateName("tensor name", tensor); err != nil {
		return err
	}
	if block < 0 {
		return fmt.Errorf("%w: block %d of job %q tensor %q: want >= 0", ErrInvalidName, block, job, tensor)
	}
	return nil
}

// BlockName is the object name of one block: "<job>/<tensor>/<block>".
func BlockName(job, tensor string, block int) string {
	return job + "/" + tensor + "/" + strconv.Itoa(block)
}

// PutBlock stores data as block `block` of tensor `tensor` of job `job`,
// encoded with enc, replacing any previous version.
func (s *Store) PutBlock(ctx context.Context, job, tensor string, block int, data []float32, enc Encoding) error {
	if err := validateRef(job, tensor, block); err != nil {
		return err
	}
	if !enc.valid() {
		return fmt.Errorf("%w: encoding %v: want F32 or BF16", ErrInvalidConfig, enc)
	}
	ref := BlockRef{job, tensor, block}
	if n := int64(len(data)) * int64(enc.ElemBytes()); n > s.cfg.MaxBlockBytes {
		return fmt.Errorf("%w: %s is %d bytes encoded as %v: want <= %d (StoreConfig.MaxBlockBytes)",
			ErrTooLarge, ref, n, enc, s.cfg.MaxBlockBytes)
	}
	b := encode(data, enc)
	meta := jetstream.ObjectMeta{
		Name: BlockName(job, tensor, block),
		Metadata: map[string]string{
			metaCRC:      fmt.Sprintf("%08x", CRC32C(b)),
			metaEncoding: enc.String(),
			metaElems:    strconv.Itoa(len(data)),
		},
		Opts: &jetstream.ObjectMetaOptions{ChunkSize: uint32(s.cfg.ChunkBytes)},
	}
	err := s.retry(ctx, "put", ref, func() error {
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(int64(len(b))))
		defer cancel()
		_, err := s.obs.Put(actx, meta, bytes.NewReader(b))
		return err
	})
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrStoreMaxBytes {
		return fmt.Errorf("%w: put %s (%d bytes): bucket %q is at its MaxBytes limit (%d): %w",
			ErrStoreFull, ref, len(b), s.cfg.Bucket, s.cfg.MaxBytes, err)
	}
	if err != nil {
		return fmt.Errorf("transport: put %s (%d bytes): %w", ref, len(b), err)
	}
	s.putBlocks.Add(1)
	s.putBytes.Add(int64(len(b)))
	return nil
}

// GetBlock fetches and verifies one block. A missing block is an error
// wrapping ErrBlockNotFound naming it; bytes that fail verification are
// fetched once more, then reported as *CorruptBlockError.
func (s *Store) GetBlock(ctx context.Context, job, tensor string, block int) ([]float32, error) {
	if err := validateRef(job, tensor, block); err != nil {
		return nil, err
	}
	ref := BlockRef{job, tensor, block}
	var out []float32
	get := func() (err error) {
		out, err = s.getBlock(ctx, job, tensor, block)
		return err
	}
	err := s.retry(ctx, "get", ref, get)
	var ce *CorruptBlockError
	if errors.As(err, &ce) {
		s.corrupt.Add(1)
		s.refetches.Add(1)
		s.logger.Warn("corrupt block, fetching again", "job", job, "tensor", tensor, "block", block, "reason", ce.Reason)
		err = s.retry(ctx, "get", ref, get)
		if errors.As(err, &ce) {
			s.corrupt.Add(1)
		}
	}
	return out, err
}

// transient reports errors worth retrying: NATS unreachable or slow.
func transient(err error) bool {
	for _, e := range []error{nats.ErrTimeout, nats.ErrNoResponders, nats.ErrConnectionReconnecting,
		nats.ErrDisconnected, nats.ErrNoServers, nats.ErrReconnectBufExceeded, context.DeadlineExceeded,
		jetstream.ErrNoStreamResponse, jetstream.ErrNoHeartbeat, jetstream.ErrAsyncPublishTimeout} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// retry runs f until it succeeds, fails for good, or RetryFor passes.
func (s *Store) retry(ctx context.Context, op string, ref BlockRef, f func() error) error {
	start := time.Now()
	wait := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := f()
		if err == nil || !transient(err) || ctx.Err() != nil || s.cfg.RetryFor < 0 ||
			time.Since(start)+wait > s.cfg.RetryFor {
			if err != nil && ctx.Err() != nil {
				return fmt.Errorf("%w (%w)", ctx.Err(), err)
			}
			return err
		}
		s.logger.Warn("tensor store unreachable, retrying", "op", op, "block", ref.String(), "attempt", attempt, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

func (s *Store) getBlock(ctx context.Context, job, tensor string, block int) ([]float32, error) {
	ref := BlockRef{job, tensor, block}
	corrupt := func(format string, args ...any) error {
		return &CorruptBlockError{Job: job, Tensor: tensor, Block: block, Reason: fmt.Sprintf(format, args...)}
	}
	name := BlockName(job, tensor, block)
	// A request sent as NATS restarts may get no reply: bound the attempt
	// (a timeout is retried) rather than wait for ctx's deadline.
	ictx, icancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
	info, err := s.obs.GetInfo(ictx, name)
	icancel()
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s in bucket %q", ErrBlockNotFound, ref, s.cfg.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: get %s: %w", ref, err)
	}
	if int64(info.Size) > s.cfg.MaxBlockBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes: want <= %d (StoreConfig.MaxBlockBytes)",
			ErrTooLarge, ref, info.Size, s.cfg.MaxBlockBytes)
	}
	// The object store's reader waits for chunks until its context's
	// deadline: bound each attempt so a stalled transfer is retried.
	actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(int64(info.Size)))
	defer cancel()
	res, err := s.obs.Get(actx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s in bucket %q", ErrBlockNotFound, ref, s.cfg.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: get %s: %w", ref, err)
	}
	defer res.Close()
	if info, err = res.Info(); err != nil {
		return nil, fmt.Errorf("transport: get %s: %w", ref, err)
	}
	enc, err := ParseEncoding(info.Metadata[metaEncoding])
	if err != nil {
		return nil, corrupt("metadata %s = %q", metaEncoding, info.Metadata[metaEncoding])
	}
	elems, err := strconv.Atoi(info.Metadata[metaElems])
	if err != nil || elems < 0 || uint64(elems)*uint64(enc.ElemBytes()) != info.Size {
		return nil, corrupt("size %d bytes does not match %s = %q of %v", info.Size, metaElems, info.Metadata[metaElems], enc)
	}
	want, err := strconv.ParseUint(info.Metadata[metaCRC], 16, 32)
	if err != nil {
		return nil, corrupt("metadata %s = %q: want 8 hex digits", metaCRC, info.Metadata[metaCRC])
	}
	// F32 on a little-endian machine is read straight into the result;
	// otherwise into bytes, then decoded.
	out := make([]float32, elems)
	var b []byte
	if enc == F32 && littleEndian {
		b = f32Bytes(out)
	} else {
		b = make([]byte, info.Size)
	}
	if err := readObject(res, b); err != nil {
		if errors.Is(err, jetstream.ErrDigestMismatch) {
			return nil, corrupt("object SHA-256 digest mismatch")
		}
		if errors.Is(err, errObjectSize) {
			return nil, corrupt("%v (info says %d bytes)", err, info.Size)
		}
		// The reader's pipe deadline is the attempt's: its timeout can
		// come before actx reports done (nats.go v1.55 then returns the
		// pipe's "i/o timeout" as is).
		if (actx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded)) && ctx.Err() == nil {
			err = fmt.Errorf("%w (%w)", nats.ErrTimeout, err) // the attempt stalled: retry
		}
		return nil, fmt.Errorf("transport: get %s: %w", ref, err)
	}
	if got := CRC32C(b); got != uint32(want) {
		return nil, corrupt("CRC32C %08x, metadata says %08x", got, want)
	}
	if !(enc == F32 && littleEndian) {
		decodeTo(out, b, enc)
	}
	s.getBlocks.Add(1)
	s.getBytes.Add(int64(len(b)))
	return out, nil
}

var errObjectSize = errors.New("object size differs")

// readObject fills b from r and checks r ends there: the object store
// verifies the object's digest when its reader reaches the end.
func readObject(r io.Reader, b []byte) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: ended before %d bytes", errObjectSize, len(b))
		}
		return err
	}
	var one [1]byte
	for {
		n, err := r.Read(one[:])
		if n > 0 {
			return fmt.Errorf("%w: more than %d bytes", errObjectSize, len(b))
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// DeleteJob deletes every object of job and returns how many.
func (s *Store) DeleteJob(ctx context.Context, job string) (int, error) {
	if err := ValidateJobID(job); err != nil {
		return 0, err
	}
	infos, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("transport: list bucket %q: %w", s.cfg.Bucket, err)
	}
	n := 0
	for _, info := range infos {
		if !strings.HasPrefix(info.Name, job+"/") {
			continue
		}
		if err := s.obs.Delete(ctx, info.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return n, fmt.Errorf("transport: delete %q of job %q: %w", info.Name, job, err)
		}
		n++
	}
	return n, nil
}

// Layout of a [B, H, N, D] tensor cut into blocks of blockLen rows along N.

// Shape is a tensor shape [B, H, N, D]; lse tensors use D = 1.
type Shape [4]int

func (sh Shape) elems() int { return sh[0] * sh[1] * sh[2] * sh[3] }

// Blocks returns how many blocks of blockLen rows cover N (the last one
// ragged).
func (sh Shape) Blocks(blockLen int) int { return (sh[2] + blockLen - 1) / blockLen }

// BlockRows returns the first row and the row count of block i.
func (sh Shape) BlockRows(blockLen, i int) (start, n int) {
	start = i * blockLen
	return start, min(blockLen, sh[2]-start)
}

func (sh Shape) check(what string, data []float32, blockLen int) error {
	for i, d := range sh {
		if d < 0 || (d == 0 && i != 2) {
			return fmt.Errorf("%w: %s shape %v: dimension %d is %d, want >= 1", ErrInvalidShape, what, sh, i, d)
		}
	}
	if blockLen < 1 {
		return fmt.Errorf("%w: %s block length %d: want >= 1", ErrInvalidShape, what, blockLen)
	}
	if data != nil && len(data) != sh.elems() {
		return fmt.Errorf("%w: %s has %d values, shape %v needs %d", ErrInvalidShape, what, len(data), sh, sh.elems())
	}
	return nil
}

// ExtractBlock copies block i of t (shape sh) out as [B, H, len, D].
func ExtractBlock(t []float32, sh Shape, blockLen, i int) []float32 {
	r0, n := sh.BlockRows(blockLen, i)
	B, H, N, D := sh[0], sh[1], sh[2], sh[3]
	out := make([]float32, 0, B*H*n*D)
	for bh := range B * H {
		off := (bh*N + r0) * D
		out = append(out, t[off:off+n*D]...)
	}
	return out
}

// InsertBlock copies blk ([B, H, len, D]) into block i of t (shape sh).
func InsertBlock(t []float32, sh Shape, blockLen, i int, blk []float32) {
	r0, n := sh.BlockRows(blockLen, i)
	B, H, N, D := sh[0], sh[1], sh[2], sh[3]
	for bh := range B * H {
		copy(t[(bh*N+r0)*D:(bh*N+r0+n)*D], blk[bh*n*D:(bh+1)*n*D])
	}
}

// PutTensor stores t (shape [B, H, N, D]) as Shape.Blocks(blockLen) blocks,
// block i holding rows [i·blockLen, min((i+1)·blockLen, N)) of every (b, h)
// as [B, H, len, D]. It returns the number of blocks.
func (s *Store) PutTensor(ctx context.Context, job, tensor string, t []float32, sh Shape, blockLen int, enc Encoding) (int, error) {
	if err := sh.check(fmt.Sprintf("job %q tensor %q", job, tensor), t, blockLen); err != nil {
		return 0, err
	}
	nb := sh.Blocks(blockLen)
	for i := range nb {
		if err := s.PutBlock(ctx, job, tensor, i, ExtractBlock(t, sh, blockLen, i), enc); err != nil {
			return i, err
		}
	}
	return nb, nil
}

// GetTensor fetches every block of a tensor stored by PutTensor and
// reassembles it.
func (s *Store) GetTensor(ctx context.Context, job, tensor string, sh Shape, blockLen int) ([]float32, error) {
	if err := sh.check(fmt.Sprintf("job %q tensor %q", job, tensor), nil, blockLen); err != nil {
		return nil, err
	}
	t := make([]float32, sh.elems())
	for i := range sh.Blocks(blockLen) {
		blk, err := s.GetBlock(ctx, job, tensor, i)
		if err != nil {
			return nil, err
		}
		_, n := sh.BlockRows(blockLen, i)
		if want := sh[0] * sh[1] * n * sh[3]; len(blk) != want {
			return nil, &CorruptBlockError{Job: job, Tensor: tensor, Block: i,
				Reason: fmt.Sprintf("%d values, shape %v with block length %d needs %d", len(blk), sh, blockLen, want)}
		}
		InsertBlock(t, sh, blockLen, i, blk)
	}
	return t, nil
}

// Source returns a ringattn.Source reading job's blocks from s.
func (s *Store) Source(job string) ringattn.Source { return storeSource{s, job} }

// Sink returns a ringattn.Sink writing job's output blocks to s as tensors
// "o" and "lse", float32 (outputs are never narrowed).
func (s *Store) Sink(job string) ringattn.Sink { return storeSink{s, job} }

type storeSource struct {
	s   *Store
	job string
}

func (src storeSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	return src.s.GetBlock(ctx, src.job, tensor, block)
}

type storeSink struct {
	s   *Store
	job string
}

func (snk storeSink) Put(ctx context.Context, block int, o, lse []float32) error {
	if err := snk.s.PutBlock(ctx, snk.job, TensorO, block, o, F32); err != nil {
		return err
	}
	return snk.s.PutBlock(ctx, snk.job, TensorLSE, block, lse, F32)
}
