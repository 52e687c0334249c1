#!/usr/bin/env bash
# Regenerates the avo assembly of pkg/kernels from pkg/kernels/_asm (its own
# go.mod; avo is not a dependency of ringattn).
# Usage: scripts/genasm.sh [--check]   --check fails if the committed output is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd pkg/kernels/_asm && go run . -out ../kernels_amd64.s -stubs ../stubs_amd64.go -pkg kernels)
if [ "${1:-}" = "--check" ]; then
  if ! git diff --quiet -- pkg/kernels/kernels_amd64.s pkg/kernels/stubs_amd64.go; then
    echo "genasm: generated assembly is stale; run scripts/genasm.sh and commit:" >&2
    git diff --stat -- pkg/kernels/kernels_amd64.s pkg/kernels/stubs_amd64.go >&2
    exit 1
  fi
fi
