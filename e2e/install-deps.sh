#!/usr/bin/env bash
# Installs what sinew's tests need and is not part of a base Debian + Rust + Go machine.
# Idempotent: installs only what is missing, so a warm run takes a second.
set -euo pipefail

# lua5.4 + lua-cjson: the Argo CD health check's tests; musl-tools: static release binaries.
debian_packages=(make iproute2 nftables iptables ca-certificates containernetworking-plugins
  lua5.4 lua-cjson musl-tools file binutils)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[deps] installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "[deps] $tool is required (base toolchain)"; exit 1; }
done
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
# Static (musl) binaries for the container images.
rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$' ||
  rustup target add x86_64-unknown-linux-musl

# cargo-fuzz, for the bounded fuzz run of the plugin's input parser (stable toolchain, no sanitizer).
cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

# cargo-deny: every dependency's licence is checked in CI (deny.toml), so nothing copyleft
# reaches sinew's binaries.
cargo_deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$cargo_deny_version"; then
  cargo install cargo-deny --version "$cargo_deny_version" --locked
fi

# The upstream Go tools (kube-apiserver, etcd, kubectl, cnitool, helm, kstatus) into ~/.cache/sinew.
"$(dirname "$0")/tools/build.sh" >/dev/null
echo "[deps] ready"
