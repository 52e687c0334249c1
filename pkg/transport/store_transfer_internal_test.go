package transport

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTransportForBlocksLimit: forBlocks runs exactly min(workers, blocks)
// calls at once, at the limit (as many blocks as workers) and past it
// (three times as many), never more, and every block once, started in
// order.
func TestTransportForBlocksLimit(t *testing.T) {
	for _, c := range []struct{ workers, blocks, want int }{
		{1, 5, 1}, {4, 4, 4}, {4, 12, 4}, {4, 3, 3}, {8, 40, 8}, {0, 3, 1},
	} {
		blocks := make([]tensorBlock, c.blocks)
		for i := range blocks {
			blocks[i] = tensorBlock{t: i % 2, i: i}
		}
		var running, peak atomic.Int64
		var mu sync.Mutex
		var order []int
		seen := make([]atomic.Int32, c.blocks)
		err := forBlocks(context.Background(), blocks, c.workers, func(_ context.Context, b tensorBlock) error {
			mu.Lock()
			order = append(order, b.i)
			mu.Unlock()
			n := running.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			seen[b.i].Add(1)
			time.Sleep(5 * time.Millisecond) // long enough for every worker to start one
			running.Add(-1)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := int(peak.Load()); got != c.want {
			t.Errorf("%d workers, %d blocks: %d calls at once, want %d", c.workers, c.blocks, got, c.want)
		}
		for i := range seen {
			if n := seen[i].Load(); n != 1 {
				t.Errorf("%d workers, %d blocks: block %d called %d times", c.workers, c.blocks, i, n)
			}
		}
		for i := 1; i < len(order); i++ {
			// Started in order up to the race between two workers taking
			// consecutive indexes: never more than workers apart.
			if order[i] < order[i-1]-c.workers {
				t.Errorf("%d workers: start order %v", c.workers, order)
				break
			}
		}
	}
}

// TestTransportForBlocksFirstError: the first failure cancels the calls
// running, starts no other and is returned (not the cancellations it
// caused); a canceled ctx is wrapped around it.
func TestTransportForBlocksFirstError(t *testing.T) {
	boom := errors.New("boom")
	blocks := make([]tensorBlock, 100)
	for i := range blocks {
		blocks[i].i = i
	}
	var started atomic.Int64
	err := forBlocks(context.Background(), blocks, 4, func(ctx context.Context, b tensorBlock) error {
		started.Add(1)
		if b.i == 5 {
			return boom
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
			return nil
		}
	})
	if !errors.Is(err, boom) || errors.Is(err, context.Canceled) {
		t.Fatalf("forBlocks: %v, want boom alone", err)
	}
	if n := started.Load(); n > 5+4 {
		t.Fatalf("%d calls started after the failure of block 5 with 4 workers", n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	err = forBlocks(ctx, blocks, 4, func(ctx context.Context, b tensorBlock) error {
		if b.i == 2 { // among the first calls of 4 workers
			cancel()
		}
		<-ctx.Done()
		return errors.New("transfer stopped")
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("forBlocks with ctx canceled: %v, want context.Canceled", err)
	}
	if err := forBlocks(ctx, nil, 4, nil); err != nil {
		t.Fatalf("forBlocks of no block: %v", err)
	}
}

// TestTransportTransferInFlight: the byte budget lowers the blocks in
// flight for large blocks, never below one; the defaults apply to zeros.
func TestTransportTransferInFlight(t *testing.T) {
	for _, c := range []struct {
		o     TransferOptions
		bytes int64
		want  int
	}{
		{TransferOptions{}, 4 << 20, DefaultTransfers},
		{TransferOptions{Blocks: 16}, 4 << 20, 16},
		{TransferOptions{Blocks: 16, Bytes: 8 << 20}, 4 << 20, 2},
		{TransferOptions{Blocks: 16, Bytes: 9 << 20}, 4 << 20, 2},
		{TransferOptions{Blocks: 16, Bytes: 1 << 20}, 4 << 20, 1},
		{TransferOptions{}, 1 << 30, 1},
		{TransferOptions{Blocks: MaxTransfers}, 4, MaxTransfers},
		{TransferOptions{Blocks: 3}, 0, 3},
	} {
		got, err := c.o.inFlight(c.bytes)
		if err != nil || got != c.want {
			t.Errorf("%+v with blocks of %d bytes: %d, %v; want %d", c.o, c.bytes, got, err, c.want)
		}
	}
}
