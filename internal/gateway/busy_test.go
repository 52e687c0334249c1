package gateway

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// TestGatewayBusyRetryAfter: a coordinator's BUSY reply becomes 503 and a
// full queue 429, both with a Retry-After header the clients honour; a
// job above the size limit stays 413 without one.
func TestGatewayBusyRetryAfter(t *testing.T) {
	cases := []struct {
		ae     *client.APIError
		status int
		code   string
		retry  string
	}{
		{&client.APIError{Code: pb.ErrorCode_ERROR_CODE_BUSY, Message: "coordinator busy", RetryAfter: 200 * time.Millisecond}, 503, "busy", "1"},
		{&client.APIError{Code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, Message: "queue full", RetryAfter: 2500 * time.Millisecond}, 429, "queue_full", "3"},
		{&client.APIError{Code: pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, Field: "spec", Message: "job needs 9 bytes"}, 413, "too_large", ""},
	}
	for _, c := range cases {
		e := asError(c.ae)
		rec := httptest.NewRecorder()
		writeError(rec, e)
		if rec.Code != c.status || e.Code != c.code || rec.Header().Get("Retry-After") != c.retry {
			t.Errorf("%v: status %d code %q Retry-After %q, want %d %q %q", c.ae.Code, rec.Code, e.Code,
				rec.Header().Get("Retry-After"), c.status, c.code, c.retry)
		}
	}
}
