package transport_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// seqTensor is a [B, H, N, D] tensor whose values name their place.
func seqTensor(sh transport.Shape) []float32 {
	t := make([]float32, sh[0]*sh[1]*sh[2]*sh[3])
	for i := range t {
		t[i] = float32(i%9973) + 0.25
	}
	return t
}

// TestTransportStoreGetHeads: every head range of every block of tensors
// uploaded by PutTensors reads back as the same range cut from the whole
// block (f32 and bf16, one and several batches, ragged last block), and
// moves only those heads' bytes when a head fills a chunk.
func TestTransportStoreGetHeads(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 60*time.Second)
	for _, tc := range []struct {
		sh       transport.Shape
		blockLen int
		enc      transport.Encoding
	}{
		{transport.Shape{1, 8, 2048 + 100, 64}, 1024, transport.F32}, // 256 KiB heads: a chunk each
		{transport.Shape{2, 4, 300, 16}, 128, transport.F32},         // small heads: several a chunk
		{transport.Shape{1, 4, 1024, 128}, 1024, transport.BF16},
		{transport.Shape{3, 2, 5, 1}, 2, transport.F32}, // lse-like, D = 1
	} {
		ns := fmt.Sprintf("heads-%d-%d-%d-%v", tc.sh[0], tc.sh[1], tc.sh[2], tc.enc)
		must(t, s.PutTensors(ctx, ns, []transport.TensorData{{Name: "q", Data: seqTensor(tc.sh), Shape: tc.sh}}, tc.blockLen, tc.enc, transport.TransferOptions{}))
		for blk := range tc.sh.Blocks(tc.blockLen) {
			full, err := s.GetBlock(ctx, ns, "q", blk)
			must(t, err)
			for h0 := range tc.sh[1] {
				for h1 := h0 + 1; h1 <= tc.sh[1]; h1++ {
					r := transport.HeadRange{B: tc.sh[0], Heads: tc.sh[1], H0: h0, H1: h1}
					want, err := r.Cut(full)
					must(t, err)
					before := s.Stats().GetBytes
					got, err := s.GetHeads(ctx, ns, "q", blk, r)
					must(t, err)
					equalF32(t, fmt.Sprintf("%s block %d heads %d..%d", ns, blk, h0, h1-1), got, want)
					moved := s.Stats().GetBytes - before
					if wantBytes := int64(len(want) * tc.enc.ElemBytes()); moved != wantBytes {
						t.Fatalf("%s block %d heads %d..%d: %d bytes counted, want %d (the heads only)", ns, blk, h0, h1-1, moved, wantBytes)
					}
				}
			}
		}
	}
	if st := s.Stats(); st.Corrupt != 0 {
		t.Fatalf("stats %+v: no read should have failed verification", st)
	}
}

// TestTransportStoreGetHeadsWhole: blocks without the slab layout (PutBlock,
// as the previous version wrote every block), or stored with another shape
// than the caller's, are read whole and cut; a range out of bounds is
// refused at and past the limit.
func TestTransportStoreGetHeadsWhole(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	blk := seqTensor(transport.Shape{2, 3, 4, 5}) // [B=2, H=3, 4, 5]
	must(t, s.PutBlock(ctx, "old", "k", 0, blk, transport.F32))
	r := transport.HeadRange{B: 2, Heads: 3, H0: 1, H1: 3}
	got, err := s.GetHeads(ctx, "old", "k", 0, r)
	must(t, err)
	want, err := r.Cut(blk)
	must(t, err)
	equalF32(t, "heads of a block without slab layout", got, want)
	if len(want) != 2*2*4*5 || want[0] != blk[20] || want[40] != blk[80] {
		t.Fatalf("Cut took the wrong values: %v", want[:3])
	}
	// Uploaded as 6 heads of one batch, read as 3 heads of 2 batches:
	// the same bytes, the slab count differs, the whole path answers.
	sh := transport.Shape{1, 6, 4, 5}
	must(t, s.PutTensors(ctx, "six", []transport.TensorData{{Name: "k", Data: blk, Shape: sh}}, 4, transport.F32, transport.TransferOptions{}))
	got, err = s.GetHeads(ctx, "six", "k", 0, r)
	must(t, err)
	equalF32(t, "heads read with another batch split", got, want)
	// A shape that does not divide the block.
	if _, err := s.GetHeads(ctx, "old", "k", 0, transport.HeadRange{B: 1, Heads: 7, H0: 0, H1: 1}); !errors.Is(err, transport.ErrInvalidShape) {
		t.Fatalf("7 heads of a 120-value block: %v, want ErrInvalidShape", err)
	}
	if _, err := s.GetHeads(ctx, "old", "missing", 0, r); !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("heads of a missing block: %v, want ErrBlockNotFound", err)
	}
	// Limits: H1 = Heads is the last valid range; past it, empty, or
	// negative ranges are refused before any read.
	if _, err := s.GetHeads(ctx, "old", "k", 0, transport.HeadRange{B: 2, Heads: 3, H0: 2, H1: 3}); err != nil {
		t.Fatalf("the last head: %v", err)
	}
	for _, bad := range []transport.HeadRange{{B: 2, Heads: 3, H0: 2, H1: 4}, {B: 2, Heads: 3, H0: 1, H1: 1},
		{B: 2, Heads: 3, H0: -1, H1: 1}, {B: 0, Heads: 3, H0: 0, H1: 1}, {B: 1, Heads: 0, H0: 0, H1: 0}} {
		if _, err := s.GetHeads(ctx, "old", "k", 0, bad); !errors.Is(err, transport.ErrInvalidShape) {
			t.Fatalf("GetHeads %+v: %v, want ErrInvalidShape", bad, err)
		}
		if _, err := bad.Cut(blk); !errors.Is(err, transport.ErrInvalidShape) {
			t.Fatalf("Cut %+v: %v, want ErrInvalidShape", bad, err)
		}
	}
}

// TestTransportStoreGetHeadsCorrupt: a head whose bytes or slab metadata
// do not match is never returned: the read falls back to the whole block,
// verified as GetBlock verifies it.
func TestTransportStoreGetHeadsCorrupt(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	sh := transport.Shape{1, 4, 8, 2}
	data := seqTensor(sh)
	must(t, s.PutTensors(ctx, "c", []transport.TensorData{{Name: "q", Data: data, Shape: sh}}, 8, transport.F32, transport.TransferOptions{}))
	obs := s.ObjectStore()
	name := transport.BlockName("c", "q", 0)
	info, err := obs.GetInfo(ctx, name)
	must(t, err)
	r := transport.HeadRange{B: 1, Heads: 4, H0: 1, H1: 3}
	want, _ := r.Cut(data)
	// Rewrite the object with one head's CRC wrong but the object's own
	// CRC32C right: the partial read fails, the whole read succeeds.
	md := map[string]string{}
	for k, v := range info.Metadata {
		md[k] = v
	}
	crcs := []byte(md["ringattn-slab-crc32c"])
	crcs[8] ^= 1 // head 1
	md["ringattn-slab-crc32c"] = string(crcs)
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	_, err = obs.Put(ctx, jetstream.ObjectMeta{Name: name, Metadata: md, Opts: info.Opts}, bytes.NewReader(raw))
	must(t, err)
	got, err := s.GetHeads(ctx, "c", "q", 0, r)
	must(t, err)
	equalF32(t, "heads after a slab CRC mismatch", got, want)
	if c := s.Stats().Corrupt; c != 1 {
		t.Fatalf("corrupt reads %d, want 1 (the partial read)", c)
	}
	// Bytes that match neither: the read fails with ErrCorrupt.
	raw[4*8*2*1] ^= 0x40 // a value of head 1
	_, err = obs.Put(ctx, jetstream.ObjectMeta{Name: name, Metadata: info.Metadata, Opts: info.Opts}, bytes.NewReader(raw))
	must(t, err)
	if _, err := s.GetHeads(ctx, "c", "q", 0, r); !errors.Is(err, transport.ErrCorrupt) {
		t.Fatalf("heads of a corrupt block: %v, want ErrCorrupt", err)
	}
}

// TestTransportStoreGetHeadsSlabLimit: a block of 1024 batch × heads (the
// limit) is written with its slab layout and read in part; one of 1025 is
// written without it and read whole; both give the same heads.
func TestTransportStoreGetHeadsSlabLimit(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	ctx := ctxT(t, 30*time.Second)
	for _, tc := range []struct {
		heads   int
		partial bool
	}{{1024, true}, {1025, false}} {
		sh := transport.Shape{1, tc.heads, 2, 2}
		data := seqTensor(sh)
		ns := fmt.Sprintf("limit-%d", tc.heads)
		must(t, s.PutTensors(ctx, ns, []transport.TensorData{{Name: "v", Data: data, Shape: sh}}, 2, transport.F32, transport.TransferOptions{}))
		info, err := s.ObjectStore().GetInfo(ctx, transport.BlockName(ns, "v", 0))
		must(t, err)
		if _, ok := info.Metadata["ringattn-slabs"]; ok != tc.partial {
			t.Fatalf("%d heads: slab layout written %v, want %v", tc.heads, ok, tc.partial)
		}
		r := transport.HeadRange{B: 1, Heads: tc.heads, H0: tc.heads - 3, H1: tc.heads}
		before := s.Stats().GetBytes
		got, err := s.GetHeads(ctx, ns, "v", 0, r)
		must(t, err)
		want, _ := r.Cut(data)
		equalF32(t, ns, got, want)
		moved, all := s.Stats().GetBytes-before, int64(4*len(data))
		if tc.partial && moved != int64(4*len(want)) || !tc.partial && moved != all {
			t.Fatalf("%d heads: %d bytes read, want %d", tc.heads, moved, map[bool]int64{true: int64(4 * len(want)), false: all}[tc.partial])
		}
	}
}
