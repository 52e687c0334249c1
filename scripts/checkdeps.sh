#!/usr/bin/env bash
# Checks the dependency rules of DESIGN.md §1 on the non-test imports of
# every package (go list's .Imports; tests may import anything):
#   cmd/* -> internal/* -> pkg/{ringattn,transport,shard,client,tensor} -> pkg/kernels
#   - pkg/mask imports nothing of this module; pkg/kernels and pkg/shard
#     import only pkg/mask; internal/{metrics,xlog,testrand,attnref} import
#     nothing of this module; pkg/ringattn never imports pkg/transport;
#   - only internal/coordinator (and its subpackages, like raftls) imports
#     hashicorp/raft;
#   - only the packages in natsAllowed import nats;
#   - no package imports testing, but test helper packages (named *test,
#     like pkg/transport/transporttest), which only tests import;
#   - no package imports testenv (system tests only), and cmd/ringattn links
#     neither testenv nor a test helper package (transitively).
set -euo pipefail
cd "$(dirname "$0")/.."
mod=github.com/ringattn/ringattn

# The packages that may import nats: the transport (the one place the
# protocol is spoken) and devcluster's embedded server.
natsAllowed='^(pkg/transport(/.*)?|internal/devcluster)$'

fail=0
report() { echo "checkdeps: $1" >&2; fail=1; }

# One line per package: "<path> <import> <import> ...", full paths.
listing=$(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)

while read -r pkg imports; do
  rel=${pkg#"$mod"/}
  all=$(tr ' ' '\n' <<<"$imports")
  own=$(grep "^$mod/" <<<"$all" | sed "s#^$mod/##" || true)    # this module's packages
  ext=$(grep -E '^[^/]*\.' <<<"$all" | grep -v "^$mod/" || true) # other modules'
  std=$(grep -vE '^[^/]*\.' <<<"$all" || true)                   # the standard library
  bad=""
  case "$rel" in
    pkg/mask|internal/metrics|internal/xlog|internal/testrand|internal/attnref)
      bad=$(echo $own) ;;
    pkg/kernels|pkg/kernels/*|pkg/shard)
      bad=$(grep -vx 'pkg/mask' <<<"$own" | tr '\n' ' ' || true) ;;
    pkg/*)
      bad=$(grep -E '^(internal|cmd|testenv)(/|$)' <<<"$own" | grep -vE '^internal/(testrand|attnref|xlog|metrics)$' | tr '\n' ' ' || true) ;;
    internal/*)
      bad=$(grep -E '^(cmd|testenv)(/|$)' <<<"$own" | tr '\n' ' ' || true) ;;
    cmd/*)
      bad=$(grep -E '^testenv(/|$)' <<<"$own" | tr '\n' ' ' || true) ;;
  esac
  if [ "$rel" = pkg/ringattn ] && grep -q '^pkg/transport' <<<"$own"; then bad="$bad pkg/transport"; fi
  case "$rel" in internal/coordinator|internal/coordinator/*) ;; *)
    if grep -q '^github.com/hashicorp/raft' <<<"$ext"; then bad="$bad hashicorp/raft"; fi ;;
  esac
  if ! [[ "$rel" =~ $natsAllowed ]] && grep -q '^github.com/nats-io/' <<<"$ext"; then bad="$bad nats"; fi
  helper=false
  [[ "${rel##*/}" == *test ]] && helper=true
  if ! $helper && grep -qx 'testing' <<<"$std"; then bad="$bad testing"; fi
  if ! $helper; then
    for p in $own; do
      if [[ "${p##*/}" == *test ]]; then bad="$bad $p (a test helper)"; fi
    done
  fi
  bad=$(echo $bad)
  if [ -n "$bad" ]; then report "$rel must not import: $bad"; fi
done <<<"$listing"

# What the user CLI links, transitively: no system tests, no test helpers.
linked=$(go list -deps ./cmd/ringattn | grep "^$mod/" | sed "s#$mod/##" | grep -E '^testenv(/|$)|(^|/)[^/]*test$' || true)
if [ -n "$linked" ]; then report "cmd/ringattn must not link: $(echo $linked)"; fi

exit $fail
