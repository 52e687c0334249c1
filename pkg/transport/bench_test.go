package transport_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// BenchmarkTransportRing streams 8 MiB frames (one tensor of 2 Mi float32)
// from rank 0 to rank 1 over loopback NATS; MB/s is payload throughput.
func BenchmarkTransportRing(b *testing.B) {
	e := transporttest.RunServer(b)
	for _, pc := range []struct {
		name          string
		piece, window int
	}{
		{"piece=256KiB/window=16MiB", 256 << 10, 16 << 20},
		{"piece=1MiB/window=16MiB", 1 << 20, 16 << 20},
		{"piece=4MiB/window=16MiB", 4 << 20, 16 << 20},
		{"piece=8MiB/window=32MiB", 8<<20 - transport.HeaderRoom, 32 << 20},
	} {
		b.Run(pc.name, func(b *testing.B) {
			send, err := transport.NewNATSRing(transporttest.Connect(b, e), transport.RingConfig{
				Job: "bench", Rank: 0, Size: 2, PieceBytes: pc.piece, WindowBytes: pc.window})
			must(b, err)
			defer send.Close()
			recv, err := transport.NewNATSRing(transporttest.Connect(b, e), transport.RingConfig{
				Job: "bench", Rank: 1, Size: 2, PieceBytes: pc.piece, WindowBytes: pc.window})
			must(b, err)
			defer recv.Close()
			block := randVals(1, 2<<20)
			ctx := context.Background()
			b.SetBytes(int64(len(block) * 4))
			b.ResetTimer()
			errc := make(chan error, 1)
			go func() {
				for i := range b.N {
					if err := send.Send(ctx, 1, kvFrame(i, 0, block, nil)); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			for i := range b.N {
				if _, err := recv.Recv(ctx, 0, ringattn.Key{Kind: ringattn.KindKV, Step: i}); err != nil {
					b.Fatal(err)
				}
			}
			must(b, <-errc)
			b.StopTimer()
			if st := recv.Stats(); st.Incomplete+st.Corrupt+st.Timeouts != 0 {
				b.Fatalf("receiver faults: %+v", st)
			}
		})
	}
}

// BenchmarkTransportStore measures object store put and get of 8 MiB blocks.
func BenchmarkTransportStore(b *testing.B) {
	e := transporttest.RunServer(b)
	nc := transporttest.Connect(b, e)
	for _, chunk := range []int{1 << 20, 4 << 20, 8<<20 - 4<<10} {
		s := transporttest.Store(b, nc, transport.StoreConfig{Bucket: fmt.Sprintf("bench%d", chunk>>20), ChunkBytes: chunk})
		block := randVals(2, 2<<20)
		ctx := context.Background()
		b.Run(fmt.Sprintf("put/chunk=%dKiB", chunk>>10), func(b *testing.B) {
			b.SetBytes(int64(len(block) * 4))
			for i := range b.N {
				must(b, s.PutBlock(ctx, "bench", "k", i%4, block, transport.F32))
			}
		})
		b.Run(fmt.Sprintf("get/chunk=%dKiB", chunk>>10), func(b *testing.B) {
			b.SetBytes(int64(len(block) * 4))
			for i := range b.N {
				if _, err := s.GetBlock(ctx, "bench", "k", i%4); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
