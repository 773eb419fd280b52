# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
export CARGO_TERM_COLOR ?= auto

.PHONY: demo test deps tools crds crds-check fuzz bench bench-e2e bench-scale bench-policy bench-kind bench-kind-policy kind kind-build kind-conformance kind-netpol

## demo: the main job, locally (root): control plane, 3 nodes as namespaces, sinew, pods, pool status, a live mode switch
demo: deps
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo run -q -p sinew-e2e --bin demo

## test: every test tier; needs Go (builds the upstream control plane once) and root for network tests
test: deps
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo test --workspace --locked

## deps: install what is missing on this machine (Debian packages such as nftables, Rust components, the pinned Go tools); a second run takes a second
deps:
	@e2e/install-deps.sh

## tools: build (or reuse from ~/.cache/sinew) the pinned upstream tools
tools:
	@e2e/tools/build.sh >/dev/null

## crds: regenerate charts/sinew/crds from the Rust API types
crds:
	cargo run -q -p sinew-crds --bin crdgen

crds-check:
	cargo run -q -p sinew-crds --bin crdgen -- --check

## fuzz: run the plugin's stdin/env parser fuzz target (cargo-fuzz, stable, no sanitizer)
FUZZ_SECONDS ?= 60
FUZZ_TARGET_DIR ?= $(HOME)/.cache/sinew/fuzz-target
fuzz:
	cd cni-plugin && cargo fuzz run --target-dir $(FUZZ_TARGET_DIR) -s none netconf -- -seed=1 -max_total_time=$(FUZZ_SECONDS)

## bench: the CNI benchmarks (root): the plugins exec'd directly (sinew, ptp+host-local, /bin/true, the kernel's own datapath work for a pod), then sinew vs ptp+host-local through cnitool
bench: tools
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo run -q -p sinew-e2e --release --bin bench -- plugin
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo run -q -p sinew-e2e --release --bin bench -- cni

## bench-e2e: the end-to-end benchmark (root): a 3-node local cluster, pods/s, pool status and mode-switch latency, pod-to-pod TCP vs a bare veth; writes docs/benchmarks.md
bench-e2e: tools
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo run -q -p sinew-e2e --release --bin bench -- e2e --write-docs

## bench-scale: Kubernetes' limits (root): 5,000 nodes, 50 pools, 150,000 pods in the real API server; the operator, 3 real agents among the synthetic peers, pod churn at 100/s, the API server's watch traffic; writes docs/benchmarks.md (quick run: bench scale --nodes 1000 --pods-per-node 10)
bench-scale: tools
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo run -q -p sinew-e2e --release --bin bench -- scale --write-docs

## bench-policy: one node's agent (root) against 10,000 pods, 500 namespaces, 1,000 NetworkPolicies in the real API server: memory with policy off and on, CPU per change, policy edit to kernel table p50/p99; writes docs/benchmarks.md
bench-policy: tools
	SINEW_TOOLS_BIN=$$(e2e/tools/build.sh) cargo run -q -p sinew-e2e --release --bin bench -- policy --write-docs

## bench-kind: sinew beside Flannel on two fresh kind clusters built offline here (root): pods Ready/s, creation-to-Ready p50/p99, cross-node TCP; then sinew's NetworkPolicy (below); writes docs/benchmarks.md
bench-kind:
	e2e/kind/bench.sh --write-docs

## bench-kind-policy: sinew's NetworkPolicy on a fresh kind cluster (root): TCP and connections/s with policy off, on, and 1,000 policies in; policy created -> enforced p50/p99; writes docs/benchmarks.md
bench-kind-policy:
	SINEW_BENCH_ONLY=sinew SINEW_BENCH_PARTS=policy e2e/kind/bench.sh --write-docs

## kind: sinew on a real kind cluster (1 control plane + 2 workers) built offline here (root): every check of e2e/kind/README.md, then tear-down
kind:
	e2e/kind/run.sh

## kind-build: only build (or reuse from ~/.cache/sinew/kind) the kind node image and its images
kind-build:
	e2e/kind/build.sh

## kind-conformance: make kind plus the upstream sig-network specs ([Conformance], Granular Checks: Services, Conntrack, and the Netpol specs; e2e.test and ginkgo, built once)
kind-conformance:
	SINEW_KIND_CONFORMANCE=1 SINEW_KIND_NETPOL=1 e2e/kind/run.sh

## kind-netpol: make kind plus the upstream [sig-network] Netpol specs (48 of 51; SCTP traffic excluded)
kind-netpol:
	SINEW_KIND_NETPOL=1 e2e/kind/run.sh
