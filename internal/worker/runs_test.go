package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/ringattn/ringattn/internal/testrand"
	"github.com/ringattn/ringattn/pkg/shard"
	"github.com/ringattn/ringattn/pkg/transport"
)

// memWriter keeps the blocks written to it.
type memWriter struct {
	mu     sync.Mutex
	blocks map[string][]float32
}

func (m *memWriter) PutBlock(_ context.Context, job, tensor string, block int, data []float32, _ transport.Encoding) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blocks[fmt.Sprintf("%s/%s/%d", job, tensor, block)] = slices.Clone(data)
	return nil
}

// rowsOf returns rows [r0, r0+n) of every head of t ([bh, N, d]).
func rowsOf(t []float32, bh, nTot, d, r0, n int) []float32 {
	var out []float32
	for h := range bh {
		out = append(out, t[(h*nTot+r0)*d:(h*nTot+r0+n)*d]...)
	}
	return out
}

// TestWorkerFetchRunPutRun: a run of blocks read several at once is the
// run's rows of every head (ragged last block too), a head range is the
// block's heads, and a run written several blocks at once lands as the
// blocks Put would write; malformed runs and missing blocks are errors.
func TestWorkerFetchRunPutRun(t *testing.T) {
	const b, h, n, d, block = 2, 3, 250, 4, 60
	r := testrand.New(4)
	q := r.Slice(b*h*n*d, testrand.Normal)
	sh := transport.Shape{b, h, n, d}
	mr := &memReader{blocks: map[string][]float32{}, fetches: map[string]int{}}
	for i := range sh.Blocks(block) {
		mr.blocks[fmt.Sprintf("in/q/%d", i)] = transport.ExtractBlock(q, sh, block, i)
	}
	src := &checkedSource{r: mr, ns: "in", met: testMetrics(t), b: b, hq: h, hkv: h}
	ctx := context.Background()
	for _, tc := range [][2]int{{0, 1}, {1, 3}, {0, 5}, {3, 2}} {
		got, err := src.FetchRun(ctx, "q", tc[0], tc[1])
		if err != nil {
			t.Fatal(err)
		}
		r0, rows := tc[0]*block, min(n, (tc[0]+tc[1])*block)-tc[0]*block
		if want := rowsOf(q, b*h, n, d, r0, rows); !slices.Equal(got, want) {
			t.Fatalf("FetchRun(q, %d, %d): not the run's rows", tc[0], tc[1])
		}
	}
	if _, err := src.FetchRun(ctx, "q", 3, 3); !errors.Is(err, transport.ErrBlockNotFound) {
		t.Fatalf("a run past the last block: %v, want ErrBlockNotFound", err)
	}
	if _, err := src.FetchRun(ctx, "q", 0, 0); err == nil {
		t.Fatal("a run of 0 blocks was accepted")
	}
	got, err := src.FetchHeads(ctx, "q", 4, 1, 3) // the ragged block, a reader without GetHeads
	if err != nil {
		t.Fatal(err)
	}
	want, _ := transport.HeadRange{B: b, Heads: h, H0: 1, H1: 3}.Cut(mr.blocks["in/q/4"])
	if !slices.Equal(got, want) {
		t.Fatal("FetchHeads: not the block's heads 1..2")
	}

	p, err := shard.NewPlan(shard.Request{B: b, Hq: h, Hkv: h, D: d, N: n, Nk: n, Block: block, Ranks: 1, Strategy: shard.Contiguous})
	if err != nil {
		t.Fatal(err)
	}
	mw := &memWriter{blocks: map[string][]float32{}}
	sink := &attnSink{w: mw, ns: "out", lse: true, outs: &outputs{}, met: testMetrics(t), b: b, hq: h, d: d, span: p.QSpan}
	o, lse := q, r.Slice(b*h*n, testrand.Normal)
	if err := sink.PutRun(ctx, 0, 5, o, lse); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		r0, rows := p.QSpan(i)
		if !slices.Equal(mw.blocks[fmt.Sprintf("out/o/%d", i)], rowsOf(o, b*h, n, d, r0, rows)) ||
			!slices.Equal(mw.blocks[fmt.Sprintf("out/lse/%d", i)], rowsOf(lse, b*h, n, 1, r0, rows)) {
			t.Fatalf("PutRun: output block %d differs from the run's rows", i)
		}
	}
	if sums := sink.outs.list(); len(sums) != 5 {
		t.Fatalf("PutRun recorded %d checksums, want 5", len(sums))
	}
	if err := sink.PutRun(ctx, 0, 5, o[1:], lse); !errors.Is(err, transport.ErrInvalidShape) {
		t.Fatalf("PutRun of one value short: %v, want ErrInvalidShape", err)
	}
}
