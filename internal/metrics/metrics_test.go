package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsHandler(t *testing.T) {
	r := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "things_total", Help: "Things."})
	r.MustRegister(c)
	c.Add(3)
	rec := httptest.NewRecorder()
	Handler(r).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), "ringattn_things_total 3") || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("metrics output lacks expected series:\n%s", body)
	}
	if len(DurationBuckets) != 14 || DurationBuckets[0] != 0.01 {
		t.Fatalf("buckets = %v", DurationBuckets)
	}
}
