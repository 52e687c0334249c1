package transport_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// FuzzStoreHeads stores an object of fuzzed f32 values with fuzzed slab
// metadata (slab count, per-slab CRC32Cs) and chunk size — what GetHeads
// decodes from the network — and reads a range of its heads: the result
// is always the range cut from the whole block, verified as GetBlock
// verifies it, or an error wrapping ErrCorrupt (the object's own CRC32C
// is wrong) or ErrInvalidShape (the range does not fit); never a panic,
// never other bytes.
func FuzzStoreHeads(f *testing.F) {
	e := transporttest.RunServer(f)
	nc := fuzzConnect(f, e)
	ctx := context.Background()
	s, err := transport.OpenStore(ctx, nc, transport.StoreConfig{Bucket: "fuzzheads", Memory: true, MaxBlockBytes: 64 << 10,
		RetryFor: -1}, nil)
	must(f, err)
	obs := s.ObjectStore()
	f.Add(uint16(16), uint8(4), uint8(1), uint8(3), "4", "", true, uint16(16), false)    // valid layout, aligned chunks
	f.Add(uint16(16), uint8(4), uint8(0), uint8(4), "4", "", true, uint16(12), false)    // chunks across heads
	f.Add(uint16(16), uint8(4), uint8(1), uint8(2), "4", "", true, uint16(16), true)     // one slab CRC flipped
	f.Add(uint16(16), uint8(4), uint8(1), uint8(2), "3", "", true, uint16(16), false)    // count not dividing
	f.Add(uint16(16), uint8(4), uint8(1), uint8(2), "4", "zz", false, uint16(16), false) // CRCs not hex
	f.Add(uint16(16), uint8(4), uint8(1), uint8(2), "", "00000000", false, uint16(16), false)
	f.Add(uint16(16), uint8(2), uint8(0), uint8(1), "4", "", true, uint16(16), false) // another slab count than the caller's
	f.Add(uint16(16), uint8(4), uint8(0), uint8(1), "99999", "", true, uint16(16), false)
	f.Add(uint16(16), uint8(4), uint8(2), uint8(5), "4", "", true, uint16(16), false) // range past the heads
	f.Fuzz(func(t *testing.T, n uint16, heads, h0, h1 uint8, slabs, crcs string, fixCRCs bool, chunk uint16, flip bool) {
		n = n%1024 + 1
		data := make([]byte, 4*int(n))
		for i := range int(n) {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i)+0.5))
		}
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = float32(i) + 0.5
		}
		if k, err := strconv.Atoi(slabs); fixCRCs && err == nil && k > 0 && k <= 1024 && len(data)%k == 0 {
			sb := len(data) / k
			crcs = ""
			for i := range k {
				c := strconv.FormatUint(uint64(transport.CRC32C(data[i*sb:(i+1)*sb])), 16)
				for len(c) < 8 {
					c = "0" + c
				}
				crcs += c
			}
			if flip {
				crcs = "f" + crcs[1:]
				if crcs[:8] == strconv.FormatUint(uint64(transport.CRC32C(data[:sb])), 16) {
					crcs = "e" + crcs[1:]
				}
			}
		}
		md := map[string]string{"ringattn-crc32c": strconv.FormatUint(uint64(transport.CRC32C(data)), 16),
			"ringattn-encoding": "f32", "ringattn-elems": strconv.Itoa(int(n)),
			"ringattn-slabs": slabs, "ringattn-slab-crc32c": crcs}
		for len(md["ringattn-crc32c"]) < 8 {
			md["ringattn-crc32c"] = "0" + md["ringattn-crc32c"]
		}
		name := transport.BlockName("fz", "q", 0)
		opts := &jetstream.ObjectMetaOptions{ChunkSize: uint32(chunk%8192) + 1}
		if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name, Metadata: md, Opts: opts}, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		r := transport.HeadRange{B: 1, Heads: int(heads), H0: int(h0), H1: int(h1)}
		got, err := s.GetHeads(ctx, "fz", "q", 0, r)
		want, cerr := r.Cut(vals)
		switch {
		case cerr != nil:
			if !errors.Is(err, transport.ErrInvalidShape) {
				t.Fatalf("GetHeads %+v of %d values: %v, want ErrInvalidShape (%v)", r, n, err, cerr)
			}
		case err != nil:
			t.Fatalf("GetHeads %+v of %d values with slabs %q, CRCs %q: %v", r, n, slabs, crcs, err)
		default:
			if len(got) != len(want) {
				t.Fatalf("GetHeads %+v: %d values, want %d", r, len(got), len(want))
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("GetHeads %+v: value %d is %v, want %v", r, i, got[i], want[i])
				}
			}
		}
	})
}
