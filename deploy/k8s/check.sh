#!/usr/bin/env bash
# Validates the Kubernetes deployment offline: renders every overlay with the
# kustomize Go API, decodes every object strictly against the Kubernetes API
# types and the documented CRD fields, checks the cross-object rules, parses
# the NATS configuration with nats-server, and starts the coordinator and
# worker binaries exactly as the manifests do. The NATS permissions
# (base/nats/permissions.conf) must be what the roles of pkg/transport
# generate (go generate ./internal/authkeys). Run from anywhere; CI calls it
# from .ci/run. Needs only Go (and the module proxy on the first run).
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

# base/nats/permissions.conf is generated from pkg/transport's roles.
(cd ../.. && go run ./internal/authkeys/genk8s -check)

out=$(gofmt -l validate)
if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; exit 1; fi
go mod tidy -diff
go vet ./...
go test -count=1 -timeout 10m "$@" ./...
