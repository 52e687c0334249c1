#!/usr/bin/env bash
# Regenerates the avo assembly of pkg/kernels from pkg/kernels/_asm (its own
# go.mod). Usage: scripts/genasm.sh [--check]   --check fails if anything changes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d pkg/kernels/_asm ] || exit 0
(cd pkg/kernels/_asm && go generate ./...)
if [ "${1:-}" = "--check" ]; then
  if ! git diff --quiet -- pkg/kernels || [ -n "$(git ls-files --others --exclude-standard pkg/kernels)" ]; then
    echo "genasm: generated assembly is stale; run scripts/genasm.sh and commit:" >&2
    git status --short -- pkg/kernels >&2
    exit 1
  fi
fi
