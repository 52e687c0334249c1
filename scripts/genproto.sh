#!/usr/bin/env bash
# Regenerates every *.pb.go from its .proto with pinned generators:
# protoc from Debian's protobuf-compiler (the generated header records its
# version) and protoc-gen-go at the go.mod version (a `tool` line).
# Usage: scripts/genproto.sh [--check]   --check fails if anything changes.
set -euo pipefail
cd "$(dirname "$0")/.."
want="libprotoc 3.21.12"
if ! command -v protoc >/dev/null || [ "$(protoc --version)" != "$want" ]; then
  echo "genproto: need protoc '$want' (apt-get install -y protobuf-compiler), have '$(protoc --version 2>/dev/null || echo none)'" >&2
  exit 1
fi
plugin=$(go tool -n protoc-gen-go)
protos=$(git ls-files --cached --others --exclude-standard '*.proto' | sort)
[ -n "$protos" ] || exit 0
for dir in $(dirname $protos | sort -u); do
  protoc --plugin=protoc-gen-go="$plugin" -I . --go_out=. --go_opt=paths=source_relative "$dir"/*.proto
done
if [ "${1:-}" = "--check" ]; then
  if ! git diff --quiet -- '*.pb.go' || [ -n "$(git ls-files --others --exclude-standard '*.pb.go')" ]; then
    echo "genproto: generated code is stale; run scripts/genproto.sh and commit:" >&2
    git status --short -- '*.pb.go' >&2
    exit 1
  fi
fi
