# ringattn — make targets people expect.
GO ?= go
.PHONY: all build check checksize test test-noasm bench system fuzz generate fmt

all: check test

build:
	$(GO) build ./...

## check: formatting, vet, tidy go.mod, import direction, file size, fresh
## generated code
check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy -diff
	scripts/checkdeps.sh
	scripts/checksize.sh
	scripts/genproto.sh --check
	scripts/genasm.sh --check

## checksize: non-test, non-generated Go files over 600 lines fail (part of check)
checksize:
	scripts/checksize.sh

## test: the whole test suite (what the README and CI run)
test:
	$(GO) test -timeout 20m ./...

## test-noasm: the suite with the generic kernels only
test-noasm:
	$(GO) test -tags noasm -timeout 10m ./pkg/kernels/... ./pkg/ringattn/...

## bench: kernel and ring benchmarks
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x ./pkg/kernels/ ./pkg/ringattn/

## system: the multi-process system and fault tests
system:
	$(GO) test -timeout 15m -run 'TestSystem' ./testenv/...

## fuzz: every fuzz target for FUZZTIME (default 10s) beyond its committed corpus
fuzz:
	scripts/fuzz.sh $(or $(FUZZTIME),10s)

## generate: regenerate protobuf and avo assembly
generate:
	scripts/genproto.sh
	scripts/genasm.sh

fmt:
	gofmt -w $$(git ls-files '*.go')
