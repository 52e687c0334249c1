package coordinator

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
)

// TensorDeleterFunc adapts a function to TensorDeleter.
type TensorDeleterFunc func(ctx context.Context, job string) error

// DeleteJob implements TensorDeleter.
func (f TensorDeleterFunc) DeleteJob(ctx context.Context, job string) error { return f(ctx, job) }

// outputStore is what the leader needs from the tensor store beyond
// deleting a job's tensors: a block's recorded checksum (to check outputs
// before a job succeeds, and when a client gets it) and the namespaces (to
// sweep abandoned uploads). *transport.Store has it; so does the default
// Deps.Tensors. A Deps.Tensors without it disables both checks.
type outputStore interface {
	BlockInfo(ctx context.Context, ns, tensor string, block int) (transport.BlockInfo, error)
	Namespaces(ctx context.Context) ([]transport.NamespaceInfo, error)
	DeleteNamespace(ctx context.Context, ns string) (int, error)
}

// tensorsOf is the store of owner's tensors: its bucket
// (transport.TenantBucket of Config.NATS.Bucket), opened on first use and
// kept; or, when Deps.Tensors was injected, its store of that bucket
// (BucketTensors) or itself (one store for every tenant).
func (c *Coordinator) tensorsOf(owner string) TensorDeleter {
	if c.stores != nil {
		return c.stores.bucket(transport.TenantBucket(c.bucket(), owner))
	}
	if bt, ok := c.deps.Tensors.(BucketTensors); ok {
		return bt.ForBucket(transport.TenantBucket(c.bucket(), owner))
	}
	return c.deps.Tensors
}

// perBucket reports whether each tenant's tensors are in a store of their
// own (tensorsOf differs by owner).
func (c *Coordinator) perBucket() bool {
	_, ok := c.deps.Tensors.(BucketTensors)
	return c.stores != nil || ok
}

// BucketTensors is a Deps.Tensors that reaches every tenant's bucket:
// ForBucket returns the store of one bucket (transport.TenantBucket of
// Config.NATS.Bucket and the job's owner). A Deps.Tensors without it
// serves every tenant's jobs from its one store.
type BucketTensors interface {
	TensorDeleter
	ForBucket(bucket string) TensorDeleter
}

// outputsOf returns the store to check owner's outputs against (nil:
// none).
func (c *Coordinator) outputsOf(owner string) outputStore {
	st, _ := c.tensorsOf(owner).(outputStore)
	return st
}

// bucketStores reaches every tenant's bucket: one storeDeleter per
// bucket, made on first use and kept (each opens its store lazily).
type bucketStores struct {
	conn *transport.Conn
	cfg  transport.StoreConfig // the base bucket's; another bucket differs in its name only
	log  *slog.Logger

	mu sync.Mutex
	m  map[string]*storeDeleter
}

func newBucketStores(conn *transport.Conn, cfg transport.StoreConfig, log *slog.Logger) *bucketStores {
	return &bucketStores{conn: conn, cfg: cfg, log: log, m: map[string]*storeDeleter{}}
}

// bucket returns the store of bucket name.
func (b *bucketStores) bucket(name string) *storeDeleter {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, ok := b.m[name]
	if !ok {
		cfg := b.cfg
		cfg.Bucket = name
		d = &storeDeleter{conn: b.conn, cfg: cfg, log: b.log}
		b.m[name] = d
	}
	return d
}

// storeDeleter reaches the JetStream object store bucket, opened on first
// use (so a coordinator starts even before JetStream is up).
type storeDeleter struct {
	conn *transport.Conn
	cfg  transport.StoreConfig // Config.NATS.StoreConfig(): bucket, replicas, max bytes, TTL
	log  *slog.Logger

	mu    sync.Mutex
	store *transport.Store
}

// open returns the store, opening it on first use. The mutex guards only
// the field: the open itself runs without it (two racing opens both work;
// one wins).
func (d *storeDeleter) open(ctx context.Context) (*transport.Store, error) {
	d.mu.Lock()
	st := d.store
	d.mu.Unlock()
	if st != nil {
		return st, nil
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := d.conn.OpenStore(octx, d.cfg)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.store == nil {
		d.store = st
		d.log.Info("tensor store open", "bucket", d.cfg.Bucket, "replicas", max(d.cfg.Replicas, 1),
			"max_bytes", d.cfg.MaxBytes, "ttl", d.cfg.TTL)
	}
	return d.store, nil
}

// openAtStart creates (or binds) the bucket at startup with the
// configured replicas, size limit and TTL, so that a client cannot create
// it first with defaults; JetStream may come up after the coordinator, so
// it retries with backoff until stop closes. Later uses open it anyway.
func (d *storeDeleter) openAtStart(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	wait := 500 * time.Millisecond
	for {
		_, err := d.open(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		d.log.Debug("tensor store not reachable yet; retrying", "bucket", d.cfg.Bucket, "err", err, "in", wait)
		select {
		case <-stop:
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// DeleteJob implements TensorDeleter.
func (d *storeDeleter) DeleteJob(ctx context.Context, job string) error {
	st, err := d.open(ctx)
	if err != nil {
		return err
	}
	n, err := st.DeleteJob(ctx, job)
	if err == nil && n > 0 {
		d.log.Info("deleted expired tensors", "namespace", job, "objects", n)
	}
	return err
}

// BlockInfo implements outputStore.
func (d *storeDeleter) BlockInfo(ctx context.Context, ns, tensor string, block int) (transport.BlockInfo, error) {
	st, err := d.open(ctx)
	if err != nil {
		return transport.BlockInfo{}, err
	}
	return st.BlockInfo(ctx, ns, tensor, block)
}

// Namespaces implements outputStore.
func (d *storeDeleter) Namespaces(ctx context.Context) ([]transport.NamespaceInfo, error) {
	st, err := d.open(ctx)
	if err != nil {
		return nil, err
	}
	return st.Namespaces(ctx)
}

// DeleteNamespace implements outputStore.
func (d *storeDeleter) DeleteNamespace(ctx context.Context, ns string) (int, error) {
	st, err := d.open(ctx)
	if err != nil {
		return 0, err
	}
	return st.DeleteNamespace(ctx, ns)
}
