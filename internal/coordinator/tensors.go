package coordinator

import (
	"context"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/ringattn/ringattn/pkg/transport"
)

// TensorDeleterFunc adapts a function to TensorDeleter.
type TensorDeleterFunc func(ctx context.Context, job string) error

// DeleteJob implements TensorDeleter.
func (f TensorDeleterFunc) DeleteJob(ctx context.Context, job string) error { return f(ctx, job) }

// storeDeleter deletes through the JetStream object store bucket, opened
// on first use (so a coordinator starts even before JetStream is up).
type storeDeleter struct {
	nc     *nats.Conn
	bucket string
	log    *slog.Logger

	mu    sync.Mutex
	store *transport.Store
}

// DeleteJob implements TensorDeleter.
func (d *storeDeleter) DeleteJob(ctx context.Context, job string) error {
	d.mu.Lock()
	if d.store == nil {
		st, err := transport.OpenStore(ctx, d.nc, transport.StoreConfig{Bucket: d.bucket}, d.log)
		if err != nil {
			d.mu.Unlock()
			return err
		}
		d.store = st
	}
	st := d.store
	d.mu.Unlock()
	n, err := st.DeleteJob(ctx, job)
	if err == nil && n > 0 {
		d.log.Info("deleted expired tensors", "namespace", job, "objects", n)
	}
	return err
}
