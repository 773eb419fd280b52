# sinew-node: the node agent (`sinew-node install` / `sinew-node run`, the DaemonSet rendered
# by operator/src/daemonset.rs passes only args) and the CNI plugin it installs from
# SINEW_PLUGIN=/usr/local/bin/sinew. Two static musl binaries, nothing else: the agent programs
# routes, the VXLAN device and the `inet sinew` nftables table over netlink (no `nft`, see
# docs/decisions/0056-nftables-over-netlink.md and 0060-scratch-node-image.md), and the
# DaemonSet runs no shell (its init container and agent take args only; the probes are HTTP).
# BASE_IMAGE picks a base to build on instead (e.g. one with a shell and `nft` for people who
# debug from inside the pod); the binaries do not depend on it.
# Build context: images/out (filled by images/build-binaries.sh), e.g.
#   docker build -f images/node.Dockerfile --build-arg VERSION=0.1.0 images/out
ARG BASE_IMAGE=scratch
FROM ${BASE_IMAGE}

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sinew-node" \
      org.opencontainers.image.description="sinew node agent and CNI plugin (installed into the node's CNI bin dir)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/sinew-dev/sinew" \
      org.opencontainers.image.url="https://github.com/sinew-dev/sinew" \
      org.opencontainers.image.vendor="sinew" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY sinew-node sinew /usr/local/bin/

# Root with NET_ADMIN/NET_RAW (set by the DaemonSet): netlink, nftables, host paths.
USER 0:0
ENTRYPOINT ["/usr/local/bin/sinew-node"]
CMD ["run"]
