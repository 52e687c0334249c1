package transport_test

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// TestTransportStoreShapeOverflow: a shape whose value count overflows, or
// a block length near the int limit, is refused or computed without
// wrapping (GetTensor used to size its result by the wrapped product and
// read no block for blockLen = MaxInt).
func TestTransportStoreShapeOverflow(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	big := 1 << 16
	for _, sh := range []transport.Shape{{big, big, big, big}, {1, 1, math.MaxInt, 2}, {2, 2, math.MaxInt / 8, 1}} {
		if _, err := s.GetTensor(ctx, "job-s", "q", sh, 4); !errors.Is(err, transport.ErrInvalidShape) {
			t.Fatalf("GetTensor of shape %v: %v, want ErrInvalidShape", sh, err)
		}
	}
	// At the limit the shape is valid (the block is then simply missing).
	if _, err := s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 1, transport.MaxTensorValues}, 1); !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("GetTensor of %d values: %v, want ErrBlockNotFound", transport.MaxTensorValues, err)
	}
	must(t, s.PutBlock(ctx, "job-s", "q", 0, []float32{1, 2, 3}, transport.F32))
	got, err := s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 3, 1}, math.MaxInt)
	must(t, err)
	equalF32(t, "tensor with block length MaxInt", got, []float32{1, 2, 3})
	// A shape claiming more rows than were stored (1 GiB of values): the
	// missing last block is found before anything is sized by the claim.
	var err2 error
	alloc := allocatedBy(func() { _, err2 = s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 1 << 28, 1}, 1<<20) })
	if !errors.Is(err2, transport.ErrBlockNotFound) || alloc > 4<<20 {
		t.Fatalf("GetTensor claiming 2^28 values: %v after allocating %d bytes; want ErrBlockNotFound, under 4 MiB", err2, alloc)
	}
	// A last block of another size than the shape implies.
	if _, err := s.GetTensor(ctx, "job-s", "q", transport.Shape{1, 1, 4, 1}, 4); !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("GetTensor of 4 rows stored as 3: %v, want ErrCorrupt", err)
	}
	if n := (transport.Shape{1, 1, 10, 1}).Blocks(math.MaxInt); n != 1 {
		t.Fatalf("Blocks(MaxInt) of 10 rows = %d, want 1", n)
	}
}
