#!/usr/bin/env bash
# What real kubelets' pod lifecycles cost an agent elsewhere with NetworkPolicy on (decision
# 105), on a cluster kept by `SINEW_KIND_KEEP=1 make kind` with sinew installed:
#   N pods (agnhost, a readiness probe) start on one worker, become Ready, and are deleted
#   with the default grace period. Three watches count their events, from the other worker's
#   point of view: a watch of every pod (the reference, what agents held before decision 105),
#   the pods with an address, and the pods with an address that have not ended (the agent's
#   watch of other nodes' pods, `pod_selectors` in node-agent/src/policy/inputs.rs).
# Usage: e2e/kind/pod-events.sh KUBECONFIG [N]   (kubectl: the one the run printed)
set -euo pipefail

kubeconfig=${1:?usage: $0 KUBECONFIG [N]}
n=${2:-5}
netns=${SINEW_KIND_NETNS:-/run/netns/sinew-kind}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
k() { nsenter --net="$netns" kubectl --kubeconfig "$kubeconfig" "$@"; }
workers=($(k get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sed 's|node/||' | sort))
((${#workers[@]} >= 2)) || { echo "pod-events: needs two workers" >&2; exit 1; }
a=${workers[0]} b=${workers[1]}
ns=pod-events
image=$(k -n sinew-e2e get pods -o jsonpath='{.items[0].spec.containers[0].image}' 2>/dev/null || true)
image=${image:-registry.k8s.io/e2e-test-images/agnhost:2.66.1}
out=$(mktemp -d)
watchers=()
cleanup() {
  ((${#watchers[@]})) && kill "${watchers[@]}" 2>/dev/null || true
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT

k create namespace "$ns" >/dev/null
declare -A selectors=(
  [every]=""
  [addressed]="spec.nodeName!=$b,status.podIP!="
  [agent]="spec.nodeName!=$b,status.podIP!=,status.phase!=Succeeded,status.phase!=Failed"
)
for w in every addressed agent; do
  args=(-n "$ns" get pods --watch-only --output-watch-events -o 'jsonpath={.type} {.object.metadata.name}{"\n"}')
  [[ -n ${selectors[$w]} ]] && args+=(--field-selector "${selectors[$w]}")
  # exec: the watcher's PID is kubectl's, so that the clean-up stops it.
  (exec nsenter --net="$netns" kubectl --kubeconfig "$kubeconfig" "${args[@]}" >"$out/$w") &
  watchers+=($!)
done
sleep 3
for i in $(seq 1 "$n"); do
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: pe-$i, namespace: $ns, labels: {app: pod-events}}
spec:
  nodeSelector: {kubernetes.io/hostname: $a}
  containers:
  - name: app
    image: $image
    args: [netexec, --http-port=8080]
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
EOF
done
k -n "$ns" wait --for=condition=Ready pod --all --timeout=120s >/dev/null
sleep 3
k -n "$ns" delete pod --all --wait=true >/dev/null
sleep 3

echo "pod-events: $n pods started on $a, Ready, deleted (default grace); seen from $b"
echo "| watch | events per pod |"
echo "|---|---:|"
for w in every addressed agent; do
  events=$(grep -c ' pe-' "$out/$w" || true)
  case $w in
    every) label="every pod (the reference)" ;;
    addressed) label="\`${selectors[$w]}\`" ;;
    agent) label="\`${selectors[$w]}\` (the agent's)" ;;
  esac
  printf '| %s | %s |\n' "$label" "$(awk -v e="$events" -v n="$n" 'BEGIN { printf "%.1f", e / n }')"
done
