# sinew-operator: one static musl binary, nothing else.
# Build context: images/out (filled by images/build-binaries.sh), e.g.
#   docker build -f images/operator.Dockerfile --build-arg VERSION=0.1.0 images/out
FROM scratch

ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="sinew-operator" \
      org.opencontainers.image.description="sinew operator: reconciles ClusterNetwork and IPPool, runs the node agent DaemonSet" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/sinew-dev/sinew" \
      org.opencontainers.image.url="https://github.com/sinew-dev/sinew" \
      org.opencontainers.image.vendor="sinew" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY sinew-operator /usr/local/bin/sinew-operator

# Talks to the API server only (in-cluster CA and token): no root, no capabilities.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sinew-operator"]
