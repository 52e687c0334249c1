package ringattn_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/ringattn"
	"github.com/ringattn/ringattn/pkg/shard"
)

// TestRingBackwardReusesBuffers: on a MemNet the ranks hand consumed
// dK/dV buffers back (gradbufs.go) and take the next contributions from
// them. The gradients are bit-identical to a ring that copies every frame
// even when every cached buffer is poisoned with NaN first; a fault-free
// run gives back every view it lent; and when accumulators are lost, the
// sets whose views never came back stay out of the cache while the result
// is still exact.
func TestRingBackwardReusesBuffers(t *testing.T) {
	pr := newProblem("causal-gqa", 1, 4, 2, 611, 611, 32, kernels.Mask{Causal: true}, 44)
	g := newGradProblem(t, pr, 45)
	for _, s := range []shard.Strategy{shard.Zigzag, shard.Contiguous, shard.Striped} {
		plan := pr.plan(t, pr.request(3, 64, s))
		wq, wk, wv, _ := g.runMemNet(t, plan, ringattn.MemOptions{}, func(r ringattn.Ring) ringattn.Ring { return plainRing{r} })
		if err := g.gradErr(wq, wk, wv); err != nil {
			t.Fatalf("%s copying: %v", s, err)
		}
		same := func(what string, dq, dk, dv []float32) {
			t.Helper()
			sameBits(t, fmt.Sprintf("%s %s, against a copying ring", s, what), [3][]float32{dq, dk, dv}, [3][]float32{wq, wk, wv})
		}
		for i := range 2 {
			ringattn.PoisonGradCache()
			dq, dk, dv, net := g.runMemNet(t, plan, ringattn.MemOptions{}, nil)
			same(fmt.Sprintf("run %d", i), dq, dk, dv)
			if n := net.LentViews(); n != 0 {
				t.Fatalf("%s run %d: %d views never given back", s, i, n)
			}
			if ringattn.GradCacheValues() == 0 {
				t.Fatalf("%s run %d: nothing went back to the cache", s, i)
			}
		}
		ringattn.PoisonGradCache()
		dropGrads := func(from, to int, key ringattn.Key) ringattn.Fault {
			return ringattn.Fault{Drop: key.Kind == ringattn.KindGrad && (from+key.Block)%2 == 0}
		}
		dq, dk, dv, net := g.runMemNet(t, plan, ringattn.MemOptions{RecvTimeout: 40 * time.Millisecond, Fault: dropGrads}, nil)
		same("dropping accumulators", dq, dk, dv)
		if st := net.Stats(); st.Dropped == 0 || net.LentViews() == 0 {
			t.Fatalf("%s: %d frames dropped, %d views out: the fault did not bite", s, st.Dropped, net.LentViews())
		}
	}
}
