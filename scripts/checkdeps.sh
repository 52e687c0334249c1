#!/usr/bin/env bash
# Checks the dependency direction of DESIGN.md §1:
#   cmd/* -> internal/* -> pkg/{ringattn,transport,shard,client,tensor} -> pkg/kernels
# pkg/kernels and pkg/shard import nothing of this module; pkg/ringattn never
# imports pkg/transport; only internal/coordinator imports hashicorp/raft;
# only pkg/transport (and testenv, tests) import nats.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=github.com/ringattn/ringattn
fail=0
deps() { go list -f '{{join .Imports "\n"}}' "$1" 2>/dev/null || true; }
for pkg in $(go list ./... | grep -v '/_asm'); do
  rel=${pkg#"$mod"/}
  imports=$(deps "$pkg")
  own=$(echo "$imports" | grep "^$mod/" | sed "s#^$mod/##" || true)
  bad=""
  case "$rel" in
    pkg/kernels|pkg/kernels/*|pkg/shard) bad=$(echo "$own" | grep -v '^$' || true) ;;
    pkg/*) bad=$(echo "$own" | grep -E '^(internal|cmd|testenv)/' | grep -vE '^internal/(testrand|attnref|xlog|metrics)$' || true) ;;
    internal/*) bad=$(echo "$own" | grep -E '^(cmd|testenv)/' || true) ;;
  esac
  if [ "$rel" = pkg/ringattn ] && echo "$own" | grep -q '^pkg/transport'; then bad="$bad pkg/transport"; fi
  if [ "$rel" != internal/coordinator ] && echo "$imports" | grep -q '^github.com/hashicorp/raft'; then bad="$bad hashicorp/raft"; fi
  case "$rel" in pkg/transport|pkg/transport/*|testenv|testenv/*|cmd/*|internal/*|pkg/client) ;;
    *) if echo "$imports" | grep -q '^github.com/nats-io/'; then bad="$bad nats"; fi ;;
  esac
  bad=$(echo $bad)
  if [ -n "$bad" ]; then echo "checkdeps: $rel must not import: $bad" >&2; fail=1; fi
done
exit $fail
