package transport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The namespace index. The object store keeps every object's metadata on
// one subject per object name (base64-encoded), so the only way to find a
// namespace's objects through it is to walk the metadata of the whole
// bucket. The index is a key/value bucket "<bucket>-index" beside it with
// one key "<ns>.<tensor>.<block>" per block, written by PutBlock before the
// block itself (so no block exists without its key): deleting a namespace
// reads only that namespace's keys (a subject-filtered consumer the server
// serves from its per-subject index), deletes those objects and purges the
// keys. The key "index-complete" (one token, so never a block's) records
// that every object of the bucket is indexed: a bucket that existed before
// the index is indexed once, by the first OpenStore that finds the key
// missing.

// indexCompleteKey marks an index holding every object of its bucket.
const indexCompleteKey = "index-complete"

func indexBucket(bucket string) string { return bucket + "-index" }

func indexKey(ns, tensor string, block int) string {
	return ns + "." + tensor + "." + strconv.Itoa(block)
}

// openIndex binds (creating if missing) the namespace index and indexes
// the bucket's existing objects if it predates the index.
func (s *Store) openIndex(ctx context.Context, storage jetstream.StorageType) error {
	name := indexBucket(s.cfg.Bucket)
	idx, err := s.js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		idx, err = s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      name,
			Description: "ringattn tensor store namespace index",
			TTL:         s.cfg.TTL,
			Storage:     storage,
			Replicas:    s.cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			idx, err = s.js.KeyValue(ctx, name)
		}
	}
	if err != nil {
		if perr := permissionError(s.js.Conn(), s.cfg.Bucket, err); perr != nil {
			return perr
		}
		return fmt.Errorf("transport: tensor store index bucket %q: %w", name, err)
	}
	s.idx = idx
	if _, err := idx.Get(ctx, indexCompleteKey); err == nil {
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("transport: tensor store index bucket %q: %w", name, err)
	}
	// Index what is there (nothing, for a new bucket), then mark the index
	// complete. Concurrent OpenStores doing the same write the same keys.
	infos, err := s.obs.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		return fmt.Errorf("transport: indexing tensor store bucket %q: %w", s.cfg.Bucket, err)
	}
	n := 0
	for _, info := range infos {
		ref, ok := parseBlockName(info.Name)
		if !ok {
			continue
		}
		if _, err := idx.Put(ctx, indexKey(ref.Job, ref.Tensor, ref.Block), strconv.AppendUint(nil, info.Size, 10)); err != nil {
			return fmt.Errorf("transport: indexing tensor store bucket %q: %w", s.cfg.Bucket, err)
		}
		n++
	}
	if _, err := idx.Put(ctx, indexCompleteKey, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		return fmt.Errorf("transport: indexing tensor store bucket %q: %w", s.cfg.Bucket, err)
	}
	if n > 0 {
		s.logger.Info("tensor store bucket indexed by namespace", "bucket", s.cfg.Bucket, "objects", n)
	}
	return nil
}

// parseBlockName splits "<ns>/<tensor>/<block>" (BlockName's form).
func parseBlockName(name string) (BlockRef, bool) {
	ns, rest, ok1 := strings.Cut(name, "/")
	tensor, blk, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 {
		return BlockRef{}, false
	}
	b, err := strconv.Atoi(blk)
	if err != nil || strconv.Itoa(b) != blk || validateRef(ns, tensor, b) != nil {
		return BlockRef{}, false
	}
	return BlockRef{ns, tensor, b}, true
}

// NamespaceInfo describes one namespace of the store: a job id, or an
// upload id such as "in-xxxx", owning objects "<Name>/<tensor>/<block>".
type NamespaceInfo struct {
	Name string
	// Modified is when its most recently written object was written.
	Modified time.Time
	// Objects and Bytes count its objects and their stored (encoded) bytes.
	Objects int
	Bytes   int64
}

// Namespaces lists every namespace with objects in the bucket, sorted by
// name. It walks the metadata of the whole bucket: meant for a sweeper
// running now and then, not for a request path.
func (s *Store) Namespaces(ctx context.Context) ([]NamespaceInfo, error) {
	infos, err := s.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("transport: list bucket %q: %w", s.cfg.Bucket, err)
	}
	byName := map[string]*NamespaceInfo{}
	for _, info := range infos {
		ns, _, ok := strings.Cut(info.Name, "/")
		if !ok || validateName("namespace", ns) != nil {
			continue // not written by PutBlock
		}
		ni := byName[ns]
		if ni == nil {
			ni = &NamespaceInfo{Name: ns}
			byName[ns] = ni
		}
		ni.Objects++
		ni.Bytes += int64(info.Size)
		if info.ModTime.After(ni.Modified) {
			ni.Modified = info.ModTime
		}
	}
	out := make([]NamespaceInfo, 0, len(byName))
	for _, ni := range byName {
		out = append(out, *ni)
	}
	slices.SortFunc(out, func(a, b NamespaceInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// indexKeyInFlight is how long an index key whose block is missing is
// kept by DeleteNamespace: its PutBlock may still be writing the block
// (attempts of a large block, retried while NATS restarts, take minutes);
// an older one is a put that failed.
const indexKeyInFlight = 10 * time.Minute

// DeleteNamespace deletes every block of namespace ns (a job id or upload
// id) and returns how many objects it deleted. It reads the namespace's
// index keys, not the whole bucket, so it costs in proportion to the
// namespace. Deleting a namespace that has no objects returns 0, nil. A
// block written while its namespace is deleted may survive; its index key
// then does too, so the next DeleteNamespace deletes it.
func (s *Store) DeleteNamespace(ctx context.Context, ns string) (int, error) {
	if err := validateName("namespace", ns); err != nil {
		return 0, err
	}
	type key struct {
		name    string
		rev     uint64
		created time.Time
	}
	w, err := s.idx.WatchFiltered(ctx, []string{ns + ".>"}, jetstream.IgnoreDeletes(), jetstream.MetaOnly())
	if err != nil {
		return 0, fmt.Errorf("transport: read index of namespace %q: %w", ns, err)
	}
	var keys []key
	func() {
		defer w.Stop()
		for {
			select {
			case e := <-w.Updates():
				if e == nil {
					return
				}
				keys = append(keys, key{e.Key(), e.Revision(), e.Created()})
			case <-ctx.Done():
				err = ctx.Err()
				return
			}
		}
	}()
	if err != nil {
		return 0, fmt.Errorf("transport: read index of namespace %q: %w", ns, err)
	}
	var st jetstream.Stream
	if len(keys) > 0 {
		if st, err = s.js.Stream(ctx, "KV_"+indexBucket(s.cfg.Bucket)); err != nil {
			return 0, fmt.Errorf("transport: index of namespace %q: %w", ns, err)
		}
	}
	n := 0
	for _, k := range keys {
		ref, ok := parseIndexKey(k.name)
		if !ok || ref.Job != ns {
			continue
		}
		name := BlockName(ref.Job, ref.Tensor, ref.Block)
		err := s.obs.Delete(ctx, name)
		switch {
		case err == nil:
			n++
		case errors.Is(err, jetstream.ErrObjectNotFound):
			if time.Since(k.created) < indexKeyInFlight {
				continue // its put may be writing it now: keep the key
			}
		default:
			return n, fmt.Errorf("transport: delete %q of namespace %q: %w", name, ns, err)
		}
		// Purge the key as read (a put of the same block since keeps its
		// newer key).
		if err := st.Purge(ctx, jetstream.WithPurgeSubject("$KV."+indexBucket(s.cfg.Bucket)+"."+k.name),
			jetstream.WithPurgeSequence(k.rev+1)); err != nil {
			return n, fmt.Errorf("transport: purge index key %q of namespace %q: %w", k.name, ns, err)
		}
	}
	return n, nil
}

// parseIndexKey splits "<ns>.<tensor>.<block>" (indexKey's form).
func parseIndexKey(k string) (BlockRef, bool) {
	return parseBlockName(strings.ReplaceAll(k, ".", "/"))
}

// BlockInfo is what the store recorded about a block when it was written.
type BlockInfo struct {
	// CRC32C is the Castagnoli CRC of the block's bytes as stored: for an
	// F32 block (every output block workers write) the little-endian
	// float32 values, which is what a worker reports for its output
	// blocks (pb.BlockChecksum's crc32c_o and crc32c_lse).
	CRC32C uint32
	// Bytes is the stored (encoded) size.
	Bytes int64
	// Modified is when the block was last written.
	Modified time.Time
	// Epoch is the epoch that wrote a gradient block (GradSink); 0 for
	// blocks written without one.
	Epoch uint64
}

// BlockInfo returns the stored checksum and size of one block from its
// metadata, without reading the block. A missing block is an error
// wrapping ErrBlockNotFound; metadata that does not parse, a
// *CorruptBlockError.
func (s *Store) BlockInfo(ctx context.Context, ns, tensor string, block int) (BlockInfo, error) {
	info, m, err := s.blockMeta(ctx, ns, tensor, block)
	if err != nil {
		return BlockInfo{}, err
	}
	bi := BlockInfo{CRC32C: m.crc, Bytes: int64(info.Size), Modified: info.ModTime}
	if e, ok := info.Metadata[metaEpoch]; ok {
		ep, err := strconv.ParseUint(e, 10, 64)
		if err != nil {
			return BlockInfo{}, &CorruptBlockError{Job: ns, Tensor: tensor, Block: block,
				Reason: fmt.Sprintf("metadata %s = %.32q: want a decimal epoch", metaEpoch, e)}
		}
		bi.Epoch = ep
	}
	return bi, nil
}

// blockMeta reads and checks one block's object metadata.
func (s *Store) blockMeta(ctx context.Context, ns, tensor string, block int) (*jetstream.ObjectInfo, blockMeta, error) {
	if err := validateRef(ns, tensor, block); err != nil {
		return nil, blockMeta{}, err
	}
	ref := BlockRef{ns, tensor, block}
	var info *jetstream.ObjectInfo
	err := s.retry(ctx, "info", ref, func() (err error) {
		actx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
		defer cancel()
		info, err = s.obs.GetInfo(actx, BlockName(ns, tensor, block))
		return err
	})
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, blockMeta{}, fmt.Errorf("%w: %s in bucket %q", ErrBlockNotFound, ref, s.cfg.Bucket)
	}
	if err != nil {
		return nil, blockMeta{}, fmt.Errorf("transport: block info %s: %w", ref, err)
	}
	m, err := parseBlockMeta(info.Size, info.Metadata)
	if err != nil {
		return nil, blockMeta{}, &CorruptBlockError{Job: ns, Tensor: tensor, Block: block, Reason: err.Error()}
	}
	return info, m, nil
}
