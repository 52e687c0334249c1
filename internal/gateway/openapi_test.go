package gateway_test

import (
	"bufio"
	"os"
	"strings"
	"testing"

	"github.com/ringattn/ringattn/internal/gateway"
)

// TestGatewayOpenAPIDescribesEveryRoute: docs/openapi.yaml has every path
// and method the handler serves, and no path it does not serve.
func TestGatewayOpenAPIDescribesEveryRoute(t *testing.T) {
	f, err := os.Open("../../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	described := map[gateway.Route]bool{}
	paths := map[string]bool{}
	inPaths, path := false, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " ")
		switch {
		case line == "paths:":
			inPaths = true
		case inPaths && line != "" && !strings.HasPrefix(line, " "):
			inPaths = false
		case inPaths && strings.HasPrefix(line, "  /") && strings.HasSuffix(line, ":"):
			path = strings.TrimSuffix(strings.TrimSpace(line), ":")
			paths[path] = true
		case inPaths && path != "" && strings.HasPrefix(line, "    ") && !strings.HasPrefix(line, "     "):
			m := strings.TrimSuffix(strings.TrimSpace(line), ":")
			switch m {
			case "get", "post", "delete", "put", "patch":
				described[gateway.Route{Method: strings.ToUpper(m), Path: path}] = true
			}
		}
	}
	served := map[string]bool{}
	for _, r := range gateway.Routes {
		served[r.Path] = true
		if !described[r] {
			t.Errorf("%s %s is served but not in docs/openapi.yaml", r.Method, r.Path)
		}
		delete(described, r)
	}
	for r := range described {
		t.Errorf("docs/openapi.yaml describes %s %s, which the gateway does not serve", r.Method, r.Path)
	}
	if len(paths) != len(served) {
		t.Errorf("docs/openapi.yaml has paths %v, the gateway serves %v", paths, served)
	}
}
