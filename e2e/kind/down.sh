#!/usr/bin/env bash
# Deletes the kind cluster made by e2e/kind/up.sh or kept by `SINEW_KIND_KEEP=1 e2e/kind/run.sh`
# (KIND_CLUSTER, default sinew). When the script-owned Docker engine (e2e/kind/dockerd.sh) is
# running, also removes what run.sh made on it and stops it (its network namespace included).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cluster=${KIND_CLUSTER:-sinew}
own_engine=false
if [[ -z ${DOCKER_HOST:-} ]]; then
  eval "$("$here/dockerd.sh" env)"
  if docker version >/dev/null 2>&1; then
    own_engine=true
    export DOCKER_HOST
  else
    unset DOCKER_HOST
  fi
fi
kind=kind
if ! command -v kind >/dev/null && [[ -f ${SINEW_CACHE:-$HOME/.cache/sinew}/kind/current.env ]]; then
  # shellcheck source=/dev/null
  source "${SINEW_CACHE:-$HOME/.cache/sinew}/kind/current.env"
  kind=$SINEW_KIND_TOOLS_BIN/kind
fi
"$kind" delete cluster --name "$cluster"
if $own_engine; then
  docker rm -f -v sinew-kind-outside >/dev/null 2>&1 || true
  docker network rm kind >/dev/null 2>&1 || true
  "$here/dockerd.sh" stop
fi
