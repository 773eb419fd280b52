#!/usr/bin/env bash
# Builds the static binaries (images/build-binaries.sh), then the two images:
#   ${REGISTRY}/sinew-operator:${TAG}   and   ${REGISTRY}/sinew-node:${TAG}
# REGISTRY defaults to ghcr.io/sinew-dev, TAG to the chart's appVersion (charts/sinew/Chart.yaml).
# NODE_BASE_IMAGE gives sinew-node a base image (default: none, FROM scratch), e.g. one with a
# shell for debugging.
# Usage: images/build.sh [--push] [--skip-binaries]
# Needs Docker (with BuildKit or the classic builder) plus what build-binaries.sh needs.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
push=false
skip_binaries=false
for arg in "$@"; do
  case $arg in
    --push) push=true ;;
    --skip-binaries) skip_binaries=true ;;
    -h | --help) sed -n '2,6p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "[build] unknown argument $arg (expected --push, --skip-binaries)" >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "[build] docker is required" >&2; exit 1; }

app_version=$(sed -n 's/^appVersion:[[:space:]]*//p' "$repo/charts/sinew/Chart.yaml" | tr -d "\"' \r")
[[ -n $app_version ]] || { echo "[build] no appVersion in charts/sinew/Chart.yaml" >&2; exit 1; }
registry=${REGISTRY:-ghcr.io/sinew-dev}
tag=${TAG:-$app_version}
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)

if ! $skip_binaries; then
  "$repo/images/build-binaries.sh"
fi

images=()
for name in operator node; do
  image="$registry/sinew-$name:$tag"
  echo "[build] docker build $image"
  base_arg=()
  [[ $name == node && -n ${NODE_BASE_IMAGE:-} ]] && base_arg=(--build-arg "BASE_IMAGE=$NODE_BASE_IMAGE")
  docker build \
    --platform linux/amd64 \
    "${base_arg[@]}" \
    --file "$repo/images/$name.Dockerfile" \
    --build-arg "VERSION=$tag" \
    --build-arg "REVISION=$revision" \
    --tag "$image" \
    "$repo/images/out"
  images+=("$image")
done

if $push; then
  for image in "${images[@]}"; do
    echo "[build] docker push $image"
    docker push "$image"
  done
fi
printf '[build] built %s\n' "${images[@]}"
