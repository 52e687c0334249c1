package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	// metaEpoch is the epoch that wrote a gradient block (GradSink).
	metaEpoch = "ringattn-epoch"
)

// jsErrStoreMaxBytes is JetStream's "maximum bytes exceeded" error code.
const jsErrStoreMaxBytes jetstream.ErrorCode = 10077

// Store defaults.
const (
	DefaultMaxBlockBytes  = 1 << 30
	DefaultChunkBytes     = 4 << 20
	DefaultRetryFor       = 30 * time.Second
	DefaultAttemptTimeout = 5 * time.Second
	// DefaultBucketWait is StoreConfig.WaitFor's default: longer than a
	// coordinator takes to start, short enough that a client of a tenant
	// whose bucket nobody created hears why.
	DefaultBucketWait = time.Minute
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
	// WaitFor is how long OpenStore waits for a bucket (or its index)
	// that does not exist and that this identity may not create (workers
	// and clients: only the coordinator and the admin create buckets);
	// default DefaultBucketWait, negative fails at once. The caller's ctx
	// bounds it too.
	WaitFor time.Duration
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
	js     jetstream.JetStream
	obs    jetstream.ObjectStore
	idx    jetstream.KeyValue // the namespace index (see indexBucket)
	cfg    StoreConfig
	logger *slog.Logger
	streamCache

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
	asked := cfg // the bucket settings the caller chose (zero: not chosen)
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
	if cfg.WaitFor == 0 {
		cfg.WaitFor = DefaultBucketWait
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
	storage := jetstream.FileStorage
	if cfg.Memory {
		storage = jetstream.MemoryStorage
	}
	return openStore(ctx, js, cfg, asked, storage, logger)
}

// checkSettings logs, once per OpenStore, how an existing bucket's
// replicas, TTL and size limit differ from the ones the caller chose
// (non-zero in asked): they are applied only when the bucket is created
// (change them with the nats CLI). A caller leaving them zero, like a
// client, binds whatever the bucket has without a word.
func (s *Store) checkSettings(ctx context.Context, asked StoreConfig) {
	if asked.Replicas == 0 && asked.TTL == 0 && asked.MaxBytes == 0 {
		return
	}
	st, err := s.obs.Status(ctx)
	if err != nil {
		s.logger.Warn("tensor store bucket status unavailable", "bucket", s.cfg.Bucket, "err", err)
		return
	}
	var diffs []any
	if asked.Replicas != 0 && st.Replicas() != asked.Replicas {
		diffs = append(diffs, "replicas", st.Replicas(), "configured_replicas", s.cfg.Replicas)
	}
	if asked.TTL != 0 && st.TTL() != asked.TTL {
		diffs = append(diffs, "ttl", st.TTL(), "configured_ttl", s.cfg.TTL)
	}
	if bs, ok := st.(*jetstream.ObjectBucketStatus); ok && bs.StreamInfo() != nil && asked.MaxBytes != 0 {
		if mb := bs.StreamInfo().Config.MaxBytes; mb != orUnlimited(s.cfg.MaxBytes) {
			diffs = append(diffs, "max_bytes", mb, "configured_max_bytes", orUnlimited(s.cfg.MaxBytes))
		}
	}
	if len(diffs) > 0 {
		s.logger.Warn("tensor store bucket exists with other settings than configured; keeping the bucket's (they apply only when it is created)",
			append([]any{"bucket", s.cfg.Bucket}, diffs...)...)
	}
}

// permissionError explains err, a failed JetStream call on bucket, when
// the server refused nc a permission on the bucket's API subjects (the
// call itself then only times out); nil otherwise.
func permissionError(nc *nats.Conn, bucket string, err error) error {
	last := nc.LastError()
	if last == nil || !errors.Is(last, nats.ErrPermissionViolation) {
		return nil
	}
	about := false
	for _, name := range []string{"OBJ_" + bucket + `"`, "KV_" + indexBucket(bucket) + `"`, "$O." + bucket + ".", "$KV." + indexBucket(bucket) + "."} {
		about = about || strings.Contains(last.Error(), name)
	}
	if !about {
		return nil
	}
	if strings.Contains(last.Error(), ".STREAM.CREATE.") {
		return fmt.Errorf("%w: tensor bucket %q does not exist and this identity may not create it: "+
			"an admin or the coordinator creates a tenant's bucket (with its quota) first (%v)", ErrPermission, bucket, last)
	}
	return fmt.Errorf("%w: this identity may not use tensor bucket %q: a client uses only its own tenant's bucket (%v; %v)",
		ErrPermission, bucket, last, err)
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

// ValidateName checks a name that becomes part of NATS subjects or object
// names (job and worker ids, tensor names, store namespaces, idempotency
// keys): 1..128 characters of [A-Za-z0-9_-]. what names it in the error.
// This is the one name rule of ringattn.
func ValidateName(what, s string) error { return validateName(what, s) }

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
	return s.putBlock(ctx, job, tensor, block, data, enc, nil, 0)
}

// putBlock is PutBlock with extra object metadata (keys other than the
// checksum, encoding and element count) and, when slabs > 0, the block's
// slab layout: slabs equal heads, each with its CRC32C, in chunks aligned
// to them (see GetHeads).
func (s *Store) putBlock(ctx context.Context, job, tensor string, block int, data []float32, enc Encoding, extra map[string]string, slabs int) error {
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
	// F32 on a little-endian machine is written from data itself (the
	// object store copies it chunk by chunk); otherwise encoded first.
	var b []byte
	if enc == F32 && littleEndian {
		b = f32Bytes(data)
	} else {
		b = encode(data, enc)
	}
	// The object store allocates one chunk buffer per put: no larger
	// than the block.
	chunk := min(s.cfg.ChunkBytes, max(len(b), 1))
	meta := jetstream.ObjectMeta{
		Name: BlockName(job, tensor, block),
		Metadata: map[string]string{
			metaCRC:      fmt.Sprintf("%08x", CRC32C(b)),
			metaEncoding: enc.String(),
			metaElems:    strconv.Itoa(len(data)),
		},
	}
	for k, v := range extra {
		meta.Metadata[k] = v
	}
	if slabs > 0 {
		chunk = addSlabMeta(meta.Metadata, b, slabs, chunk)
	}
	meta.Opts = &jetstream.ObjectMetaOptions{ChunkSize: uint32(chunk)}
	// The index key first: no block exists without one (DeleteNamespace
	// finds blocks by their keys).
	err := s.retry(ctx, "put", ref, func() error {
		actx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
		defer cancel()
		_, err := s.idx.Put(actx, indexKey(job, tensor, block), strconv.AppendInt(nil, int64(len(b)), 10))
		return err
	})
	if err != nil {
		return fmt.Errorf("transport: put %s: index: %w", ref, err)
	}
	err = s.retry(ctx, "put", ref, func() error {
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(int64(len(b))))
		defer cancel()
		_, err := s.obs.Put(actx, meta, bytes.NewReader(b))
		return err
	})
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrStoreMaxBytes {
		limit := "its size limit (a tenant's bucket: the tenant's stored-bytes quota; delete finished jobs' tensors)"
		if s.cfg.MaxBytes > 0 {
			limit = fmt.Sprintf("its MaxBytes limit (%d)", s.cfg.MaxBytes)
		}
		return fmt.Errorf("%w: put %s (%d bytes): bucket %q is at %s: %w",
			ErrStoreFull, ref, len(b), s.cfg.Bucket, limit, err)
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
	if info.Size > uint64(s.cfg.MaxBlockBytes) {
		return nil, fmt.Errorf("%w: %s is %d bytes: want <= %d (StoreConfig.MaxBlockBytes)",
			ErrTooLarge, ref, info.Size, s.cfg.MaxBlockBytes)
	}
	m, err := parseBlockMeta(info.Size, info.Metadata)
	if err != nil {
		return nil, corrupt("%v", err)
	}
	// F32 on a little-endian machine is read straight into the result;
	// otherwise into bytes, then decoded.
	out := make([]float32, m.elems)
	var b []byte
	if m.enc == F32 && littleEndian {
		b = f32Bytes(out)
	} else {
		b = make([]byte, info.Size)
	}
	// Bound the transfer so a stalled one is retried.
	actx, cancel := context.WithTimeout(ctx, s.attemptTimeout(int64(info.Size)))
	defer cancel()
	if err := s.readObject(actx, info, b); err != nil {
		if errors.Is(err, jetstream.ErrDigestMismatch) {
			return nil, corrupt("object SHA-256 digest mismatch")
		}
		if errors.Is(err, errObjectSize) {
			return nil, corrupt("%v (info says %d bytes)", err, info.Size)
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("transport: get %s: %w", ref, err)
		}
		if actx.Err() != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w (%w)", nats.ErrTimeout, err) // the attempt stalled: retry
		}
		return nil, fmt.Errorf("transport: get %s: %w", ref, err)
	}
	if got := CRC32C(b); got != m.crc {
		return nil, corrupt("CRC32C %08x, metadata says %08x", got, m.crc)
	}
	if !(m.enc == F32 && littleEndian) {
		decodeTo(out, b, m.enc)
	}
	s.getBlocks.Add(1)
	s.getBytes.Add(int64(len(b)))
	return out, nil
}

// DeleteJob deletes every object of job and returns how many (see
// DeleteNamespace).
func (s *Store) DeleteJob(ctx context.Context, job string) (int, error) {
	if err := ValidateJobID(job); err != nil {
		return 0, err
	}
	return s.DeleteNamespace(ctx, job)
}
