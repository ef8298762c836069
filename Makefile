# baton: make run (the demo under baton), make test (every test), make help.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/baton-dev/baton/internal/cli.Version=$(VERSION)

.PHONY: all build run test test-short tools lint cross fuzz reliability bench-reload bench-balance help install install-files uninstall deb

all: build

build: ## build bin/baton and every example written in Go (bin/hello, bin/chat, bin/selfbind, ...)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/baton ./cmd/baton
	$(GO) build -o $(BIN)/ ./examples/...

run: build ## baton supervising its bundled demo server on 127.0.0.1:8080 with 2 workers
	$(BIN)/baton run --name demo -l http=tcp://127.0.0.1:8080 -n 2 --ready notify -- $(BIN)/baton demo

test: ## every test, with the race detector
	$(GO) vet ./...
	$(GO) test -race -parallel 4 -timeout 20m ./...

test-short: ## unit tests only (skips the end-to-end suite)
	$(GO) test -short -timeout 5m ./...

# staticcheck at the version CI runs (`staticcheck -version`: 2026.2.2 is
# v0.8.2): make tools installs it in $(go env GOPATH)/bin.
STATICCHECK_VERSION := v0.8.2
STATICCHECK ?= $(shell command -v staticcheck || echo "$$($(GO) env GOPATH)/bin/staticcheck")

tools: ## install the staticcheck that make lint runs, at its pinned version
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: ## vet, gofmt and staticcheck (make tools installs it)
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	@test -x "$(STATICCHECK)" || { echo "staticcheck is not installed: make tools"; exit 1; }
	$(STATICCHECK) ./...

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
	BATON_E2E_RELOADS=1000 $(GO) test -race -count=1 -parallel 4 -timeout 30m -run '^TestReliability$$' ./internal/e2e -args -reliability-doc=$(CURDIR)/docs/reliability.md

bench-reload: build ## wrk for 30s while reloading every 100ms, and the overhead against hello standalone
	./bench/reload.sh

.PHONY: bench
bench: ## baton beside nginx, HAProxy, spawn-fcgi and a naive restart (about 12 min); writes docs/benchmarks.md
	./bench/bench.sh

bench-balance: ## 4 workers, new connection per request: each worker's share, shared vs reuseport
	./bench/balance.sh

# Installing: make && sudo make install (PREFIX, DESTDIR and the
# directories below can be set on the command line). install-files
# installs $(BATON), built already, and everything that goes with it: a
# packager builds the binary with the flags of its choice, then
# `make install-files BATON=... DESTDIR=...` (scripts/deb.sh does).
PREFIX      ?= /usr/local
DESTDIR     ?=
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
BATON       ?= $(BIN)/baton
# The man pages' date: the last commit's, so that a build is reproducible.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)
SUBST        = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g'

install: build install-files ## install baton, man pages, completions, systemd units, an example config (PREFIX, DESTDIR)

install-files: ## install $(BATON) as built, without building
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/baton \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 0755 $(BATON) $(DESTDIR)$(BINDIR)/baton
	rm -f $(DESTDIR)$(MANDIR)/man1/baton.1* $(DESTDIR)$(MANDIR)/man1/baton-*.1*
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(BATON) gen-man --dir $(DESTDIR)$(MANDIR)/man1 >/dev/null
	gzip -9nf $(DESTDIR)$(MANDIR)/man1/baton.1 $(DESTDIR)$(MANDIR)/man1/baton-*.1
	$(BATON) completion bash >$(DESTDIR)$(BASHCOMPDIR)/baton
	$(BATON) completion zsh >$(DESTDIR)$(ZSHCOMPDIR)/_baton
	$(BATON) completion fish >$(DESTDIR)$(FISHCOMPDIR)/baton.fish
	chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/baton $(DESTDIR)$(ZSHCOMPDIR)/_baton $(DESTDIR)$(FISHCOMPDIR)/baton.fish
	$(SUBST) packaging/systemd/baton@.service.in >$(DESTDIR)$(UNITDIR)/baton@.service
	$(SUBST) packaging/systemd/baton@.socket >$(DESTDIR)$(UNITDIR)/baton@.socket
	chmod 0644 $(DESTDIR)$(UNITDIR)/baton@.service $(DESTDIR)$(UNITDIR)/baton@.socket
	@# An example config, never over one that is there (it may be edited).
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/baton/example.toml ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/baton/example.toml"; \
	else \
		$(SUBST) packaging/example.toml.in >$(DESTDIR)$(SYSCONFDIR)/baton/example.toml && \
		chmod 0644 $(DESTDIR)$(SYSCONFDIR)/baton/example.toml; \
	fi

uninstall: ## remove what install put there, but the example config
	rm -f $(DESTDIR)$(BINDIR)/baton $(DESTDIR)$(MANDIR)/man1/baton.1* $(DESTDIR)$(MANDIR)/man1/baton-*.1* \
		$(DESTDIR)$(BASHCOMPDIR)/baton $(DESTDIR)$(ZSHCOMPDIR)/_baton $(DESTDIR)$(FISHCOMPDIR)/baton.fish \
		$(DESTDIR)$(UNITDIR)/baton@.service $(DESTDIR)$(UNITDIR)/baton@.socket

deb: ## build dist/baton_VERSION_ARCH.deb with dpkg-deb (and lintian it, when installed)
	./scripts/deb.sh

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
