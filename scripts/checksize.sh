#!/usr/bin/env bash
# Lists every non-test, non-generated Go file longer than MAX lines
# (default 600) and fails if there is one: a file that long holds more
# than one concern: split it into files by concern.
# Generated files (a "Code generated ... DO NOT EDIT." line: protobuf,
# avo stubs) are exempt. Usage: scripts/checksize.sh [MAX]
set -euo pipefail
cd "$(dirname "$0")/.."
max=${1:-600}
fail=0
while IFS= read -r f; do
  [ -f "$f" ] || continue
  case "$f" in *_test.go) continue ;; esac
  if grep -qE '^// Code generated .* DO NOT EDIT\.$' "$f"; then continue; fi
  n=$(wc -l <"$f")
  if [ "$n" -gt "$max" ]; then
    echo "checksize: $f has $n lines (at most $max)" >&2
    fail=1
  fi
done < <(git ls-files --cached --others --exclude-standard -- '*.go')
exit $fail
