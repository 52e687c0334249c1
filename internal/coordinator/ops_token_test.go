package coordinator

import (
	"net/http"
	"testing"
)

// TestCoordinatorOpsToken: with --ops-token the endpoints that show jobs
// want the bearer token (401 without it or with another); with tenants
// enforced and no token they are closed (403); health, readiness and the
// cluster view stay open either way.
func TestCoordinatorOpsToken(t *testing.T) {
	get := func(url, token string) int {
		t.Helper()
		req, err := http.NewRequest("GET", url, nil)
		noErr(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		noErr(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	tc := newCluster(t, 1, func(c *Config) { c.HTTPAddr = "127.0.0.1:0"; c.OpsToken = "s3cret" })
	tc.leader()
	base := "http://" + tc.nodes[0].HTTPAddr()
	for _, p := range []string{"/", "/v1/jobs", "/v1/jobs/nope"} {
		if code := get(base+p, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token = %d, want 401", p, code)
		}
		if code := get(base+p, "s3cre"); code != http.StatusUnauthorized {
			t.Errorf("GET %s with another token = %d, want 401", p, code)
		}
	}
	if code := get(base+"/v1/jobs", "s3cret"); code != http.StatusOK {
		t.Errorf("GET /v1/jobs with the token = %d, want 200", code)
	}
	if code := get(base+"/v1/jobs/nope", "s3cret"); code != http.StatusNotFound {
		t.Errorf("GET /v1/jobs/nope with the token = %d, want 404", code)
	}
	for _, p := range []string{"/healthz", "/readyz", "/v1/cluster"} {
		if code := get(base+p, ""); code != http.StatusOK {
			t.Errorf("GET %s without a token = %d, want 200", p, code)
		}
	}

	tc2 := newCluster(t, 1, func(c *Config) { c.HTTPAddr = "127.0.0.1:0"; c.EnforceTenants = true })
	tc2.leader()
	base2 := "http://" + tc2.nodes[0].HTTPAddr()
	if code := get(base2+"/v1/jobs", ""); code != http.StatusForbidden {
		t.Errorf("tenants enforced, no token: GET /v1/jobs = %d, want 403", code)
	}
	if code := get(base2+"/healthz", ""); code != http.StatusOK {
		t.Errorf("tenants enforced: GET /healthz = %d, want 200", code)
	}
}
