# vault-plugin-secrets-biot
SHELL        := /usr/bin/env bash
GO           ?= go
VERSION      ?= v0.1.0
PLUGIN       := vault-plugin-secrets-biot
BIN          := $(CURDIR)/bin
LDFLAGS      := -X github.com/biot-med/vault-plugin-secrets-biot.Version=$(VERSION)
STATICCHECK  := honnef.co/go/tools/cmd/staticcheck@v0.8.2
TEST_TIMEOUT ?= 45m
FUZZTIME     ?= 30s

.PHONY: all build vault test unit fmt lint dev fuzz bench reliability clean

all: build

## build: the plugin binary into bin/
build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/$(PLUGIN) ./cmd/$(PLUGIN)
	$(GO) build -trimpath -o $(BIN)/biot-sandbox ./cmd/biot-sandbox

## vault: print the path of the pinned Vault server, building it once (slow)
vault:
	@scripts/vault.sh

## test: every test (unit, fuzz seeds, end-to-end against a real Vault), under -race
test: build
	VAULT_BIN="$$(scripts/vault.sh)" PLUGIN_VERSION=$(VERSION) \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

## unit: the fast tests only (no Vault server)
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test)

## fmt: format the code
fmt:
	gofmt -w $$(git ls-files '*.go')

## lint: gofmt check, go vet and staticcheck (installed on first use)
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

## dev: a Vault dev server with the plugin and a BioT sandbox (or a real BioT)
dev: build
	PLUGIN_VERSION=$(VERSION) scripts/dev.sh

## fuzz: run each fuzz target for FUZZTIME
fuzz:
	@for t in $$($(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
	  echo "== $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) . || exit 1; done

## bench: Go benchmarks of the hot path, then biot/creds against KV and SSH in a real Vault
## and the upstream-economy check (cmd/biot-bench, BENCHMARKS.md); BENCH_* env shortens it
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 .
	VAULT_BIN="$$(scripts/vault.sh)" PLUGIN_VERSION=$(VERSION) $(GO) run ./cmd/biot-bench $(BENCH_FLAGS)

## reliability: the TestReliability* end-to-end scenarios (faults, restarts, leaks, churn for
## BIOT_CHURN_DURATION, default 5m) against a real Vault; prints their RELIABILITY figures
reliability:
	@log=$$(mktemp -t biot-reliability.XXXXXX); \
	echo "reliability: go test -run '^TestReliability' ./test/ (churn $${BIOT_CHURN_DURATION:-5m}); full log: $$log"; \
	VAULT_BIN="$$(scripts/vault.sh)" PLUGIN_VERSION=$(VERSION) BIOT_CHURN_DURATION="$${BIOT_CHURN_DURATION:-5m}" \
	  $(GO) test -count=1 -v -timeout 30m -run '^TestReliability' ./test/ >"$$log" 2>&1; rc=$$?; \
	grep -E '^RELIABILITY ' "$$log" | sort; \
	grep -E '^[[:space:]]*--- FAIL' "$$log"; \
	if [ $$rc -eq 0 ]; then echo PASS; else echo "FAIL (go test exit $$rc; see $$log)"; fi; \
	exit $$rc

clean:
	rm -rf $(BIN)
