package client

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// transferClient returns a client of a fresh embedded server (no
// coordinator: only the store answers) and the store, whose bucket was
// created with quota bytes (0: unlimited).
func transferClient(t *testing.T, opts Options, quota int64) (*Client, *transport.Store) {
	t.Helper()
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	cfg := transporttest.Config(e)
	st := transporttest.Store(t, nc, transport.StoreConfig{Bucket: transport.TenantBucket(cfg.Bucket, ""), MaxBytes: quota})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := New(ctx, transport.NewConn(nc, cfg.Subjects(), nil), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, st
}

// inputNamespaces lists the namespaces of uploads ("in-...") with objects.
func inputNamespaces(t *testing.T, st *transport.Store) []transport.NamespaceInfo {
	t.Helper()
	nss, err := st.Namespaces(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []transport.NamespaceInfo
	for _, ni := range nss {
		if strings.HasPrefix(ni.Name, "in-") {
			out = append(out, ni)
		}
	}
	return out
}

func bitsEqual(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: value %d = %v, want %v", what, i, got[i], want[i])
		}
	}
}

// TestClientUploadExact: the SDK's concurrent upload of q, k and v (3
// blocks in flight) stores them bit for bit as the store's tensor layout
// says, read back by the SDK's concurrent download.
func TestClientUploadExact(t *testing.T) {
	c, st := transferClient(t, Options{Transfers: 3}, 0)
	ctx := context.Background()
	r := testrand.New(3)
	q := tensor.New(r.Slice(2*3*700*16, testrand.Normal), 2, 3, 700, 16)
	k := tensor.New(r.Slice(2*1*500*16, testrand.Normal), 2, 1, 500, 16)
	q.Data[5] = float32(math.NaN())
	ups := []upload{{transport.TensorQ, q, q.Shape}, {transport.TensorK, k, k.Shape}}
	if err := c.uploadInputs(ctx, st, "in-exact", ups, 64); err != nil {
		t.Fatal(err)
	}
	var gq, gk *tensor.Tensor
	err := c.fetchOutputs(ctx, st, "in-exact", 64, []download{
		{transport.TensorQ, transport.Shape(q.Shape), q.Shape, &gq}, {transport.TensorK, transport.Shape(k.Shape), k.Shape, &gk},
	})
	if err != nil {
		t.Fatal(err)
	}
	bitsEqual(t, "q", gq.Data, q.Data)
	bitsEqual(t, "k", gk.Data, k.Data)
}

// TestClientSubmitCanceledMidUpload: canceling SubmitAttention while it
// uploads returns within the 1 s rule (2 s here) with an error wrapping
// context.Canceled, and leaves no upload namespace behind (its blocks are
// deleted), so nothing partial stays visible or counts against a quota.
func TestClientSubmitCanceledMidUpload(t *testing.T) {
	c, st := transferClient(t, Options{Transfers: 4}, 0)
	r := testrand.New(4)
	const h, n, d = 4, 16384, 64 // 16 MiB a tensor, 64 blocks of 256 rows
	mk := func() *tensor.Tensor { return tensor.New(r.Slice(h*n*d, testrand.Normal), 1, h, n, d) }
	q, k, v := mk(), mk(), mk()
	ups := []upload{{transport.TensorQ, q, q.Shape}, {transport.TensorK, k, k.Shape}, {transport.TensorV, v, v.Shape}}
	start := time.Now()
	if err := c.uploadInputs(context.Background(), st, "in-full", ups, 256); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	t.Logf("uncanceled upload of 48 MiB: %v", full)

	canceled := 0
	for _, frac := range []float64{0.05, 0.2} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := c.SubmitAttention(ctx, q, k, v, false, JobOptions{Block: 256})
			done <- err
		}()
		time.Sleep(time.Duration(frac * float64(full)))
		cancel()
		at := time.Now()
		var err error
		select {
		case err = <-done:
		case <-time.After(2 * time.Second):
			t.Fatalf("canceled at %.0f%%: SubmitAttention not returned after 2 s", 100*frac)
		}
		t.Logf("canceled at %.0f%% of the upload: returned after %v: %v", 100*frac, time.Since(at), err)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled submit: %v, want context.Canceled", err)
		}
		if strings.Contains(err.Error(), "uploading") {
			canceled++
		}
	}
	if canceled == 0 {
		t.Fatal("no submit was canceled during its upload: the test measured nothing")
	}
	for _, ni := range inputNamespaces(t, st) {
		if ni.Name != "in-full" {
			t.Errorf("namespace %s of a canceled upload left %d objects (%d bytes)", ni.Name, ni.Objects, ni.Bytes)
		}
	}
}

// TestClientUploadOverQuota: an upload past the bucket's quota fails with
// ErrStoreFull, deletes what it wrote (the quota is free again: a smaller
// upload fits after it) and leaves no namespace behind.
func TestClientUploadOverQuota(t *testing.T) {
	c, st := transferClient(t, Options{Transfers: 8}, 4<<20)
	r := testrand.New(5)
	big := tensor.New(r.Slice(1*2*4096*128, testrand.Normal), 1, 2, 4096, 128) // 4 MiB
	_, err := c.SubmitAttention(context.Background(), big, big, big, false, JobOptions{Block: 256})
	if !errors.Is(err, transport.ErrStoreFull) {
		t.Fatalf("upload of 12 MiB into a 4 MiB bucket: %v, want ErrStoreFull", err)
	}
	t.Logf("over quota: %v", err)
	if left := inputNamespaces(t, st); len(left) != 0 {
		t.Fatalf("an upload stopped by the quota left %+v", left)
	}
	small := tensor.New(r.Slice(1*2*2048*128, testrand.Normal), 1, 2, 2048, 128) // 2 MiB
	if err := c.uploadInputs(context.Background(), st, "in-after", []upload{{transport.TensorQ, small, small.Shape}}, 256); err != nil {
		t.Fatalf("upload of 2 MiB after the failed one: %v (its blocks were not deleted?)", err)
	}
}

// TestClientTransferOptions: the transfer knobs are checked by New.
func TestClientTransferOptions(t *testing.T) {
	e := transporttest.RunServer(t)
	conn := transport.NewConn(transporttest.Connect(t, e), transporttest.Config(e).Subjects(), nil)
	ctx := context.Background()
	for _, o := range []Options{{Transfers: -1}, {Transfers: transport.MaxTransfers + 1}, {TransferBytes: -1}} {
		if _, err := New(ctx, conn, transporttest.Config(e), o); !errors.Is(err, ErrInvalid) {
			t.Errorf("New with %+v: %v, want ErrInvalid", o, err)
		}
	}
	for _, o := range []Options{{Transfers: 1}, {Transfers: transport.MaxTransfers, TransferBytes: 1}} {
		if _, err := New(ctx, conn, transporttest.Config(e), o); err != nil {
			t.Errorf("New with %+v: %v", o, err)
		}
	}
}
