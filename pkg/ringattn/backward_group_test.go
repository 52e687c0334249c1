package ringattn

import (
	"context"
	"slices"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// TestMemGradSinkReserve: a head range written in place is reserved: a
// straggler's write to it is dropped, a second reservation refused; a
// failed in-place write leaves it zero and unwritten, a good one counts
// as the epoch's write.
func TestMemGradSinkReserve(t *testing.T) {
	p := kernels.Params{Shape: kernels.Shape{B: 1, Hq: 2, Hkv: 2, D: 4}, N: 8, Nk: 8}
	s, err := NewMemGradSink(&p, 8)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keys := []headKey{{false, 0, 0}}
	if !s.reserve(keys) {
		t.Fatal("first reservation refused")
	}
	if s.reserve(keys) {
		t.Fatal("a reserved range reserved twice")
	}
	ones := slices.Repeat([]float32{1}, 8*4)
	if err := s.PutDQHeads(ctx, 1, 0, 0, 1, ones); err != nil {
		t.Fatal(err)
	}
	if s.headWrites[keys[0]] != nil || s.dq[0] != 0 {
		t.Fatalf("a straggler's write to a reserved range was kept: writes %v, dq[0] %v", s.headWrites[keys[0]], s.dq[0])
	}
	region := s.dq[:8*4]
	region[0] = 7 // a partial in-place write
	s.release(keys, 2, false, [][]float32{region})
	if s.dq[0] != 0 || s.headWrites[keys[0]] != nil || s.reserved[keys[0]] {
		t.Fatalf("after a failed write: dq[0] %v, writes %v, reserved %v", s.dq[0], s.headWrites[keys[0]], s.reserved[keys[0]])
	}
	if !s.reserve(keys) {
		t.Fatal("reservation refused after a failed write")
	}
	region[0] = 3
	s.release(keys, 3, true, [][]float32{region})
	if got := s.headWrites[keys[0]]; !slices.Equal(got, []uint64{3}) || s.dq[0] != 3 {
		t.Fatalf("after a good write: writes %v, dq[0] %v", got, s.dq[0])
	}
	if s.reserve(keys) {
		t.Fatal("a written range reserved")
	}
	if err := s.PutDQHeads(ctx, 4, 0, 0, 1, ones); err != nil {
		t.Fatal(err)
	}
	if got := s.headWrites[keys[0]]; !slices.Equal(got, []uint64{3, 4}) || s.dq[0] != 3 {
		t.Fatalf("a later write replaced the first: writes %v, dq[0] %v", got, s.dq[0])
	}
}
