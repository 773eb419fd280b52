#!/usr/bin/env bash
# Builds, offline, everything a kind cluster needs, on a machine that can reach only Debian's
# archive and the Go module proxy (no image can be pulled from any registry):
#
#   - Debian packages it needs (docker.io, debootstrap, libseccomp-dev, ...) if missing;
#   - the script-owned Docker engine, in its own network namespace (e2e/kind/dockerd.sh);
#   - kind, kubelet, kubeadm, kubectl, the control plane, kube-proxy, etcd, CoreDNS, containerd,
#     runc, crictl, the reference CNI plugins, agnhost, regression-issue-74839 and helm from their
#     pinned Go modules (e2e/tools/build.sh kind), and pause from the C source in the pinned
#     Kubernetes module;
#   - three Debian bookworm root filesystems made with debootstrap: the node's (systemd,
#     iptables, nftables, ...), a slim one for the images that need a userland (kube-proxy;
#     sinew-node is FROM scratch) and one for the upstream e2e test images (agnhost,
#     glibc-dns-testing, nginx; busybox is its static busybox FROM scratch);
#   - the images kubeadm v1.37 deploys, under the exact names it asks for, plus the e2e test
#     images the upstream sig-network specs run (agnhost, glibc-dns-testing, busybox, nginx,
#     regression-issue-74839), under the names e2e.test v1.37.2 asks for;
#   - the node image, assembled by hand the way `kind build node-image` does it (which would
#     pull): the node rootfs with kind's base files, the binaries, and the images imported into
#     its containerd.
#
# Everything is cached under ${SINEW_CACHE:-~/.cache/sinew}/kind/<key>/, where <key> hashes the
# pins (the Go tool modules, the Debian package lists, this script and the node files), so a
# warm run only loads what Docker lacks. Prints the node image's name on stdout (the last line)
# and writes the names of what it built to ${SINEW_CACHE:-~/.cache/sinew}/kind/current.env.
#
# usage: e2e/kind/build.sh        (root; leaves the Docker engine running: dockerd.sh stop)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache_root=${SINEW_CACHE:-$HOME/.cache/sinew}/kind
suite=bookworm
mirror=${SINEW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
k8s_version=v1.37.2

# The node: what kind's base image installs (images/base/Dockerfile of kind v0.33.0), minus the
# storage extras (NFS, iSCSI) and fuse-overlayfs, which this cluster does not use.
node_packages=systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,e2fsprogs,iputils-ping
# Images that need a userland: kube-proxy (iptables, nft, conntrack), flannel in bench.sh.
slim_packages=iptables,nftables,conntrack,iproute2,ca-certificates,netcat-openbsd,iputils-ping
# The upstream e2e test images: for agnhost the Debian counterparts of what its upstream (alpine)
# image adds, which the upstream e2e tests exec in it (curl, nc, dig, ...); dig is also all of
# glibc-dns-testing (upstream: debian bookworm-slim + dnsutils); nginx-light for the nginx image
# (upstream: nginx alpine); busybox-static for the busybox image (FROM scratch, as upstream's).
e2e_packages=bind9-dnsutils,curl,netcat-openbsd,iproute2,iperf,bash,util-linux,socat,ca-certificates,passwd,nginx-light,busybox-static
host_packages=(docker.io debootstrap jq gcc libc6-dev libseccomp-dev pkg-config iproute2 util-linux)
# Debian's docker.io has no buildx: the classic builder (a newer docker CLI would ask for buildx).
export DOCKER_BUILDKIT=0

log() { echo "[kind-build] $*" >&2; }
die() { echo "[kind-build] FAILED: $*" >&2; exit 1; }
timed() { # name, command...: runs it and logs how long it took
  local name=$1 start=$SECONDS
  shift
  "$@"
  log "step $name: $((SECONDS - start))s"
}

[[ $(id -u) == 0 ]] || die "run as root (dockerd, debootstrap, network namespaces)"
[[ $(uname -m) == x86_64 ]] || die "x86-64 only"

install_host_packages() {
  local missing=() p
  for p in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # policy-rc.d may forbid starting services: dockerd is started by dockerd.sh anyway.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

build_tools() {
  bin=$("$repo/e2e/tools/build.sh" kind)
}

# The key of everything built below: the tool set (its bin directory's name hashes every module
# pin and the Go version), the package lists, and the files the images are made of.
compute_key() {
  key=$({
    echo "$bin" "$suite" "$mirror" "$node_packages" "$slim_packages" "$e2e_packages" "$k8s_version"
    cat "${BASH_SOURCE[0]}" "$here"/node/*
  } | sha256sum | cut -c1-12)
  out=$cache_root/$key
  mkdir -p "$out"
  node_image=sinew.local/kind-node:$k8s_version-$key
  slim_image=sinew.local/debian-slim:$suite-$key
  e2e_base=sinew.local/e2e-base:$suite-$key
}

# debootstrap (minbase), as a tarball keyed by its package list only (debs are cached too), so
# that changing anything else does not redo it.
debootstrap_tar() { # name, packages -> prints the tarball's path
  local name=$1 packages=$2 k tar dir
  k=$(echo "$suite $mirror $packages" | sha256sum | cut -c1-12)
  tar=$cache_root/rootfs/$name-$k.tar
  if [[ ! -f $tar ]]; then
    dir=$cache_root/rootfs/$name-$k.d
    rm -rf "$dir"
    mkdir -p "$cache_root/debs" "$dir"
    log "debootstrap $suite ($name): $packages"
    debootstrap --variant=minbase --include="$packages" --cache-dir="$cache_root/debs" \
      "$suite" "$dir" "$mirror" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log" >&2; die "debootstrap $name (log: $dir.log)"; }
    # What images do not need: package lists, docs, man pages, locales.
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/doc/* \
      "$dir"/usr/share/man/* "$dir"/usr/share/locale/* "$dir"/usr/share/info/*
    tar --numeric-owner --xattrs -C "$dir" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$dir"
  fi
  echo "$tar"
}

# The rootfs tarball of an image: the debootstrap'd one, for the node with kind's files and the
# binaries added.
rootfs() { # name, packages
  local name=$1 packages=$2 base dir
  [[ -f $out/$name.tar ]] && return 0
  base=$(debootstrap_tar "$name" "$packages")
  if [[ $name != node ]]; then
    ln -f "$base" "$out/$name.tar"
    return 0
  fi
  dir=$out/$name.rootfs
  rm -rf "$dir"
  mkdir -p "$dir"
  tar --numeric-owner --xattrs -C "$dir" -xf "$base"
  prepare_node_rootfs "$dir"
  tar --numeric-owner --xattrs -C "$dir" -cf "$out/$name.tar.tmp" .
  mv "$out/$name.tar.tmp" "$out/$name.tar"
  rm -rf "$dir"
}

# What kind's base image Dockerfile does (kind v0.33.0, images/base), done on the rootfs
# directory, plus what `kind build node-image` adds (binaries, /kind/version).
prepare_node_rootfs() {
  local dir=$1 files
  files=$(go env GOMODCACHE)/sigs.k8s.io/kind@$(awk '$1 == "require" && $2 == "sigs.k8s.io/kind" {print $3}' "$repo/e2e/tools/kind/go.mod")/images/base/files
  [[ -d $files ]] || die "kind's base files are missing: $files"
  install -d -m 0755 "$dir/kind" "$dir/kind/bin" "$dir/kind/manifests" "$dir/LICENSES"
  install -m 0755 "$files"/usr/local/bin/* "$dir/usr/local/bin/"
  install -m 0755 "$files"/kind/bin/* "$dir/kind/bin/"
  install -m 0644 "$files"/kind/README.txt "$dir/kind/"
  install -m 0644 "$files"/etc/crictl.yaml "$dir/etc/"
  install -D -m 0644 -t "$dir/etc/containerd" "$files"/etc/containerd/*
  install -D -m 0644 -t "$dir/etc/default" "$files"/etc/default/*
  install -D -m 0644 -t "$dir/etc/sysctl.d" "$files"/etc/sysctl.d/*
  install -D -m 0644 -t "$dir/etc/systemd/system" "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice
  install -D -m 0644 -t "$dir/etc/systemd/system/kubelet.service.d" "$files"/etc/systemd/system/kubelet.service.d/*
  find "$dir/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
  rm -f "$dir"/lib/systemd/system/multi-user.target.wants/* "$dir"/etc/systemd/system/*.wants/* \
    "$dir"/lib/systemd/system/local-fs.target.wants/* "$dir"/lib/systemd/system/sockets.target.wants/*udev* \
    "$dir"/lib/systemd/system/sockets.target.wants/*initctl* "$dir"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >>"$dir/etc/systemd/journald.conf"
  ln -sfn /usr/lib/systemd/systemd "$dir/sbin/init"
  systemctl --root="$dir" enable kubelet.service containerd.service undo-mount-hacks.service >&2
  systemctl --root="$dir" mask systemd-binfmt.service >&2
  install -d -m 0755 "$dir/etc/kubernetes/manifests" "$dir/opt/cni/bin"

  # Binaries: Kubernetes in /usr/bin (kind's kubelet unit expects /usr/bin/kubelet), the runtime
  # in /usr/local/{bin,sbin} as in kind's base image.
  install -m 0755 "$bin/kubelet" "$bin/kubeadm" "$bin/kubectl" "$dir/usr/bin/"
  install -m 0755 "$bin/containerd" "$bin/containerd-shim-runc-v2" "$bin/ctr" "$bin/crictl" "$dir/usr/local/bin/"
  install -m 0755 "$bin/runc" "$dir/usr/local/sbin/runc"
  install -m 0755 "$bin/loopback" "$bin/ptp" "$bin/bridge" "$bin/host-local" "$bin/portmap" "$dir/opt/cni/bin/"
  # containerd's base OCI spec, as kind's base image makes it (product_uuid hook, no rlimits).
  "$bin/ctr" oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' >"$dir/etc/containerd/cri-base.json"
  # The sandbox image is the pause kubeadm wants (kind's config names 3.10).
  sed -i "s|sandbox_image = .*|sandbox_image = \"$pause_image\"|" "$dir/etc/containerd/config.toml"
  # A machine that cannot lower oom_score_adj (no CAP_SYS_RESOURCE in the bounding set) makes
  # every container fail to start unless containerd leaves oom_score_adj alone.
  if ! (((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status) >> 24) & 1)); then
    sed -i 's|restrict_oom_score_adj = false|restrict_oom_score_adj = true|' "$dir/etc/containerd/config.toml"
  fi
  echo "$k8s_version" >"$dir/kind/version"
  install -m 0644 "$here/node/default-storage.yaml" "$dir/kind/manifests/default-storage.yaml"
  install -m 0644 "$here/node/99-kubeadm-prerequisites.conf" "$dir/etc/sysctl.d/"
}

# pause, from the pinned Kubernetes module's C source, as its Makefile builds it.
build_pause() {
  local src
  src=$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/build/pause/linux/pause.c
  [[ -f $src ]] || (cd "$repo/e2e/tools/kubernetes" && go mod download k8s.io/kubernetes)
  [[ -f $out/pause ]] && return 0
  gcc -Os -Wall -Werror -static -DVERSION="v$pause_version-sinew" -o "$out/pause.tmp" "$src"
  mv "$out/pause.tmp" "$out/pause"
}

has_image() { docker image inspect "$1" >/dev/null 2>&1; }
# The images under upstream names carry no key in their tag: a label says which build made them.
has_current_image() {
  [[ $(docker image inspect -f '{{index .Config.Labels "dev.sinew.kind-key"}}' "$1" 2>/dev/null) == "$key" ]]
}

# docker build of a generated Dockerfile; the context holds only the files it copies.
image() { # tag, Dockerfile text, files to copy into the context...
  local tag=$1 dockerfile=$2 ctx
  shift 2
  has_current_image "$tag" && return 0
  ctx=$(mktemp -d "$out/ctx.XXXXXX")
  (($#)) && cp "$@" "$ctx/"
  printf '%s\n' "$dockerfile" >"$ctx/Dockerfile"
  log "docker build $tag"
  docker build -q --label "dev.sinew.kind-key=$key" -t "$tag" "$ctx" >/dev/null 2>"$out/docker-build.log" \
    || { cat "$out/docker-build.log" >&2; die "docker build $tag"; }
  rm -rf "$ctx"
}

build_images() {
  if ! has_image "$slim_image"; then
    docker import "$out/slim.tar" "$slim_image" >&2
  fi
  local scratch_env='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  image "registry.k8s.io/pause:$pause_version" "FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT [\"/pause\"]" "$out/pause"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    image "registry.k8s.io/$c:$k8s_version" "FROM scratch
$scratch_env
COPY $c /usr/local/bin/$c
ENTRYPOINT [\"/usr/local/bin/$c\"]" "$bin/$c"
  done
  # kube-proxy programs iptables (or nftables) and conntrack: a Debian userland.
  image "registry.k8s.io/kube-proxy:$k8s_version" "FROM $slim_image
COPY kube-proxy /usr/local/bin/kube-proxy
ENTRYPOINT [\"/usr/local/bin/kube-proxy\"]" "$bin/kube-proxy"
  image "registry.k8s.io/etcd:$etcd_tag" "FROM scratch
$scratch_env
COPY etcd /usr/local/bin/etcd
ENTRYPOINT [\"/usr/local/bin/etcd\"]" "$bin/etcd"
  image "registry.k8s.io/coredns/coredns:$coredns_version" "FROM scratch
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT [\"/coredns\"]" "$bin/coredns"
  # As upstream's test/images/agnhost/Dockerfile lays it out (minus its fake registry content
  # and /coredns, which no spec of the kind tier's set runs).
  if ! has_image "$e2e_base"; then
    docker import "$out/e2e.tar" "$e2e_base" >&2
  fi
  local porter
  porter=$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/test/images/agnhost/porter
  image "$agnhost_image" "FROM $e2e_base
EXPOSE 80 8080 8081 9376 5000
RUN mkdir /uploads && ln -s /usr/bin/iperf /usr/local/bin/iperf 2>/dev/null; \
    useradd -u 1000 user-defined-in-image && groupadd -g 50000 group-defined-in-image && \
    usermod -aG group-defined-in-image user-defined-in-image
COPY localhost.crt localhost.key /
COPY agnhost /agnhost
RUN ln -s agnhost /agnhost-2
ENTRYPOINT [\"/agnhost\"]
CMD [\"pause\"]" "$bin/agnhost" "$porter/localhost.crt" "$porter/localhost.key"
  # The other images the sig-network specs run (test/images/<name>/Dockerfile upstream):
  # glibc-dns-testing is Debian bookworm with dnsutils (the DNS specs' glibc prober runs dig; the
  # /coredns upstream adds is run by no spec of the set);
  image "$(e2e_image GlibcDnsTesting)" "FROM $e2e_base
CMD [\"bash\"]"
  # nginx serves its default page on port 80 in the foreground (the Endpoints specs' pods);
  image "$(e2e_image Nginx)" "FROM $e2e_base
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD [\"nginx\", \"-g\", \"daemon off;\"]"
  # busybox (the Conntrack specs run its sh, sleep and nc): Debian's static busybox, FROM scratch
  # with its applets linked in /bin as upstream's busybox image has them;
  tar -xOf "$out/e2e.tar" "$(tar -tf "$out/e2e.tar" | grep -E '^\./(usr/)?bin/busybox$' | head -1)" >"$out/busybox"
  chmod 0755 "$out/busybox"
  image "$(e2e_image BusyBox)" "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN [\"/bin/mkdir\", \"-p\", \"/tmp\", \"/etc\", \"/root\"]
$scratch_env
CMD [\"sh\"]" "$out/busybox"
  # regression-issue-74839 (the Conntrack spec on out-of-window packets): the Go program of the
  # pinned Kubernetes module on Debian, as upstream's debian-base image.
  image "$(e2e_image RegressionIssue74839)" "FROM $slim_image
COPY regression-issue-74839 /regression-issue-74839
ENTRYPOINT [\"/regression-issue-74839\"]" "$bin/regression-issue-74839"
}

# The name and tag e2e.test v1.37.2 uses for one of its images (test/utils/image/manifest.go of the
# pinned module: `configs[NAME] = Config{list.PromoterE2eRegistry, "name", "version"}`).
e2e_image() { # NAME in manifest.go
  local line
  line=$(grep -E "^\s*configs\[$1\] = Config\{list\.PromoterE2eRegistry, " "$manifest") \
    || die "$1 is not a PromoterE2eRegistry image in $manifest"
  line=${line#*PromoterE2eRegistry, }
  line=${line%\}}
  line=${line//\"/}
  echo "registry.k8s.io/e2e-test-images/${line%%, *}:${line#*, }"
}

# The images kubeadm deploys must be exactly the names it asks for.
check_kubeadm_images() {
  local want
  want=$("$bin/kubeadm" config images list --kubernetes-version "$k8s_version" 2>/dev/null)
  local img
  for img in $want; do
    has_image "$img" || die "kubeadm wants $img, which was not built (kubeadm config images list: $(echo "$want" | tr '\n' ' '))"
  done
}

# The node image: the node rootfs imported, then (like `kind build node-image`) a container of it
# runs containerd, every image is imported into its k8s.io namespace, and the container is
# committed with kind's entrypoint.
build_node_image() {
  has_image "$node_image" && return 0
  local base=sinew.local/kind-node-base:$key ctr_id images=() img
  if ! has_image "$base"; then
    # docker import cannot set STOPSIGNAL: a one-line build on top of the imported rootfs does
    # (systemd exits on SIGRTMIN+3; SIGTERM makes it re-execute). docker commit keeps it.
    docker import "$out/node.tar" "$base-rootfs" >&2
    image "$base" "FROM $base-rootfs
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [\"/usr/local/bin/entrypoint\", \"/sbin/init\"]"
  fi
  images=("registry.k8s.io/pause:$pause_version" "$agnhost_image"
    "$(e2e_image GlibcDnsTesting)" "$(e2e_image Nginx)" "$(e2e_image BusyBox)"
    "$(e2e_image RegressionIssue74839)"
    "registry.k8s.io/kube-proxy:$k8s_version" "registry.k8s.io/etcd:$etcd_tag"
    "registry.k8s.io/coredns/coredns:$coredns_version")
  for img in kube-apiserver kube-controller-manager kube-scheduler; do
    images+=("registry.k8s.io/$img:$k8s_version")
  done
  docker save -o "$out/images.tar" "${images[@]}"
  ctr_id=$(docker run -d --entrypoint=sleep --security-opt seccomp=unconfined "$base" infinity)
  build_container=$ctr_id
  docker exec "$ctr_id" bash -c 'nohup containerd >/tmp/containerd.log 2>&1 &'
  for _ in $(seq 30); do
    docker exec "$ctr_id" ctr version >/dev/null 2>&1 && break
    sleep 1
  done
  docker exec -i "$ctr_id" ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - \
    <"$out/images.tar" >"$out/ctr-import.log" 2>&1 \
    || { tail "$out/ctr-import.log" >&2; die "ctr images import"; }
  # The archive's own index is imported under a generated import-<date> name: drop it.
  docker exec "$ctr_id" sh -c 'ctr --namespace=k8s.io images list -q | grep "^import-" | xargs -r ctr --namespace=k8s.io images rm' >/dev/null 2>&1
  log "images in the node: $(docker exec "$ctr_id" ctr --namespace=k8s.io images list -q 2>/dev/null | grep -v '^sha256:' | tr '\n' ' ')"
  docker exec "$ctr_id" pkill containerd
  for _ in $(seq 30); do
    docker exec "$ctr_id" pgrep containerd >/dev/null 2>&1 || break
    sleep 1
  done
  docker exec "$ctr_id" rm -f /tmp/containerd.log
  docker commit \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    "$ctr_id" "$node_image" >&2
  docker rm -f -v "$ctr_id" >/dev/null
  build_container=""
  rm -f "$out/images.tar"
}

build_container=""
cleanup() {
  if [[ -n $build_container ]]; then
    docker rm -f -v "$build_container" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# Images and cache directories of older keys: each node image is about 1 GB.
prune_old_keys() {
  local ref dir
  while read -r ref; do
    [[ $ref == *"$key"* ]] || docker rmi "$ref" >/dev/null 2>&1 || true
  done < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep '^sinew.local/\(kind-node\|kind-node-base\|debian-slim\|agnhost-base\|e2e-base\):')
  for dir in "$cache_root"/*/; do
    dir=${dir%/}
    if [[ $(basename "$dir") =~ ^[0-9a-f]{12}$ && $(basename "$dir") != "$key" ]]; then
      rm -rf "$dir"
    fi
  done
  docker image prune -f >/dev/null 2>&1 || true
}

main() {
  local start=$SECONDS
  # One build or run at a time (e2e/kind/run.sh holds the lock and says so).
  if [[ ${SINEW_KIND_LOCKED:-} != 1 ]]; then
    exec 9>/run/lock/sinew-kind.lock
    flock -w 1800 9 || die "another kind build or run holds /run/lock/sinew-kind.lock"
  fi
  timed "apt packages" install_host_packages
  timed "Go tools (e2e/tools/build.sh kind)" build_tools
  eval "$("$here/dockerd.sh" start)"
  export DOCKER_HOST
  compute_key
  pause_version=$(sed -n 's/^TAG ?= //p' "$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/build/pause/Makefile" 2>/dev/null || true)
  [[ -n $pause_version ]] || (cd "$repo/e2e/tools/kubernetes" && go mod download k8s.io/kubernetes)
  pause_version=$(sed -n 's/^TAG ?= //p' "$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/build/pause/Makefile")
  pause_image=registry.k8s.io/pause:$pause_version
  etcd_tag=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$repo/e2e/tools/etcd/go.mod")
  etcd_tag=${etcd_tag#v}-0
  coredns_version=$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$repo/e2e/tools/coredns/go.mod")
  agnhost_image=registry.k8s.io/e2e-test-images/agnhost:$(cat "$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/test/images/agnhost/VERSION")
  manifest=$(go env GOMODCACHE)/k8s.io/kubernetes@$k8s_version/test/utils/image/manifest.go
  [[ $(e2e_image Agnhost) == "$agnhost_image" ]] || die "agnhost: VERSION says $agnhost_image, manifest.go $(e2e_image Agnhost)"
  log "key $key (cache $out)"
  timed "node rootfs (debootstrap)" rootfs node "$node_packages"
  timed "slim rootfs (debootstrap)" rootfs slim "$slim_packages"
  timed "e2e test images' rootfs (debootstrap)" rootfs e2e "$e2e_packages"
  timed "pause (gcc -static)" build_pause
  timed "images" build_images
  check_kubeadm_images
  timed "node image" build_node_image
  prune_old_keys
  # What e2e/kind/run.sh (and a user) needs from this build.
  {
    echo "SINEW_KIND_NODE_IMAGE=$node_image"
    echo "SINEW_KIND_SLIM_IMAGE=$slim_image"
    echo "SINEW_KIND_AGNHOST_IMAGE=$agnhost_image"
    echo "SINEW_KIND_TOOLS_BIN=$bin"
  } >"$cache_root/current.env"
  log "ready in $((SECONDS - start))s: $node_image (slim base $slim_image, agnhost $agnhost_image)"
  echo "$node_image"
}

main "$@"
