#!/usr/bin/env bash
# Builds sinew-operator, sinew-node, sinew (the CNI plugin) and kubectl-sinew (the kubectl
# plugin users download) as static musl release binaries
# into images/out/ (the Docker build context of images/*.Dockerfile), then checks that each one
# is static and runs.
#
# Needs: rustup, and musl-gcc (Debian: musl-tools) because ring compiles C.
# Respects CARGO_TARGET_DIR and CARGO_BUILD_JOBS; extra arguments go to `cargo build`, e.g.
#   nice -n 19 images/build-binaries.sh -j 1
set -euo pipefail

target=x86_64-unknown-linux-musl
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$repo/images/out"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
binaries=(sinew-operator sinew-node sinew kubectl-sinew)

die() { echo "[build-binaries] FAILED: $*" >&2; exit 1; }
log() { echo "[build-binaries] $*"; }

[[ $(uname -m) == x86_64 ]] || die "this script builds and runs $target binaries; the host is $(uname -m)"
for tool in cargo rustup file readelf; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
command -v musl-gcc >/dev/null || die "musl-gcc is required (Debian/Ubuntu: apt-get install -y musl-tools)"

if ! rustup target list --installed | grep -qx "$target"; then
  log "rustup target add $target"
  rustup target add "$target"
fi
# ring (rustls) compiles C for the target: use the musl wrapper unless the caller chose a compiler.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"

# The plugin, exec'd once per pod, must stay free of a Kubernetes client, an async runtime, a
# TLS stack and a regex engine: its normal dependency tree is checked, then it is built on its
# own, so that no feature the daemons turn on in a shared dependency reaches it.
forbidden='^(kube|kube-client|kube-runtime|k8s-openapi|tokio|hyper|hyper-util|rustls|regex|regex-automata|regex-lite) '
plugin_tree=$(cd "$repo" && cargo tree --locked -p sinew-cni -e normal --target "$target" --prefix none --no-dedupe) \
  || die "cargo tree -p sinew-cni"
if bad=$(grep -E "$forbidden" <<<"$plugin_tree" | sort -u) && [[ -n $bad ]]; then
  die "the plugin's dependency tree gained what it must not link: $(tr '\n' ' ' <<<"$bad")"
fi
log "the plugin links $(sort -u <<<"$plugin_tree" | wc -l) crates, none of kube, tokio, hyper, rustls or a regex engine"

log "cargo build --release --target $target (target dir: $target_dir)"
start=$SECONDS
(cd "$repo" && cargo build --locked --release --target "$target" \
  -p sinew-operator -p sinew-node-agent -p kubectl-sinew "$@") || die "cargo build (daemons, kubectl-sinew)"
(cd "$repo" && cargo build --locked --release --target "$target" -p sinew-cni "$@") \
  || die "cargo build (the plugin, alone)"
log "built in $((SECONDS - start))s"

mkdir -p "$out"
printf '# build output of images/build-binaries.sh\n*\n' >"$out/.gitignore"
for bin in "${binaries[@]}"; do
  src="$target_dir/$target/release/$bin"
  [[ -f $src ]] || die "$src was not produced"
  install -m 0755 "$src" "$out/$bin"
done

# Static: no program interpreter, no shared-library dependencies.
for bin in "${binaries[@]}"; do
  path="$out/$bin"
  desc=$(file -b "$path")
  [[ $desc == *ELF*x86-64* ]] || die "$bin is not an x86-64 ELF: $desc"
  [[ $desc == *"statically linked"* || $desc == *"static-pie linked"* ]] \
    || die "$bin is not statically linked: $desc"
  if readelf -lW "$path" | grep -q 'INTERP'; then
    die "$bin has a PT_INTERP program header (dynamic loader): $(readelf -lW "$path" | grep -A1 INTERP)"
  fi
  if readelf -dW "$path" | grep -q '(NEEDED)'; then
    die "$bin needs shared libraries: $(readelf -dW "$path" | grep '(NEEDED)')"
  fi
  if command -v ldd >/dev/null; then
    ldd_out=$(ldd "$path" 2>&1 || true)
    [[ $ldd_out == *"not a dynamic executable"* || $ldd_out == *"statically linked"* ]] \
      || die "ldd reports dependencies for $bin: $ldd_out"
  fi
done
log "all are static"

# They run.
run_check() { # name, expected substring, command...
  local name=$1 want=$2 got
  shift 2
  got=$("$@" 2>&1) || die "$name exited non-zero: $got"
  [[ $got == *"$want"* ]] || die "$name printed ${got@Q}, expected it to contain ${want@Q}"
  log "$name: $got"
}
run_check "sinew-operator --version" "sinew-operator " "$out/sinew-operator" --version
run_check "sinew-node --version" "sinew-node " "$out/sinew-node" --version
run_check "kubectl-sinew --version" "kubectl-sinew " "$out/kubectl-sinew" --version
run_check "CNI_COMMAND=VERSION sinew" '"supportedVersions"' \
  env -i CNI_COMMAND=VERSION "$out/sinew" </dev/null

log "sizes:"
for bin in "${binaries[@]}"; do
  printf '  %-16s %10s bytes  (%s)\n' "$bin" "$(stat -c %s "$out/$bin")" "$(du -h "$out/$bin" | cut -f1)"
done
log "ok: $out"
