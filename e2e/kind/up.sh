#!/usr/bin/env bash
# A real cluster with sinew as its CNI, on kind (needs a Docker engine):
#   1. kind cluster (1 control plane + 2 workers, no default CNI, kube-proxy kept)
#   2. images/build.sh with TAG=dev, then `kind load docker-image` both images
#   3. helm install charts/sinew into sinew-system, wait for ClusterNetwork/default and the nodes
#   4. 6 agnhost pods spread over the workers; every pod connects to every other pod's :8080
#   5. prints the IPPools and IPBlocks
# Re-runnable: reuses the cluster if it exists and upgrades the release.
# Env: KIND_CLUSTER (sinew), TAG (dev), REGISTRY (ghcr.io/sinew-dev).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster=${KIND_CLUSTER:-sinew}
export TAG=${TAG:-dev}
export REGISTRY=${REGISTRY:-ghcr.io/sinew-dev}
ctx="kind-$cluster"
ns=sinew-e2e

log() { echo "[kind] $*"; }
die() { echo "[kind] FAILED: $*" >&2; exit 1; }
k() { kubectl --context "$ctx" "$@"; }

for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"

diagnose() {
  local rc=$?
  ((rc == 0)) && return
  echo "[kind] --- diagnostics ---" >&2
  k get nodes -o wide >&2 || true
  k get clusternetworks,ippools,ipblocks -o wide >&2 || true
  k -n sinew-system get deploy,ds,pods -o wide >&2 || true
  k -n sinew-system logs deploy/sinew-operator --tail=50 >&2 || true
  k -n "$ns" get pods -o wide >&2 || true
}
trap diagnose EXIT

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing cluster $cluster"
else
  log "creating cluster $cluster"
  # No --wait: the nodes stay NotReady until sinew runs.
  kind create cluster --name "$cluster" --config "$repo/e2e/kind/kind-config.yaml"
fi

log "building images ($REGISTRY/sinew-{operator,node}:$TAG)"
"$repo/images/build.sh"
kind load docker-image --name "$cluster" \
  "$REGISTRY/sinew-operator:$TAG" "$REGISTRY/sinew-node:$TAG"

log "helm install sinew"
helm --kube-context "$ctx" upgrade --install sinew "$repo/charts/sinew" \
  --namespace sinew-system --create-namespace \
  --set image.registry="$REGISTRY" --set image.tag="$TAG" \
  --wait --timeout 5m

log "waiting for ClusterNetwork/default and the nodes"
k wait --for=condition=Ready clusternetwork/default --timeout=5m
k wait --for=condition=Ready nodes --all --timeout=5m
k -n sinew-system get ds,pods -o wide

log "test pods"
k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
k -n "$ns" apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: agnhost
spec:
  replicas: 6
  selector:
    matchLabels: {app: agnhost}
  template:
    metadata:
      labels: {app: agnhost}
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          nodeTaintsPolicy: Honor
          labelSelector:
            matchLabels: {app: agnhost}
      containers:
        - name: agnhost
          image: registry.k8s.io/e2e-test-images/agnhost:2.53
          args: ["netexec", "--http-port=8080"]
          ports:
            - containerPort: 8080
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 2
EOF
k -n "$ns" rollout status deploy/agnhost --timeout=5m

mapfile -t pods < <(k -n "$ns" get pods -l app=agnhost --field-selector=status.phase=Running \
  -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}')
((${#pods[@]} >= 2)) || die "expected running agnhost pods, got ${#pods[@]}"
printf '  %s\n' "${pods[@]}"
nodes=$(printf '%s\n' "${pods[@]}" | awk '{print $3}' | sort -u | wc -l)
((nodes >= 2)) || die "the test pods are all on one node; nothing crosses nodes"

log "pod-to-pod: every pod connects to every other pod's :8080"
failed=0
checked=0
for src in "${pods[@]}"; do
  read -r src_pod src_ip src_node <<<"$src"
  for dst in "${pods[@]}"; do
    read -r dst_pod dst_ip dst_node <<<"$dst"
    [[ $src_pod == "$dst_pod" ]] && continue
    where=same-node
    [[ $src_node != "$dst_node" ]] && where=cross-node
    addr=$dst_ip
    [[ $addr == *:* ]] && addr="[$addr]"
    checked=$((checked + 1))
    if k -n "$ns" exec "$src_pod" -- /agnhost connect "$addr:8080" --timeout=5s >/dev/null 2>&1; then
      echo "  ok    $where  $src_pod ($src_ip, $src_node) -> $dst_pod ($dst_ip, $dst_node)"
    else
      echo "  FAIL  $where  $src_pod ($src_ip, $src_node) -> $dst_pod ($dst_ip, $dst_node)"
      failed=$((failed + 1))
    fi
  done
done

k get ippools,ipblocks -o wide
((failed == 0)) || die "$failed of $checked pod-to-pod connections failed"
log "ok: $checked pod-to-pod connections across $nodes nodes (cluster $cluster; e2e/kind/down.sh deletes it)"
