package devcluster_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ringattn/ringattn/internal/devcluster"
	"github.com/ringattn/ringattn/internal/gateway"
)

// TestDevclusterHTTPComposite: one address serves the job API (behind the
// token) and the coordinator's ops endpoints; a non-loopback address
// without a token is refused.
func TestDevclusterHTTPComposite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := devcluster.Start(ctx, devcluster.Config{Workers: 1, WorkerGFLOPS: 10, HTTPAddr: "0.0.0.0:0"}); err == nil || !strings.Contains(err.Error(), "token") {
		t.Fatalf("0.0.0.0 without a token: %v, expected a refusal naming the token", err)
	}
	dev, err := devcluster.Start(ctx, devcluster.Config{Workers: 1, WorkerThreads: 1, WorkerGFLOPS: 10, Gateway: gateway.Config{Token: "tk"}})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	base := "http://" + dev.HTTPAddr()
	for _, c := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/readyz", "", 200}, {"GET", "/healthz", "", 200}, {"GET", "/metrics", "", 200}, {"GET", "/v1/cluster", "", 200},
		{"GET", "/v1/jobs", "", 401}, {"POST", "/v1/jobs", "", 401}, {"GET", "/v1/jobs/x", "", 401}, {"GET", "/v1/info", "", 401},
		{"GET", "/v1/jobs", "tk", 200}, {"GET", "/v1/info", "tk", 200}, {"GET", "/v1/jobs/x", "tk", 404},
	} {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s (token %q): %d, expected %d", c.method, c.path, c.token, resp.StatusCode, c.want)
		}
	}
}
