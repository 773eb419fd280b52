#!/usr/bin/env bash
# Deletes the kind cluster made by e2e/kind/up.sh (KIND_CLUSTER, default sinew).
set -euo pipefail
cluster=${KIND_CLUSTER:-sinew}
command -v kind >/dev/null || { echo "[kind] kind is required" >&2; exit 1; }
kind delete cluster --name "$cluster"
