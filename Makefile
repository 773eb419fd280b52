# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export CARGO_TERM_COLOR ?= auto

.PHONY: test tools crds crds-check

## test: every test tier; needs Go (builds the upstream control plane once) and root for network tests
test: tools
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo test --workspace --locked

## tools: build (or reuse from ~/.cache/sinew) the pinned upstream tools
tools:
	@e2e/tools/build.sh >/dev/null

## crds: regenerate charts/sinew/crds from the Rust API types
crds:
	cargo run -q -p sinew-crds --bin crdgen

crds-check:
	cargo run -q -p sinew-crds --bin crdgen -- --check
