package validate

import "testing"

func TestManifestsExpandFollowsKubelet(t *testing.T) {
	env := map[string]string{"A": "x", "NS": "prod"}
	cases := map[string]string{
		"$(A)":                        "x",
		"a-$(A)-$(NS).svc":            "a-x-prod.svc",
		"$$(A)":                       "$(A)",
		"$(MISSING)":                  "$(MISSING)",
		"$(A":                         "$(A",
		"cost $5":                     "cost $5",
		"$(A)$(A)":                    "xx",
		"--peers=$(A)=$(NS):7000,end": "--peers=x=prod:7000,end",
	}
	for in, want := range cases {
		if got := Expand(in, env); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}
