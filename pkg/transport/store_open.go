package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Waiting for a bucket this identity may not create (see openStore).
const (
	storeWaitFirst = 100 * time.Millisecond
	storeWaitMax   = 5 * time.Second
	storeWaitLog   = 30 * time.Second // how often the wait is logged again
)

// errBucketMissing is openAttempt's: the bucket or its index does not
// exist, and this identity may not create it (or was refused before).
var errBucketMissing = errors.New("tensor bucket missing")

// openStore binds or creates the bucket. An identity the server refuses
// the creation (a worker or a client; only the coordinator and the admin
// create buckets, with their quota) waits for the bucket to appear,
// looking it up with backoff and logging why, for cfg.WaitFor or until
// ctx ends: Kubernetes starts workers and gateways before the
// coordinator.
func openStore(ctx context.Context, js jetstream.JetStream, cfg, asked StoreConfig, storage jetstream.StorageType, logger *slog.Logger) (*Store, error) {
	var start, logged time.Time
	wait := storeWaitFirst
	mayCreate := true
	gaveUp := func(cause error) error {
		return fmt.Errorf("%w: tensor bucket %q does not exist and this identity may not create it: "+
			"gave up after waiting %v for the coordinator or an admin to create it (with its quota): %w",
			ErrPermission, cfg.Bucket, time.Since(start).Round(time.Millisecond), cause)
	}
	for {
		s, err := openAttempt(ctx, js, cfg, asked, storage, mayCreate, logger)
		if err == nil {
			if !mayCreate {
				logger.Info("tensor store bucket exists now", "bucket", cfg.Bucket, "waited", time.Since(start).Round(time.Millisecond))
			}
			return s, nil
		}
		if mayCreate && !errors.Is(err, errBucketMissing) {
			return nil, err
		}
		if !mayCreate && !errors.Is(err, errBucketMissing) && !transient(err) {
			return nil, err
		}
		if mayCreate {
			mayCreate, start = false, time.Now()
		}
		left := cfg.WaitFor - time.Since(start)
		if left <= 0 {
			return nil, gaveUp(fmt.Errorf("StoreConfig.WaitFor %v: %w", cfg.WaitFor, err))
		}
		if ctx.Err() == nil && time.Since(logged) >= storeWaitLog {
			logged = time.Now()
			logger.Warn("tensor store bucket does not exist yet and this identity may not create it: "+
				"waiting for the coordinator (or an admin, for a tenant's bucket) to create it",
				"bucket", cfg.Bucket, "waited", time.Since(start).Round(time.Millisecond), "wait_for", cfg.WaitFor, "err", err)
		}
		t := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, gaveUp(context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, storeWaitMax)
	}
}

// openAttempt binds the bucket and its index once, creating what is
// missing if mayCreate. It returns an error wrapping errBucketMissing when
// something is missing and the server refused its creation (seen as soon
// as the server reports it: the refused request itself only times out),
// or, without mayCreate, when something is missing.
func openAttempt(ctx context.Context, js jetstream.JetStream, cfg, asked StoreConfig, storage jetstream.StorageType, mayCreate bool, logger *slog.Logger) (*Store, error) {
	nc := js.Conn()
	obs, err := js.ObjectStore(ctx, cfg.Bucket)
	created := false
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if !mayCreate {
			return nil, fmt.Errorf("%w: object store %q not found", errBucketMissing, cfg.Bucket)
		}
		wctx, denied := watchCreateDenied(ctx, nc, cfg.Bucket)
		obs, err = js.CreateObjectStore(wctx, jetstream.ObjectStoreConfig{
			Bucket:      cfg.Bucket,
			Description: "ringattn tensor blocks",
			TTL:         cfg.TTL,
			MaxBytes:    orUnlimited(cfg.MaxBytes),
			Storage:     storage,
			Replicas:    cfg.Replicas,
		})
		if denied() || (err != nil && createDenied(nc.LastError(), cfg.Bucket)) {
			return nil, fmt.Errorf("%w: creating object store %q refused: %v", errBucketMissing, cfg.Bucket, nc.LastError())
		}
		created = err == nil
		if errors.Is(err, jetstream.ErrBucketExists) {
			obs, err = js.ObjectStore(ctx, cfg.Bucket) // lost a creation race
		}
	}
	if err != nil {
		if perr := permissionError(nc, cfg.Bucket, err); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("transport: object store bucket %q: %w", cfg.Bucket, err)
	}
	if !mayCreate {
		// The index may lag its bucket (the creator makes it second).
		if _, err := js.KeyValue(ctx, indexBucket(cfg.Bucket)); errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("%w: index %q not found", errBucketMissing, indexBucket(cfg.Bucket))
		} else if err != nil {
			return nil, fmt.Errorf("transport: tensor store index bucket %q: %w", indexBucket(cfg.Bucket), err)
		}
	}
	s := &Store{js: js, obs: obs, cfg: cfg, logger: logger}
	if !created {
		s.checkSettings(ctx, asked)
	}
	wctx, denied := watchCreateDenied(ctx, nc, cfg.Bucket)
	err = s.openIndex(wctx, storage)
	if denied() || (err != nil && createDenied(nc.LastError(), cfg.Bucket)) {
		return nil, fmt.Errorf("%w: creating index %q refused: %v", errBucketMissing, indexBucket(cfg.Bucket), nc.LastError())
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// createDenied reports whether last (a connection's last error) is the
// server refusing the creation of bucket's object store or index stream,
// or the account information request creating a key/value bucket starts
// with (which only a creator may make).
func createDenied(last error, bucket string) bool {
	if last == nil || !errors.Is(last, nats.ErrPermissionViolation) {
		return false
	}
	m := last.Error()
	return strings.Contains(m, `$JS.API.STREAM.CREATE.OBJ_`+bucket+`"`) ||
		strings.Contains(m, `$JS.API.STREAM.CREATE.KV_`+indexBucket(bucket)+`"`) ||
		strings.Contains(m, `Publish to "$JS.API.INFO"`)
}

// watchCreateDenied returns a context derived from ctx that ends as soon
// as nc reports a new refusal to create bucket's streams, and a function
// ending the watch that reports whether that happened.
func watchCreateDenied(ctx context.Context, nc *nats.Conn, bucket string) (context.Context, func() bool) {
	prev := nc.LastError()
	wctx, cancel := context.WithCancel(ctx)
	var fired atomic.Bool
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-wctx.Done():
				return
			case <-t.C:
				if last := nc.LastError(); last != prev && createDenied(last, bucket) {
					fired.Store(true)
					cancel()
					return
				}
			}
		}
	}()
	return wctx, func() bool {
		close(done)
		cancel()
		return fired.Load()
	}
}
