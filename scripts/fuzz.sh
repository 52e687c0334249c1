#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short while (CI) or longer
# (by hand). Each target's committed corpus under testdata/fuzz/ already runs
# in `go test`; this explores beyond it. A failure leaves the crasher in the
# package's testdata/fuzz/<Target>/: commit it with the fix.
#
# Usage: scripts/fuzz.sh [fuzztime]     default 10s per target, e.g. 2m
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-10s}
fail=0
n=0
for pkg in $(go list ./... | grep -v '/_asm'); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u || true)
  for t in $targets; do
    n=$((n + 1))
    echo "fuzz: $pkg $t ($fuzztime)"
    if ! go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/fuzz.$$.log 2>&1; then
      # A crasher is written to testdata/fuzz and fails at once. Without
      # one, the engine itself can give up at its deadline on a loaded
      # machine ("context deadline exceeded" with no failing input): run
      # the target once more before calling it a failure.
      if ! grep -q 'Failing input written' /tmp/fuzz.$$.log && grep -q 'context deadline exceeded' /tmp/fuzz.$$.log; then
        echo "fuzz: $pkg $t: the fuzzing engine hit its deadline without a failing input; once more"
        go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/fuzz.$$.log 2>&1 && continue
      fi
      echo "fuzz: $pkg $t FAILED:" >&2
      tail -n 30 /tmp/fuzz.$$.log >&2
      fail=1
    fi
  done
done
rm -f /tmp/fuzz.$$.log
echo "fuzz: $n targets, fuzztime $fuzztime each"
exit $fail
