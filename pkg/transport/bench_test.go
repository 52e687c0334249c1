package transport_test

import (
	"context"
	"fmt"
	"github.com/nats-io/nats.go"
	"testing"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/transporttest"
)

// BenchmarkTransportRing streams 8 MiB blocks (one tensor of 2 Mi float32)
// from rank 0 to rank 1 over loopback NATS, each rank on its own
// connection; MB/s counts float32 bytes delivered (bf16 puts half of them
// on the wire).
func BenchmarkTransportRing(b *testing.B) {
	e := transporttest.RunServer(b)
	for _, pc := range []struct {
		name          string
		piece, window int
		enc           transport.Encoding
	}{
		{"default(piece=4MiB,window=16MiB)", 0, 0, transport.F32},
		{"piece=1MiB,window=16MiB", 1 << 20, 16 << 20, transport.F32},
		{"piece=4MiB,window=32MiB", 4 << 20, 32 << 20, transport.F32},
		{"piece=4MiB,window=48MiB", 4 << 20, 48 << 20, transport.F32},
		{"piece=8MiB,window=32MiB", 8<<20 - transport.HeaderRoom, 32 << 20, transport.F32},
		{"default,bf16", 0, 0, transport.BF16},
	} {
		b.Run(pc.name, func(b *testing.B) {
			job := fmt.Sprintf("bench%d", b.N)
			send, err := transport.NewNATSRing(transporttest.Connect(b, e), transport.RingConfig{
				Job: job, Rank: 0, Size: 2, PieceBytes: pc.piece, WindowBytes: pc.window, Encoding: pc.enc})
			must(b, err)
			defer send.Close()
			recv, err := transport.NewNATSRing(transporttest.Connect(b, e), transport.RingConfig{
				Job: job, Rank: 1, Size: 2, PieceBytes: pc.piece, WindowBytes: pc.window, Encoding: pc.enc})
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
	for _, chunk := range []int{1 << 20, 4 << 20} {
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

// BenchmarkTransportRawNATS is the baseline for BenchmarkTransportRing:
// plain core-NATS publishes of the same 8 MiB per op as two 4 MiB messages
// between two connections, paced by an in-process window of 16 MiB (no
// headers, checksums, acknowledgements over the wire or decoding).
func BenchmarkTransportRawNATS(b *testing.B) {
	e := transporttest.RunServer(b)
	pub, sub := transporttest.Connect(b, e), transporttest.Connect(b, e)
	const size, window = 4 << 20, 4
	credits := make(chan struct{}, window)
	s, err := sub.Subscribe("raw.bench", func(*nats.Msg) { credits <- struct{}{} })
	must(b, err)
	must(b, s.SetPendingLimits(-1, -1))
	must(b, sub.Flush())
	data := make([]byte, size)
	b.SetBytes(2 * size)
	b.ResetTimer()
	inflight := 0
	for range 2 * b.N {
		for inflight >= window {
			<-credits
			inflight--
		}
		must(b, pub.Publish("raw.bench", data))
		inflight++
	}
	for ; inflight > 0; inflight-- {
		<-credits
	}
}
