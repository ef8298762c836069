# baton: make run (the demo under baton), make test (every test), make help.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/baton-dev/baton/internal/cli.Version=$(VERSION)

.PHONY: all build run test test-short lint cross fuzz reliability bench-reload bench-balance help

all: build

build: ## build bin/baton and every example written in Go (bin/hello, bin/chat, bin/selfbind, ...)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/baton ./cmd/baton
	$(GO) build -o $(BIN)/ ./examples/...

run: build ## baton supervising its bundled demo server on 127.0.0.1:8080 with 2 workers
	$(BIN)/baton run --name demo -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- $(BIN)/baton demo

test: ## every test, with the race detector
	$(GO) vet ./...
	$(GO) test -race -timeout 20m ./...

test-short: ## unit tests only (skips the end-to-end suite)
	$(GO) test -short -timeout 5m ./...

lint: ## vet, gofmt and staticcheck (when installed)
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed: go install honnef.co/go/tools/cmd/staticcheck@latest"; fi

CROSS_GOOS ?= darwin windows freebsd

cross: ## build and vet the worker library and the examples for $(CROSS_GOOS)
	@for os in $(CROSS_GOOS); do \
		echo "GOOS=$$os go build . ./examples/..."; \
		GOOS=$$os $(GO) build . ./examples/... || exit 1; \
		GOOS=$$os $(GO) vet . ./examples/... || exit 1; \
	done

fuzz: ## run every fuzz target for FUZZTIME each (default 20s)
	@./scripts/fuzz.sh $(or $(FUZZTIME),20s)

reliability: ## every fault and abuse of the reliability suite, 1,000 reloads; writes docs/reliability.md (about 6 min)
	BATON_E2E_RELOADS=1000 $(GO) test -race -count=1 -timeout 30m -run '^TestReliability$$' ./internal/e2e -args -reliability-doc=$(CURDIR)/docs/reliability.md

bench-reload: build ## wrk for 30s while reloading every 100ms, and the overhead against hello standalone
	./bench/reload.sh

.PHONY: bench
bench: ## baton beside nginx, HAProxy, spawn-fcgi and a naive restart (about 12 min); writes docs/benchmarks.md
	./bench/bench.sh

bench-balance: ## 4 workers, new connection per request: each worker's share, shared vs reuseport
	./bench/balance.sh

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
