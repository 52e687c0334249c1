package transport_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

func TestTransportStoreRoundTripSizes(t *testing.T) {
	e := transporttest.RunServer(t)
	nc := transporttest.Connect(t, e)
	s := transporttest.Store(t, nc, transport.StoreConfig{})
	ctx := ctxT(t, 60*time.Second)
	mp := int(nc.MaxPayload())
	sizes := []struct {
		name  string
		elems int
		enc   transport.Encoding
	}{
		{"0", 0, transport.F32},
		{"1", 1, transport.F32},
		{"maxpayload-4B", mp/4 - 1, transport.F32},
		{"maxpayload+4B", mp/4 + 1, transport.F32},
		{"bf16-maxpayload-2B", mp/2 - 1, transport.BF16},
		{"bf16-maxpayload+2B", mp/2 + 1, transport.BF16},
		{"100MiB", 100 << 20 / 4, transport.F32},
	}
	for i, sz := range sizes {
		t.Run(sz.name, func(t *testing.T) {
			data := randVals(uint64(i), sz.elems)
			start := time.Now()
			must(t, s.PutBlock(ctx, "job-1", "k", i, data, sz.enc))
			put := time.Since(start)
			start = time.Now()
			got, err := s.GetBlock(ctx, "job-1", "k", i)
			must(t, err)
			t.Logf("%d values (%d bytes %v): put %v get %v", sz.elems, sz.elems*sz.enc.ElemBytes(), sz.enc, put, time.Since(start))
			want := data
			if sz.enc == transport.BF16 {
				want = make([]float32, len(data))
				for j, v := range data {
					want[j] = transport.BF16ToF32(transport.F32ToBF16(v))
				}
			}
			equalF32(t, "block", got, want)
		})
	}
	st := s.Stats()
	if st.PutBlocks != int64(len(sizes)) || st.GetBlocks != int64(len(sizes)) || st.Corrupt != 0 {
		t.Fatalf("stats %+v: want %d puts and gets, no corruption", st, len(sizes))
	}
}

func TestTransportStoreMissingBlock(t *testing.T) {
	e := transporttest.RunServer(t)
	s := transporttest.Store(t, transporttest.Connect(t, e), transport.StoreConfig{})
	_, err := s.GetBlock(ctxT(t, 10*time.Second), "job-x", "v", 7)
	if !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("GetBlock of a missing block: %v, want ErrBlockNotFound", err)
	}
	for _, want := range []string{`"job-x"`, `"v"`, "block 7"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %s", err, want)
		}
	}
}
