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
# usage: e2e/tools/build.sh [--check] [SET]
#        SET is `test` (default: what `make test` runs), `kind` (what e2e/kind/build.sh puts
#        into a kind node image and its container images, plus kind and helm) or `conformance`
#        (the upstream end-to-end suite, e2e.test, run against the kind cluster) or `flannel`
#        (flanneld, the peer `make bench-kind` measures sinew beside)
#        --check: exit 1 (printing what is missing) unless all are cached
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SINEW_CACHE:-$HOME/.cache/sinew}/tools
check_only=false
set_name="test"
for arg in "$@"; do
  case $arg in
    --check) check_only=true ;;
    test | kind | conformance | flannel) set_name=$arg ;;
    *) echo "[tools] unknown argument $arg (expected --check, test, kind, conformance, flannel)" >&2; exit 2 ;;
  esac
done

# module directory | Go package | binary name | extra -ldflags | cgo (CGO_ENABLED=1) and build tags
test_tools=(
  "kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|kube-apiserver|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kubectl|kubectl|K8S|"
  "etcd|go.etcd.io/etcd/server/v3|etcd||"
  "cni|github.com/containernetworking/cni/cnitool|cnitool||"
  "helm|helm.sh/helm/v3/cmd/helm|helm|HELM|"
  "kstatus|sinew.dev/e2e-tools/kstatus|kstatus||"
)
# The kind node image (kubelet, kubeadm, containerd, runc, crictl, CNI plugins), the images
# kubeadm v1.37 deploys (control plane, kube-proxy, etcd, CoreDNS; pause is C, built by
# e2e/kind/build.sh), agnhost for the connectivity checks (and, with regression-issue-74839, for
# the upstream e2e specs run on kind), kind itself, kubectl and helm.
# Versions of containerd, runc, crictl and the CNI plugins are the ones kind v0.33.0 ships.
kind_tools=(
  "kind|sigs.k8s.io/kind|kind||"
  "kubernetes|k8s.io/kubernetes/cmd/kubelet|kubelet|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kubeadm|kubeadm|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kubectl|kubectl|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|kube-apiserver|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|kube-controller-manager|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|kube-scheduler|K8S|"
  "kubernetes|k8s.io/kubernetes/cmd/kube-proxy|kube-proxy|K8S|"
  "kubernetes|k8s.io/kubernetes/test/images/agnhost|agnhost|AGNHOST|"
  "kubernetes|k8s.io/kubernetes/test/images/regression-issue-74839|regression-issue-74839||"
  "etcd|go.etcd.io/etcd/server/v3|etcd||"
  "coredns|github.com/coredns/coredns|coredns||"
  "containerd|github.com/containerd/containerd/v2/cmd/containerd|containerd|CONTAINERD|no_aufs,no_zfs,no_btrfs,no_devmapper"
  "containerd|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2|containerd-shim-runc-v2|CONTAINERD|no_aufs,no_zfs,no_btrfs,no_devmapper"
  "containerd|github.com/containerd/containerd/v2/cmd/ctr|ctr|CONTAINERD|no_aufs,no_zfs,no_btrfs,no_devmapper"
  "runc|github.com/opencontainers/runc|runc|RUNC|cgo,seccomp,urfave_cli_no_docs"
  "cri-tools|sigs.k8s.io/cri-tools/cmd/crictl|crictl|CRICTL|"
  "cni-plugins|github.com/containernetworking/plugins/plugins/main/loopback|loopback||"
  "cni-plugins|github.com/containernetworking/plugins/plugins/main/ptp|ptp||"
  "cni-plugins|github.com/containernetworking/plugins/plugins/main/bridge|bridge||"
  "cni-plugins|github.com/containernetworking/plugins/plugins/ipam/host-local|host-local||"
  "cni-plugins|github.com/containernetworking/plugins/plugins/meta/portmap|portmap||"
  "helm|helm.sh/helm/v3/cmd/helm|helm|HELM|"
)
# The upstream e2e suite is a test binary (`go test -c`), from its own module directory: its
# test-only sums would otherwise change e2e/tools/kubernetes's key (and so the node image's).
# The ginkgo CLI runs that suite in parallel processes (the version the suite is built with).
conformance_tools=(
  "kubernetes-e2e|k8s.io/kubernetes/test/e2e|e2e.test|K8S|gotest"
  "ginkgo|github.com/onsi/ginkgo/v2/ginkgo|ginkgo||"
)
# Flannel (VXLAN backend) for the side-by-side benchmark on kind (e2e/kind/bench.sh); its CNI
# plugin module is not served, so its pods use the reference bridge + host-local of the kind set.
# cgo: its udp backend is C (linked against the glibc of the Debian image it runs in).
flannel_tools=(
  "flannel|github.com/flannel-io/flannel|flanneld|FLANNEL|cgo"
)
if [[ $set_name == kind ]]; then
  tools=("${kind_tools[@]}")
elif [[ $set_name == conformance ]]; then
  tools=("${conformance_tools[@]}")
elif [[ $set_name == flannel ]]; then
  tools=("${flannel_tools[@]}")
else
  tools=("${test_tools[@]}")
fi

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

pin() { # module directory, module path: the version go.mod requires
  awk -v m="$2" '($1 == "require" && $2 == m) {print $3} ($1 == m && $2 ~ /^v/) {print $2}' "$here/$1/go.mod" | head -1
}

k8s_ldflags() {
  local v
  v=$(pin kubernetes k8s.io/kubernetes)
  local minor=${v#v1.}
  minor=${minor%%.*}
  echo "-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}

set_key=""
declare -a links=()
missing=()
for entry in "${tools[@]}"; do
  IFS='|' read -r dir pkg name flags build <<<"$entry"
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
  case $flags in
    HELM) ldflags+=" -X helm.sh/helm/v3/internal/version.version=$(pin helm helm.sh/helm/v3)" ;;
    AGNHOST) ldflags+=" -X main.Version=$(cat "$(go env GOMODCACHE)/k8s.io/kubernetes@$(pin kubernetes k8s.io/kubernetes)/test/images/agnhost/VERSION" 2>/dev/null || echo unknown)" ;;
    CONTAINERD) ldflags+=" -X github.com/containerd/containerd/v2/version.Version=$(pin containerd github.com/containerd/containerd/v2)" ;;
    RUNC) v=$(pin runc github.com/opencontainers/runc) && ldflags+=" -X main.version=${v#v}" ;;
    FLANNEL) ldflags+=" -X github.com/flannel-io/flannel/pkg/version.Version=$(pin flannel github.com/flannel-io/flannel)" ;;
    CRICTL) v=$(pin cri-tools sigs.k8s.io/cri-tools) && ldflags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=${v#v}" ;;
  esac
  # runc needs cgo (its nsexec is C; seccomp is libseccomp, Debian: libseccomp-dev) and links
  # libseccomp dynamically: the kind node image has libseccomp2 from the same Debian release.
  cgo=0
  tags=""
  gocmd=(build)
  IFS=, read -ra build_words <<<"$build"
  for w in "${build_words[@]}"; do
    case $w in
      cgo) cgo=1 ;;
      gotest) gocmd=(test -c) ;;
      *) tags+="${tags:+,}$w" ;;
    esac
  done
  log "building $name from $pkg (pinned in e2e/tools/$dir/go.mod); a cold build takes minutes"
  mkdir -p "$cache/$key"
  start=$SECONDS
  (
    cd "$here/$dir"
    CGO_ENABLED=$cgo GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
      go "${gocmd[@]}" -trimpath -tags "$tags" -ldflags "$ldflags" -o "$out.tmp" "$pkg"
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

[[ $set_name != test ]] && set_key+="$set_name;"
bin="$cache/bin-$(echo "$set_key" | sha256sum | cut -c1-12)"
mkdir -p "$bin"
for target in "${links[@]}"; do
  ln -sfn "$target" "$bin/$(basename "$target")"
done
echo "$bin"
