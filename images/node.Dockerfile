# sinew-node: the node agent (`sinew-node install` / `sinew-node run`, the DaemonSet rendered
# by operator/src/daemonset.rs passes only args) and the CNI plugin it installs from
# SINEW_PLUGIN=/usr/local/bin/sinew.
# The agent no longer runs `nft` (it programs the `inet sinew` table over netlink, see
# docs/architecture.md decision 56); the image keeps its base (and the CLI, for people who
# debug from inside the pod) until the kind tier has run with FROM scratch. The two sinew
# binaries are static and do not depend on the base.
# BASE_IMAGE picks another base; one that already has `nft` (e.g. the Debian slim image
# e2e/kind/build.sh makes offline: BASE_IMAGE=sinew.local/debian-slim:bookworm-<key>) needs no
# package manager or network at build time.
# Build context: images/out (filled by images/build-binaries.sh), e.g.
#   docker build -f images/node.Dockerfile --build-arg VERSION=0.1.0 images/out
ARG BASE_IMAGE=alpine:3.22
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

RUN command -v nft >/dev/null || apk add --no-cache nftables

COPY sinew-node sinew /usr/local/bin/

# Root with NET_ADMIN/NET_RAW (set by the DaemonSet): netlink, nftables, host paths.
USER 0:0
ENTRYPOINT ["/usr/local/bin/sinew-node"]
CMD ["run"]
