package worker

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/transport"
)

// projector is the part of ringattn.Layer a rank uses.
type projector interface {
	Project(x []float32, b, n int) (q, k, v []float32, err error)
	Output(o []float32, b, n int) ([]float32, error)
}

// loadLayer fetches the layer's weights (block 0 of each weight tensor).
func (w *Worker) loadLayer(ctx context.Context, src *checkedSource, t *task) (*layer, error) {
	get := func(name string) ([]float32, error) {
		x, err := src.Fetch(ctx, name, 0)
		if err != nil {
			return nil, fmt.Errorf("mha weights: %w", err)
		}
		return x, nil
	}
	l := &layer{DModel: t.dModel, Heads: t.params.Hq, D: t.params.D}
	var err error
	for _, p := range []struct {
		name string
		dst  *[]float32
		bias bool
	}{
		{"wq", &l.Wq, false}, {"wk", &l.Wk, false}, {"wv", &l.Wv, false}, {"wo", &l.Wo, false},
		{"bq", &l.Bq, true}, {"bk", &l.Bk, true}, {"bv", &l.Bv, true}, {"bo", &l.Bo, true},
	} {
		if p.bias && !t.bias {
			continue
		}
		if *p.dst, err = get(p.name); err != nil {
			return nil, err
		}
	}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidAssignment, err)
	}
	return l, nil
}

// mhaSource is the ringattn.Source of a layer job: it fetches x blocks from
// the store and projects them. A rank projects only the blocks it is asked
// for — its own query blocks, its initial key/value blocks, and any block
// it falls back to — and keeps a projection's other tensors only until
// they are fetched, so it holds O(its blocks) at any time.
type mhaSource struct {
	src    *checkedSource
	layer  projector
	b      int
	dModel int

	mu     sync.Mutex
	cache  map[cacheKey][]float32
	wantQ  map[int]bool // owned query blocks not fetched yet
	wantKV map[int]bool // initial key/value blocks not fetched yet
}

type cacheKey struct {
	tensor string
	block  int
}

func newMHASource(src *checkedSource, layer projector, t *task) *mhaSource {
	s := &mhaSource{src: src, layer: layer, b: t.params.B, dModel: t.dModel,
		cache: map[cacheKey][]float32{}, wantQ: map[int]bool{}, wantKV: map[int]bool{}}
	rk := t.plan.Ranks[t.rank]
	for _, q := range rk.QBlocks {
		s.wantQ[q] = true
	}
	for _, j := range rk.KVBlocks {
		s.wantKV[j] = true
	}
	return s
}

func (s *mhaSource) Fetch(ctx context.Context, tensor string, block int) ([]float32, error) {
	switch tensor {
	case transport.TensorQ, transport.TensorK, transport.TensorV:
	default:
		return nil, fmt.Errorf("%w: mha source asked for tensor %q, expected q, k or v", ErrInvalidAssignment, tensor)
	}
	key := cacheKey{tensor, block}
	s.mu.Lock()
	if x, ok := s.cache[key]; ok {
		delete(s.cache, key)
		s.fetchedLocked(tensor, block)
		s.mu.Unlock()
		return x, nil
	}
	s.mu.Unlock()

	x, err := s.src.Fetch(ctx, TensorX, block)
	if err != nil {
		return nil, err
	}
	rows := s.b * s.dModel
	if len(x)%rows != 0 || len(x) == 0 {
		return nil, &transport.CorruptBlockError{Job: s.src.ns, Tensor: TensorX, Block: block,
			Reason: fmt.Sprintf("%d values, expected a multiple of B·d_model = %d", len(x), rows)}
	}
	q, k, v, err := s.layer.Project(x, s.b, len(x)/rows)
	if err != nil {
		return nil, fmt.Errorf("projecting x block %d: %w", block, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetchedLocked(tensor, block)
	// Keep what will be asked for: the partner of a key/value fetch, and the
	// rank's own blocks not fetched yet.
	keep := func(name string, t []float32) {
		if name == tensor {
			return
		}
		switch {
		case name == transport.TensorQ && s.wantQ[block],
			name != transport.TensorQ && (s.wantKV[block] || tensor != transport.TensorQ):
			s.cache[cacheKey{name, block}] = t
		}
	}
	keep(transport.TensorQ, q)
	keep(transport.TensorK, k)
	keep(transport.TensorV, v)
	switch tensor {
	case transport.TensorQ:
		return q, nil
	case transport.TensorK:
		return k, nil
	}
	return v, nil
}

func (s *mhaSource) fetchedLocked(tensor string, block int) {
	if tensor == transport.TensorQ {
		delete(s.wantQ, block)
		return
	}
	if _, k := s.cache[cacheKey{transport.TensorK, block}]; !k {
		if _, v := s.cache[cacheKey{transport.TensorV, block}]; !v {
			delete(s.wantKV, block)
		}
	}
}

// held reports the cached projections (for tests of the memory bound).
func (s *mhaSource) held() []cacheKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cacheKey
	for k := range s.cache {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b cacheKey) int {
		if a.block != b.block {
			return a.block - b.block
		}
		if a.tensor < b.tensor {
			return -1
		}
		return 1
	})
	return out
}

// mhaSink applies the output projection to the rank's rows and writes "y".
// With lse (the forward pass of a forward+backward job) it first writes
// the attention's "o" and "lse" blocks, which the backward pass reads; the
// block's reported checksums are then those of y and lse.
type mhaSink struct {
	w     blockWriter
	ns    string
	layer projector
	b     int
	heads int
	d     int
	lse   bool
	outs  *outputs
	met   *workerMetrics
}

func (s *mhaSink) Put(ctx context.Context, block int, o, lse []float32) error {
	rows := s.b * s.heads * s.d
	if len(o) == 0 || len(o)%rows != 0 {
		return fmt.Errorf("%w: output block %d has %d values, expected a multiple of B·H·D = %d", ringattn.ErrInvalid, block, len(o), rows)
	}
	y, err := s.layer.Output(o, s.b, len(o)/rows)
	if err != nil {
		return fmt.Errorf("output projection of block %d: %w", block, err)
	}
	var crcL uint32
	if s.lse {
		if _, err := s.outs.put(ctx, s.w, s.ns, transport.TensorO, block, o, s.met); err != nil {
			return err
		}
		if crcL, err = s.outs.put(ctx, s.w, s.ns, transport.TensorLSE, block, lse, s.met); err != nil {
			return err
		}
	}
	crc, err := s.outs.put(ctx, s.w, s.ns, TensorY, block, y, s.met)
	if err != nil {
		return err
	}
	s.outs.record(block, crc, crcL)
	return nil
}
