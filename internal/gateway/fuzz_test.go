package gateway

import (
	"bytes"
	"io"
	"mime/multipart"
	"net/textproto"
	"slices"
	"testing"

	"github.com/ringattn/ringattn/pkg/tensor"
)

func fuzzBody(spec string, parts ...[2]string) []byte {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.SetBoundary("fuzzboundary")
	if spec != "" {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="spec"`)
		w, _ := mw.CreatePart(h)
		io.WriteString(w, spec)
	}
	for _, p := range parts {
		w, _ := mw.CreateFormFile(p[0], p[0]+".npy")
		io.WriteString(w, p[1])
	}
	mw.Close()
	return buf.Bytes()
}

func fuzzNPY(shape ...int) string {
	n := 1
	for _, d := range shape {
		n *= d
	}
	var buf bytes.Buffer
	_ = tensor.EncodeNPY(&buf, tensor.New(make([]float32, n), shape...))
	return buf.String()
}

// FuzzGatewaySubmit: no multipart submit body can crash the decoder or
// make it allocate past its budget; what it accepts is consistent.
func FuzzGatewaySubmit(f *testing.F) {
	q := fuzzNPY(1, 2, 4, 8)
	f.Add(fuzzBody(`{"causal": true, "return_lse": true}`, [2]string{"q", q}, [2]string{"k", q}, [2]string{"v", q}))
	f.Add(fuzzBody(`{"window": [4, -1], "seqlens": [2, 2], "scale": 0.5}`, [2]string{"q", q}, [2]string{"k", q}, [2]string{"v", q}))
	f.Add(fuzzBody(`{"kind": "mha", "heads": 2}`, [2]string{"x", fuzzNPY(3, 4)}, [2]string{"wq", fuzzNPY(4, 4)},
		[2]string{"wk", fuzzNPY(4, 4)}, [2]string{"wv", fuzzNPY(4, 4)}, [2]string{"wo", fuzzNPY(4, 4)}))
	f.Add(fuzzBody(`{"backward": true, "causal": true}`, [2]string{"q", q}, [2]string{"k", q}, [2]string{"v", q}, [2]string{"do", q},
		[2]string{"o", q}, [2]string{"lse", fuzzNPY(1, 2, 4)}))
	f.Add(fuzzBody(`{"kind": "mha", "heads": 2, "backward": true, "causal": true}`, [2]string{"x", fuzzNPY(1, 3, 4)},
		[2]string{"dy", fuzzNPY(1, 3, 4)}, [2]string{"wq", fuzzNPY(4, 4)}, [2]string{"wk", fuzzNPY(4, 4)}, [2]string{"wv", fuzzNPY(4, 4)},
		[2]string{"wo", fuzzNPY(4, 4)}, [2]string{"bq", fuzzNPY(4)}, [2]string{"bk", fuzzNPY(4)}, [2]string{"bv", fuzzNPY(4)}, [2]string{"bo", fuzzNPY(4)}))
	f.Add(fuzzBody(`{"cuasal": 1}`, [2]string{"q", q[:20]}))
	f.Add(fuzzBody("", [2]string{"q", q}))
	f.Add([]byte("--fuzzboundary--\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		const budget = 1 << 16
		sub, err := decodeSubmit(limitBody(bytes.NewReader(body), budget+maxSpecBytes), "fuzzboundary", budget, "")
		if err != nil {
			e, ok := err.(*Error)
			if !ok || e.Status < 400 || e.Message == "" {
				t.Fatalf("error %T %v: want an *Error with a status and a message", err, err)
			}
			return
		}
		if sub.bytes > budget {
			t.Fatalf("accepted %d tensor bytes past the budget %d", sub.bytes, budget)
		}
		required, _ := partNames(sub.spec)
		for _, n := range required {
			if sub.tensors[n] == nil || sub.tensors[n].Validate() != nil {
				t.Fatalf("accepted without a valid %s", n)
			}
		}
		// The shape checks after decoding answer an *Error naming a part,
		// or accept shapes the SDK can submit.
		if sub.spec.Kind != "mha" {
			return
		}
		if e := checkMHAShapes(sub.tensors, sub.spec.Heads); e != nil {
			if e.Status != 400 || e.Field == "" || e.Message == "" {
				t.Fatalf("checkMHAShapes: %+v, want a 400 naming a part", e)
			}
			return
		}
		x, wq := sub.tensors["x"], sub.tensors["wq"]
		if dy := sub.tensors["dy"]; dy != nil && !slices.Equal(dy.Shape, x.Shape) {
			t.Fatalf("accepted dy %v for x %v", dy.Shape, x.Shape)
		}
		if wq.Shape[0]%sub.spec.Heads != 0 || wq.Shape[1] != x.Shape[x.Rank()-1] {
			t.Fatalf("accepted wq %v for x %v and %d heads", wq.Shape, x.Shape, sub.spec.Heads)
		}
	})
}
