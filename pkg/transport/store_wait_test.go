package transport_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// logBuf collects a logger's text output for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitServer runs a server whose users are a coordinator, a worker (any
// id, as in Kubernetes), tenant team-a's client and the admin, and
// returns a connection function for them.
func waitServer(t *testing.T) func(name string) *nats.Conn {
	t.Helper()
	subj := transport.NewSubjects("")
	ids := []struct {
		name string
		role transport.Role
		id   string
	}{
		{"coordinator", transport.RoleCoordinator, ""},
		{"worker", transport.RoleWorker, transport.AnyWorker},
		{"team-a", transport.RoleClient, "team-a"},
		{"admin", transport.RoleAdmin, ""},
	}
	var users []transport.EmbeddedUser
	for _, u := range ids {
		users = append(users, transport.EmbeddedUser{Name: u.name, Password: "pw-" + u.name, Permissions: subj.Permissions(u.role, u.id)})
	}
	e := transporttest.RunServerWith(t, transport.EmbeddedConfig{Users: users})
	return func(name string) *nats.Conn {
		t.Helper()
		for _, u := range ids {
			if u.name != name {
				continue
			}
			id := u.id
			if u.role == transport.RoleWorker {
				id = "worker-7d9f8b6c5d-x2x4q" // a pod name
			}
			cfg := transporttest.Config(e).ForRole(u.role, id)
			cfg.User, cfg.Password = name, "pw-"+name
			nc, err := transport.Connect(cfg, nil)
			must(t, err)
			t.Cleanup(nc.Close)
			return nc
		}
		t.Fatalf("no user %q", name)
		return nil
	}
}

// opened is what a background OpenStore returned.
type opened struct {
	s   *transport.Store
	err error
}

// openAsync runs OpenStore in the background, logging to the returned
// buffer.
func openAsync(ctx context.Context, nc *nats.Conn, cfg transport.StoreConfig) (*logBuf, <-chan opened) {
	logs := &logBuf{}
	done := make(chan opened, 1)
	go func() {
		s, err := transport.OpenStore(ctx, nc, cfg, slog.New(slog.NewTextHandler(logs, nil)))
		done <- opened{s, err}
	}()
	return logs, done
}

// TestStoreWaitsForABucketItMayNotCreate: a worker that starts before the
// coordinator (Kubernetes starts them in any order) finds no bucket and
// may not create one: it says so at once — not after the refused
// request's 5 s timeout — and waits; once the coordinator creates the
// bucket the worker opens it within the backoff's cap and they share
// blocks through it.
func TestStoreWaitsForABucketItMayNotCreate(t *testing.T) {
	conn := waitServer(t)
	ctx := ctxT(t, 60*time.Second)
	worker := conn("worker")
	start := time.Now()
	logs, done := openAsync(ctx, worker, transport.StoreConfig{Bucket: "ringattn"})

	var said time.Duration
	for said == 0 {
		select {
		case r := <-done:
			t.Fatalf("worker OpenStore returned before the bucket exists: %v", r.err)
		case <-time.After(10 * time.Millisecond):
		}
		if strings.Contains(logs.String(), "may not create it") {
			said = time.Since(start)
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("no log line about the wait after 3 s; logs:\n%s", logs)
		}
	}
	t.Logf("worker said it waits after %v: %s", said.Round(time.Millisecond), strings.TrimSpace(logs.String()))
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "bucket=ringattn") {
		t.Errorf("wait log line is not a WARN naming the bucket:\n%s", logs)
	}
	time.Sleep(500 * time.Millisecond) // still waiting, not failing
	select {
	case r := <-done:
		t.Fatalf("worker OpenStore gave up while ctx lasts: %v", r.err)
	default:
	}

	created := time.Now()
	cs, err := transport.OpenStore(ctx, conn("coordinator"), transport.StoreConfig{Bucket: "ringattn", Replicas: 1}, nil)
	must(t, err)
	var ws *transport.Store
	select {
	case r := <-done:
		must(t, r.err)
		ws = r.s
	case <-time.After(10 * time.Second):
		t.Fatal("worker still waiting 10 s after the coordinator created the bucket")
	}
	t.Logf("worker opened the bucket %v after the coordinator created it", time.Since(created).Round(time.Millisecond))
	if !strings.Contains(logs.String(), "exists now") {
		t.Errorf("no log line saying the wait ended:\n%s", logs)
	}
	vals := randVals(1, 1000)
	must(t, ws.PutBlock(ctx, "j1", transport.TensorO, 0, vals, transport.F32))
	got, err := cs.GetBlock(ctx, "j1", transport.TensorO, 0)
	must(t, err)
	equalF32(t, "block the worker wrote", got, vals)
}

// TestStoreWaitEndsWithCtx: at the limit, the wait ends with the caller's
// context (not before, not long after) with an error wrapping
// ErrPermission and the context's, naming the bucket; a bucket whose
// index lags it (created by hand, or the creator between its two
// streams) is waited for too, and opened once the index appears.
func TestStoreWaitEndsWithCtx(t *testing.T) {
	conn := waitServer(t)
	client := conn("team-a")
	bucket := transport.TenantBucket("", "team-a")

	const limit = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	_, err := transport.OpenStore(ctx, client, transport.StoreConfig{Bucket: bucket}, nil)
	took := time.Since(start)
	if !errors.Is(err, transport.ErrPermission) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), bucket) {
		t.Fatalf("open of a missing bucket until ctx ends: %v, want ErrPermission and DeadlineExceeded naming %q", err, bucket)
	}
	if took < limit-50*time.Millisecond || took > limit+time.Second {
		t.Errorf("gave up after %v, want at the ctx deadline %v", took, limit)
	}
	t.Logf("gave up after %v: %v", took.Round(time.Millisecond), err)

	// The admin creates the tenant's object store with its quota but not
	// yet its index: the client still waits.
	ctx2 := ctxT(t, 60*time.Second)
	js, err := jetstream.New(conn("admin"))
	must(t, err)
	_, err = js.CreateObjectStore(ctx2, jetstream.ObjectStoreConfig{Bucket: bucket, MaxBytes: 1 << 20})
	must(t, err)
	logs, done := openAsync(ctx2, client, transport.StoreConfig{Bucket: bucket})
	time.Sleep(time.Second)
	select {
	case r := <-done:
		t.Fatalf("client opened a bucket without its index: %v", r.err)
	default:
	}
	if !strings.Contains(logs.String(), bucket+"-index") {
		t.Errorf("wait log does not name the missing index:\n%s", logs)
	}
	_, err = js.CreateKeyValue(ctx2, jetstream.KeyValueConfig{Bucket: bucket + "-index"})
	must(t, err)
	var cst *transport.Store
	select {
	case r := <-done:
		must(t, r.err)
		cst = r.s
	case <-time.After(10 * time.Second):
		t.Fatal("client still waiting 10 s after its index appeared")
	}
	vals := randVals(2, 100)
	must(t, cst.PutBlock(ctx2, "j", transport.TensorQ, 0, vals, transport.F32))
	got, err := cst.GetBlock(ctx2, "j", transport.TensorQ, 0)
	must(t, err)
	equalF32(t, "team-a's block", got, vals)
	// The quota the admin set stays: the client's open changed nothing.
	st, err := cst.ObjectStore().Status(ctx2)
	must(t, err)
	if bs, ok := st.(*jetstream.ObjectBucketStatus); !ok || bs.StreamInfo().Config.MaxBytes != 1<<20 {
		t.Errorf("bucket status %+v: want the admin's MaxBytes 1 MiB", st)
	}
}

// TestStoreWaitFor: StoreConfig.WaitFor bounds the wait at the limit: a
// bucket that appears just before it is opened by the last look-up, one
// that does not ends the wait then with ErrPermission naming the bucket
// and the setting (the ctx still running); a negative WaitFor fails at the
// first refusal.
func TestStoreWaitFor(t *testing.T) {
	conn := waitServer(t)
	worker := conn("worker")
	ctx := ctxT(t, time.Minute)

	start := time.Now()
	_, err := transport.OpenStore(ctx, worker, transport.StoreConfig{Bucket: "never", WaitFor: -1}, nil)
	if !errors.Is(err, transport.ErrPermission) || time.Since(start) > time.Second {
		t.Errorf("WaitFor -1: %v after %v, want ErrPermission at once", err, time.Since(start))
	}

	const limit = 800 * time.Millisecond
	start = time.Now()
	_, err = transport.OpenStore(ctx, worker, transport.StoreConfig{Bucket: "never", WaitFor: limit}, nil)
	took := time.Since(start)
	if !errors.Is(err, transport.ErrPermission) || errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), `"never"`) || !strings.Contains(err.Error(), "WaitFor") {
		t.Errorf("WaitFor %v: %v, want ErrPermission naming the bucket and WaitFor", limit, err)
	}
	if took < limit || took > limit+time.Second {
		t.Errorf("WaitFor %v: gave up after %v", limit, took)
	}
	t.Logf("WaitFor %v: gave up after %v: %v", limit, took.Round(time.Millisecond), err)

	// The bucket appears 200 ms before the limit: the look-up at the
	// limit finds it.
	const limit2 = 1200 * time.Millisecond
	logs, done := openAsync(ctx, worker, transport.StoreConfig{Bucket: "late", WaitFor: limit2})
	time.Sleep(limit2 - 200*time.Millisecond)
	if _, err := transport.OpenStore(ctx, conn("coordinator"), transport.StoreConfig{Bucket: "late"}, nil); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("bucket created 200 ms before WaitFor %v: %v\n%s", limit2, r.err, logs)
	}
	t.Logf("opened at the limit: %s", strings.TrimSpace(logs.String()))
}
