#!/usr/bin/env bash
# Builds the upstream tools the tests run (kube-apiserver, kubectl, etcd, cnitool, helm, and kstatus,
# a small wrapper of the cli-utils kstatus library used by gitops/check.sh) from the Go
# modules pinned in e2e/tools/<module>/go.{mod,sum}, into a cache outside the clone:
#
#   ${SINEW_CACHE:-~/.cache/sinew}/tools/<module>-<hash of go.mod, go.sum and Go version>/
#
# and links them all into one directory, whose path is the only thing printed on stdout.
# A cached build is reused as long as its pins do not change, so a warm run takes no time.
#
# usage: e2e/tools/build.sh            build what is missing, print the bin directory
#        e2e/tools/build.sh --check    exit 1 (printing what is missing) unless all are cached
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SINEW_CACHE:-$HOME/.cache/sinew}/tools
check_only=false
[[ ${1:-} == --check ]] && check_only=true

# module directory | Go package | binary name | extra -ldflags
tools=(
  "kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|kube-apiserver|K8S"
  "kubernetes|k8s.io/kubernetes/cmd/kubectl|kubectl|K8S"
  "etcd|go.etcd.io/etcd/server/v3|etcd|"
  "cni|github.com/containernetworking/cni/cnitool|cnitool|"
  "helm|helm.sh/helm/v3/cmd/helm|helm|HELM"
  "kstatus|sinew.dev/e2e-tools/kstatus|kstatus|"
)

log() { echo "[tools] $*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "the Go toolchain is required to build the test control plane (install Go >= 1.26)"
  exit 3
fi
go_version=$(go env GOVERSION)

module_key() {
  local dir=$1
  { cat "$here/$dir/go.mod" "$here/$dir/go.sum"; echo "$go_version"; } | sha256sum | cut -c1-12
}

k8s_ldflags() {
  local v
  v=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$here/kubernetes/go.mod")
  local minor=${v#v1.}
  minor=${minor%%.*}
  echo "-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}

set_key=""
declare -a links=()
missing=()
for entry in "${tools[@]}"; do
  IFS='|' read -r dir pkg name flags <<<"$entry"
  key="$dir-$(module_key "$dir")"
  out="$cache/$key/$name"
  set_key+="$key/$name;"
  links+=("$out")
  [[ -x $out ]] && continue
  if $check_only; then
    missing+=("$name")
    continue
  fi
  ldflags="-s -w"
  [[ $flags == K8S ]] && ldflags+=" $(k8s_ldflags)"
  [[ $flags == HELM ]] && ldflags+=" -X helm.sh/helm/v3/internal/version.version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$here/helm/go.mod")"
  log "building $name from $pkg (pinned in e2e/tools/$dir/go.mod); a cold build takes minutes"
  mkdir -p "$cache/$key"
  start=$SECONDS
  (
    cd "$here/$dir"
    CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg"
  )
  mv "$out.tmp" "$out"
  log "built $name in $((SECONDS - start))s -> $out"
done

if $check_only; then
  if ((${#missing[@]})); then
    echo "not built yet: ${missing[*]} (run e2e/tools/build.sh)"
    exit 1
  fi
  exit 0
fi

bin="$cache/bin-$(echo "$set_key" | sha256sum | cut -c1-12)"
mkdir -p "$bin"
for target in "${links[@]}"; do
  ln -sfn "$target" "$bin/$(basename "$target")"
done
echo "$bin"
