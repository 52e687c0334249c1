package gateway

import (
	"errors"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/pkg/kernels"
)

// TestGatewayPrecision: the submit spec's "precision" reaches the SDK's
// JobOptions (fp32 when absent); anything else is a 400 naming
// spec.precision and the values it wants.
func TestGatewayPrecision(t *testing.T) {
	for body, want := range map[string]kernels.Precision{
		`{}`: kernels.PrecisionF32, `{"precision":"fp32"}`: kernels.PrecisionF32, `{"precision":"bf16"}`: kernels.PrecisionBF16,
	} {
		_, o, err := decodeSpec([]byte(body))
		if err != nil || o.Precision != want {
			t.Errorf("%s: precision %v, %v; want %v", body, o.Precision, err, want)
		}
	}
	for _, body := range []string{`{"precision":"fp16"}`, `{"precision":"BF16"}`} {
		_, _, err := decodeSpec([]byte(body))
		var ge *Error
		if !errors.As(err, &ge) || ge.Status != 400 || ge.Field != "spec.precision" || !strings.Contains(ge.Message, "want fp32 or bf16") {
			t.Errorf("%s: %v, want a 400 on spec.precision", body, err)
		}
	}
}
