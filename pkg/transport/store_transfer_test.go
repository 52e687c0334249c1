package transport_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// bitsEqual fails unless got and want hold the same float32 bit patterns.
func bitsEqual(t testing.TB, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: value %d = %v (%08x), want %v (%08x)", what, i, got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// natsPutLeak ignores a goroutine nats.go's object store Put can leave
// behind (v1.55.0, any Put of any caller): it starts
// resetPendingAcksOnReconnect, which reads the status channel under a lock
// that cleanupReplySub may take first and set the channel to nil, so the
// goroutine waits on a nil channel for good.
var natsPutLeak = goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect")

// withSpecials puts NaN, ±Inf, -0 and a subnormal into x (the wire
// carries bits, not numbers).
func withSpecials(x []float32) []float32 {
	sp := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1)), math.SmallestNonzeroFloat32}
	for i, v := range sp {
		x[(i*7919)%len(x)] = v
	}
	return x
}

// TestTransportStoreTensorsExact: tensors written by PutTensors with 1, 3
// and 8 blocks in flight (and by PutTensor) read back bit for bit by
// GetTensors and GetTensor with any other setting, block by block as the
// layout says (GetBlock equals ExtractBlock), for B·H > 1 and B·H = 1, a
// ragged last block, F32 and BF16.
func TestTransportStoreTensorsExact(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 120*time.Second)
	const blockLen = 64
	shapes := []transport.Shape{{2, 3, 1000, 16}, {1, 1, 777, 24}, {1, 2, 64, 8}, {1, 4, 900, 1}}
	for _, enc := range []transport.Encoding{transport.F32, transport.BF16} {
		for ti, transfers := range []int{1, 3, 8} {
			ns := fmt.Sprintf("exact-%v-%d", enc, transfers)
			var ts []transport.TensorData
			for i, sh := range shapes {
				ts = append(ts, transport.TensorData{Name: fmt.Sprintf("t%d", i), Shape: sh,
					Data: withSpecials(randVals(uint64(10*ti+i), sh[0]*sh[1]*sh[2]*sh[3]))})
			}
			must(t, s.PutTensors(ctx, ns, ts, blockLen, enc, transport.TransferOptions{Blocks: transfers}))
			// Read with another setting than the write's.
			other := transport.TransferOptions{Blocks: []int{5, 1, 2}[ti]}
			got, err := s.GetTensors(ctx, ns, ts, blockLen, other)
			must(t, err)
			for i, td := range ts {
				want := td.Data
				if enc == transport.BF16 {
					want = make([]float32, len(td.Data))
					for j, x := range td.Data {
						want[j] = transport.BF16ToF32(transport.F32ToBF16(x))
					}
				}
				bitsEqual(t, fmt.Sprintf("%s %s", ns, td.Name), got[i].Data, want)
				for b := range td.Shape.Blocks(blockLen) {
					blk, err := s.GetBlock(ctx, ns, td.Name, b)
					must(t, err)
					bitsEqual(t, fmt.Sprintf("%s %s block %d", ns, td.Name, b), blk, transport.ExtractBlock(want, td.Shape, blockLen, b))
				}
			}
		}
	}
	// The one-tensor calls, with the defaults.
	sh := transport.Shape{2, 2, 300, 32}
	data := withSpecials(randVals(99, 2*2*300*32))
	n, err := s.PutTensor(ctx, "exact-one", "q", data, sh, 128, transport.F32)
	must(t, err)
	if n != 3 {
		t.Fatalf("PutTensor returned %d blocks, want 3", n)
	}
	got, err := s.GetTensor(ctx, "exact-one", "q", sh, 128)
	must(t, err)
	bitsEqual(t, "PutTensor/GetTensor", got, data)
}

// TestTransportStorePutTensorsCanceled: canceling an upload of 64 blocks
// with 4 in flight, at several points, returns within the 1 s rule
// (bounded at 2 s here) with an error wrapping context.Canceled, leaves no
// goroutine behind, and leaves no partial tensor visible: the last block
// is written last, so GetTensor fails with ErrBlockNotFound, and a
// complete upload afterwards reads back exactly.
func TestTransportStorePutTensorsCanceled(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 180*time.Second)
	sh := transport.Shape{1, 4, 64 * 256, 64} // 64 blocks of 256 KiB
	const blockLen = 256
	data := randVals(5, sh[0]*sh[1]*sh[2]*sh[3])
	opts := transport.TransferOptions{Blocks: 4}
	ts := []transport.TensorData{{Name: "k", Data: data, Shape: sh}}
	start := time.Now()
	must(t, s.PutTensors(ctx, "cancel-full", ts, blockLen, transport.F32, opts))
	full := time.Since(start)
	t.Logf("uncanceled upload of 16 MiB in 64 blocks: %v", full)

	ignore := goleak.IgnoreCurrent()
	canceled := 0
	for i, frac := range []float64{0.02, 0.1, 0.3} {
		ns := fmt.Sprintf("cancel-%d", i)
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.PutTensors(cctx, ns, ts, blockLen, transport.F32, opts) }()
		time.Sleep(time.Duration(frac * float64(full)))
		cancel()
		at := time.Now()
		var err error
		select {
		case err = <-done:
		case <-time.After(2 * time.Second):
			t.Fatalf("canceled at %.0f%%: not returned after 2 s", 100*frac)
		}
		t.Logf("canceled at %.0f%% of the upload: returned after %v: %v", 100*frac, time.Since(at), err)
		if err == nil {
			continue // finished before the cancel
		}
		canceled++
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled upload: %v, want context.Canceled", err)
		}
		_, err = s.GetTensor(ctx, ns, "k", sh, blockLen)
		if !errors.Is(err, transport.ErrBlockNotFound) {
			t.Fatalf("GetTensor of a canceled upload: %v, want ErrBlockNotFound", err)
		}
	}
	if canceled == 0 {
		t.Fatal("no upload was canceled before it finished: the test measured nothing")
	}
	goleak.VerifyNone(t, ignore, natsPutLeak)
	// The namespace of a canceled upload takes a complete one.
	must(t, s.PutTensors(ctx, "cancel-0", ts, blockLen, transport.F32, opts))
	got, err := s.GetTensor(ctx, "cancel-0", "k", sh, blockLen)
	must(t, err)
	bitsEqual(t, "upload after a canceled one", got, data)
}

// TestTransportStorePutTensorsLimits: a tensor whose blocks are exactly
// StoreConfig.MaxBlockBytes is stored; one row more per block is refused
// with ErrTooLarge before any block is written (BF16 halves the bytes and
// fits again); a tensor past the bucket's MaxBytes fails with
// ErrStoreFull, stops, leaves no goroutine and no readable tensor; bad
// TransferOptions are refused.
func TestTransportStorePutTensorsLimits(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	ctx := ctxT(t, 120*time.Second)
	const d, rows = 64, 128
	s := transporttest.Store(t, nc, transport.StoreConfig{Bucket: "limits", MaxBlockBytes: 4 * 2 * rows * d})
	sh := transport.Shape{1, 2, 4 * rows, d}
	data := randVals(3, 2*4*rows*d)
	ts := []transport.TensorData{{Name: "q", Data: data, Shape: sh}}
	must(t, s.PutTensors(ctx, "at-limit", ts, rows, transport.F32, transport.TransferOptions{}))
	got, err := s.GetTensor(ctx, "at-limit", "q", sh, rows)
	must(t, err)
	bitsEqual(t, "blocks at MaxBlockBytes", got, data)

	err = s.PutTensors(ctx, "past-limit", ts, rows+1, transport.F32, transport.TransferOptions{})
	if !errors.Is(err, transport.ErrTooLarge) {
		t.Fatalf("blocks past MaxBlockBytes: %v, want ErrTooLarge", err)
	}
	t.Logf("past MaxBlockBytes: %v", err)
	nss, err := s.Namespaces(ctx)
	must(t, err)
	for _, ni := range nss {
		if ni.Name == "past-limit" {
			t.Fatalf("a refused upload wrote %d objects", ni.Objects)
		}
	}
	must(t, s.PutTensors(ctx, "past-limit-bf16", ts, rows+1, transport.BF16, transport.TransferOptions{}))

	for _, o := range []transport.TransferOptions{{Blocks: -1}, {Blocks: transport.MaxTransfers + 1}, {Bytes: -1}} {
		if err := s.PutTensors(ctx, "bad-opts", ts, rows, transport.F32, o); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Fatalf("PutTensors with %+v: %v, want ErrInvalidConfig", o, err)
		}
		if _, err := s.GetTensors(ctx, "at-limit", ts, rows, o); !errors.Is(err, transport.ErrInvalidConfig) {
			t.Fatalf("GetTensors with %+v: %v, want ErrInvalidConfig", o, err)
		}
	}

	// The bucket's quota: 1 MiB, an 8 MiB tensor in 64 KiB blocks.
	full := transporttest.Store(t, nc, transport.StoreConfig{Bucket: "quota", MaxBytes: 1 << 20})
	big := transport.Shape{1, 1, 2048, 1024}
	ignore := goleak.IgnoreCurrent()
	start := time.Now()
	err = full.PutTensors(ctx, "over-quota", []transport.TensorData{{Name: "k", Data: randVals(4, 2048*1024), Shape: big}},
		16, transport.F32, transport.TransferOptions{Blocks: 8})
	if !errors.Is(err, transport.ErrStoreFull) {
		t.Fatalf("upload past the bucket's MaxBytes: %v, want ErrStoreFull", err)
	}
	t.Logf("past the quota after %v: %v", time.Since(start), err)
	goleak.VerifyNone(t, ignore, natsPutLeak)
	if _, err := full.GetTensor(ctx, "over-quota", "k", big, 16); !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("GetTensor of an upload stopped by the quota: %v, want ErrBlockNotFound", err)
	}
}

// BenchmarkTransportStoreTensor measures PutTensor and GetTensor of a
// [1, 8, 16384, 128] tensor (64 MiB; 16 blocks of 4 MiB at the default
// block length 1024) and of its lse-like [1, 8, 16384, 1] (16 blocks of
// 32 KiB) with 1 (the old sequential path), 2, 4 and 8 blocks in flight.
func BenchmarkTransportStoreTensor(b *testing.B) {
	e := transporttest.RunServer(b)
	nc := transporttest.Connect(b, e)
	s := transporttest.Store(b, nc, transport.StoreConfig{Bucket: "benchtensor"})
	ctx := context.Background()
	for _, sh := range []transport.Shape{{1, 8, 16384, 128}, {1, 8, 16384, 1}} {
		data := randVals(1, sh[0]*sh[1]*sh[2]*sh[3])
		ts := []transport.TensorData{{Name: "q", Data: data, Shape: sh}}
		for _, transfers := range []int{1, 2, 4, 8} {
			opts := transport.TransferOptions{Blocks: transfers}
			name := fmt.Sprintf("D=%d/transfers=%d", sh[3], transfers)
			b.Run("put/"+name, func(b *testing.B) {
				b.SetBytes(int64(len(data) * 4))
				for range b.N {
					must(b, s.PutTensors(ctx, "bench", ts, 1024, transport.F32, opts))
				}
			})
			b.Run("get/"+name, func(b *testing.B) {
				b.SetBytes(int64(len(data) * 4))
				for range b.N {
					if _, err := s.GetTensors(ctx, "bench", ts, 1024, opts); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
