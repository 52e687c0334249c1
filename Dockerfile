# syntax=docker/dockerfile:1
#
# One image, three entrypoints:
#   /usr/local/bin/ringattn-coordinator   the Raft coordinator (cmd/coordinator)
#   /usr/local/bin/ringattn-worker        a worker (cmd/worker)
#   /usr/local/bin/ringattn               the user CLI (cmd/ringattn), the default
#
# Build:  docker build -t ringattn:dev .   (add --build-arg VERSION=v0.1.0 for releases)
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/ringattn:<version> --push .
# The Kubernetes manifests in deploy/k8s set the command per component.

ARG GO_VERSION=1.26

# ---- build: static binaries, cross-compiled on the builder's own platform
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
# Use the image's Go as is (go.mod's go line is within it); no toolchain
# download, no cgo (static binaries for a distroless base), no VCS stamping
# (.git is not in the build context).
ENV GOTOOLCHAIN=local \
    CGO_ENABLED=0 \
    GOFLAGS=-buildvcs=false
# Dependencies first: this layer stays cached while only our code changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download && go mod verify
COPY . .
# VERSION is what --version and the cluster endpoint report
# (docker build --build-arg VERSION=v0.1.0 .); binaries without a
# main.version variable ignore it.
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" \
      -o /out/ ./cmd/coordinator ./cmd/worker ./cmd/ringattn

# ---- final: no shell, no package manager, non-root (uid/gid 65532)
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/coordinator /usr/local/bin/ringattn-coordinator
COPY --from=build /out/worker /usr/local/bin/ringattn-worker
COPY --from=build /out/ringattn /usr/local/bin/ringattn
USER 65532:65532
# Ports: 4222 is NATS (not here); 7000 raft and 8080 HTTP (coordinator);
# 9090 metrics (worker).
EXPOSE 7000 8080 9090
ENTRYPOINT ["/usr/local/bin/ringattn"]
CMD ["--help"]
