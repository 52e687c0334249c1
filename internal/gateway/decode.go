package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime/multipart"
	"strings"
	"time"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/kernels"
	"github.com/ringattn/ringattn/pkg/tensor"
)

// maxSpecBytes bounds the JSON spec part.
const maxSpecBytes = 64 << 10

// Spec is the "spec" part of a submit: everything but the tensors, whose
// shapes come from their .npy headers. Unknown fields are errors.
type Spec struct {
	Kind      string   `json:"kind"` // attention (default) or mha
	Causal    bool     `json:"causal"`
	Window    *[2]int  `json:"window"` // [left, right]; -1 unbounded
	SeqLens   []int    `json:"seqlens"`
	SeqLensK  []int    `json:"seqlens_k"`
	Scale     *float64 `json:"scale"` // null: 1/sqrt(d)
	ReturnLSE bool     `json:"return_lse"`
	Heads     int      `json:"heads"` // mha
	Block     int      `json:"block"`
	Strategy  string   `json:"strategy"`
	Wire      string   `json:"wire"` // f32 (default) or bf16
	// Precision of the forward pass's products: fp32 (default) or bf16.
	Precision      string `json:"precision"`
	Parallelism    int    `json:"parallelism"`
	Priority       int    `json:"priority"`
	AllowNonFinite bool   `json:"allow_nonfinite"`
	IdempotencyKey string `json:"idempotency_key"`
	// Backward asks for gradients: with part do for attention (and o,
	// lse for a backward-only job), with part dy for mha (a layer
	// forward+backward job).
	Backward bool `json:"backward"`
}

// The tensor parts each kind takes; the optional ones all or none.
var (
	attentionParts = []string{"q", "k", "v"}
	backwardParts  = []string{"q", "k", "v", "do"}
	forwardOutputs = []string{"o", "lse"} // a backward job's optional parts
	mhaParts       = []string{"x", "wq", "wk", "wv", "wo"}
	mhaBiasParts   = []string{"bq", "bk", "bv", "bo"}
	// An mha backward job's: x, dy = dL/dy (x's shape) and the weights.
	mhaBackwardParts = []string{"x", "dy", "wq", "wk", "wv", "wo"}
)

// submission is a decoded submit request.
type submission struct {
	spec    Spec
	opts    client.JobOptions
	tensors map[string]*tensor.Tensor
	bytes   int64 // tensor bytes received
}

// Error is an API error: an HTTP status, a short code, the request field
// at fault and one line for the user.
type Error struct {
	Status  int
	Code    string
	Field   string
	Message string
	// RetryAfter, when > 0, is sent as the Retry-After header: the
	// request was not processed (busy, queue full) and may be retried.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

func invalid(field, format string, args ...any) *Error {
	return &Error{Status: 400, Code: "invalid_argument", Field: field, Message: fmt.Sprintf(format, args...)}
}

func tooLarge(field string, limit int64) *Error {
	return &Error{Status: 413, Code: "too_large", Field: field,
		Message: fmt.Sprintf("the request body exceeds this gateway's limit of %d bytes", limit)}
}

// decodeSpec parses and checks the spec part.
func decodeSpec(data []byte) (Spec, client.JobOptions, error) {
	var s Spec
	var o client.JobOptions
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, o, specJSONError(err)
	}
	if dec.More() {
		return s, o, invalid("spec", "trailing data after the JSON object")
	}
	switch s.Kind {
	case "":
		s.Kind = "attention"
	case "attention", "mha":
	default:
		return s, o, invalid("spec.kind", "%q: want attention or mha", s.Kind)
	}
	if s.Backward && s.Kind == "attention" {
		if s.ReturnLSE {
			return s, o, invalid("spec.return_lse", "a backward job takes no return_lse (a forward+backward job always returns o and lse)")
		}
	}
	if s.Kind == "mha" {
		if s.Heads < 1 {
			return s, o, invalid("spec.heads", "%d: an mha job wants heads >= 1", s.Heads)
		}
		if s.ReturnLSE {
			return s, o, invalid("spec.return_lse", "an mha job has no lse output")
		}
	} else if s.Heads != 0 {
		return s, o, invalid("spec.heads", "%d: heads is for mha jobs (attention takes them from q's shape)", s.Heads)
	}
	o.Causal = s.Causal
	if s.Window != nil {
		o.Windowed, o.Left, o.Right = true, s.Window[0], s.Window[1]
	}
	o.SeqLens, o.SeqLensK = s.SeqLens, s.SeqLensK
	if s.Scale != nil {
		if v := *s.Scale; math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			return s, o, invalid("spec.scale", "%v: want a finite number > 0 (or null for 1/sqrt(d))", v)
		}
		o.Scale = *s.Scale
	}
	if s.Block < 0 {
		return s, o, invalid("spec.block", "%d: want >= 1 (or 0 for the default %d)", s.Block, client.DefaultBlock)
	}
	o.Block = s.Block
	switch s.Strategy {
	case "", "auto":
	case "contiguous", "zigzag", "striped", "splitkv", "heads":
		o.Strategy = s.Strategy
	default:
		return s, o, invalid("spec.strategy", "%q: want auto, contiguous, zigzag, striped, splitkv or heads", s.Strategy)
	}
	switch s.Wire {
	case "", "f32":
	case "bf16":
		o.BF16Wire = true
	default:
		return s, o, invalid("spec.wire", "%q: want f32 or bf16", s.Wire)
	}
	switch s.Precision {
	case "", "fp32":
	case "bf16":
		o.Precision = kernels.PrecisionBF16
	default:
		return s, o, invalid("spec.precision", "%q: want fp32 or bf16", s.Precision)
	}
	if s.Parallelism < 0 || s.Parallelism > math.MaxInt32 {
		return s, o, invalid("spec.parallelism", "%d: want 0 (as many as useful) .. %d", s.Parallelism, math.MaxInt32)
	}
	if s.Priority < math.MinInt32 || s.Priority > math.MaxInt32 {
		return s, o, invalid("spec.priority", "%d: want a 32-bit integer", s.Priority)
	}
	o.Parallelism, o.Priority, o.AllowNonFinite = s.Parallelism, s.Priority, s.AllowNonFinite
	if len(s.IdempotencyKey) > 128 {
		return s, o, invalid("spec.idempotency_key", "%d bytes: want at most 128", len(s.IdempotencyKey))
	}
	o.IdempotencyKey = s.IdempotencyKey
	return s, o, nil
}

// specJSONError names the field of a JSON decoding error.
func specJSONError(err error) *Error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return invalid("spec."+te.Field, "want a JSON %v, got %s", te.Type, te.Value)
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return invalid("spec."+strings.Trim(f, `"`), "unknown field")
	}
	return invalid("spec", "not a JSON object: %s", strings.TrimPrefix(msg, "json: "))
}

// partNames are the parts a spec takes.
func partNames(s Spec) (required, optional []string) {
	switch {
	case s.Kind == "mha" && s.Backward:
		return mhaBackwardParts, mhaBiasParts
	case s.Kind == "mha":
		return mhaParts, mhaBiasParts
	case s.Backward:
		return backwardParts, forwardOutputs
	}
	return attentionParts, nil
}

// jobLabel names a spec's kind of job in messages: "mha backward".
func jobLabel(s Spec) string {
	if s.Backward {
		return s.Kind + " backward"
	}
	return s.Kind
}

// decodeSubmit reads a multipart submit: the "spec" part first, then one
// .npy part per tensor. The body must be bounded by the caller; budget is
// the bytes the parts may take in all.
func decodeSubmit(body io.Reader, boundary string, budget int64, idemHeader string) (*submission, error) {
	mr := multipart.NewReader(body, boundary)
	sub := &submission{tensors: map[string]*tensor.Tensor{}}
	first := true
	var required, optional []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, bodyError("body", err, budget)
		}
		name := p.FormName()
		if first {
			if name != "spec" {
				return nil, invalid("spec", "the first part is %q: want the JSON spec part first", name)
			}
			data, err := io.ReadAll(io.LimitReader(p, maxSpecBytes+1))
			if err != nil {
				return nil, bodyError("spec", err, budget)
			}
			if len(data) > maxSpecBytes {
				return nil, invalid("spec", "%d+ bytes: want at most %d", len(data), maxSpecBytes)
			}
			if sub.spec, sub.opts, err = decodeSpec(data); err != nil {
				return nil, err
			}
			if idemHeader != "" {
				if sub.opts.IdempotencyKey != "" && sub.opts.IdempotencyKey != idemHeader {
					return nil, invalid("Idempotency-Key", "%q differs from spec.idempotency_key %q", idemHeader, sub.opts.IdempotencyKey)
				}
				if len(idemHeader) > 128 {
					return nil, invalid("Idempotency-Key", "%d bytes: want at most 128", len(idemHeader))
				}
				sub.opts.IdempotencyKey = idemHeader
			}
			required, optional = partNames(sub.spec)
			first = false
			continue
		}
		if !contains(required, name) && !contains(optional, name) {
			if !sub.spec.Backward && (name == "do" || name == "dy") {
				return nil, invalid(name, "part %q is a gradient: set spec.backward true for a backward job", name)
			}
			return nil, invalid(name, "unexpected part %q: a %s job takes %s", name, jobLabel(sub.spec), strings.Join(append(append([]string{}, required...), optional...), ", "))
		}
		if sub.tensors[name] != nil {
			return nil, invalid(name, "part %q given twice", name)
		}
		var buf bytes.Buffer
		n, err := buf.ReadFrom(io.LimitReader(p, budget-sub.bytes+1))
		if err != nil {
			return nil, bodyError(name, err, budget)
		}
		sub.bytes += n
		if sub.bytes > budget {
			return nil, tooLarge(name, budget)
		}
		t, err := tensor.DecodeNPY(buf.Bytes())
		if err != nil {
			return nil, invalid(name, "%s", npyMessage(err))
		}
		if err := t.Validate(); err != nil {
			return nil, invalid(name, "%v", err)
		}
		sub.tensors[name] = t
	}
	if first {
		return nil, invalid("spec", "missing: want a multipart body whose first part is the JSON spec")
	}
	for _, n := range required {
		if sub.tensors[n] == nil {
			return nil, invalid(n, "missing part %q: a %s job takes %s", n, jobLabel(sub.spec), strings.Join(required, ", "))
		}
	}
	nb := 0
	for _, n := range optional {
		if sub.tensors[n] != nil {
			nb++
		}
	}
	if nb != 0 && nb != len(optional) {
		return nil, invalid(optional[0], "give all of %s or none", strings.Join(optional, ", "))
	}
	return sub, nil
}

// npyMessage is a .npy decoding error without the package's prefix.
func npyMessage(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "tensor: ")
	return strings.Replace(msg, "npy data: ", "", 1)
}

func bodyError(field string, err error, budget int64) *Error {
	var mbe *maxBytesError
	if errors.As(err, &mbe) {
		return tooLarge(field, budget)
	}
	return invalid(field, "reading the multipart body: %v", err)
}

// maxBytesError marks the end of a body bounded by limitBody.
type maxBytesError struct{ limit int64 }

func (e *maxBytesError) Error() string { return fmt.Sprintf("body exceeds %d bytes", e.limit) }

// limitedReader returns *maxBytesError once more than limit bytes were read.
type limitedReader struct {
	r     io.Reader
	left  int64
	limit int64
}

func limitBody(r io.Reader, limit int64) io.Reader {
	return &limitedReader{r: r, left: limit, limit: limit}
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.left < 0 {
		return 0, &maxBytesError{l.limit}
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return n, &maxBytesError{l.limit}
	}
	return n, err
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
