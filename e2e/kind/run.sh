#!/usr/bin/env bash
# `make kind`: sinew on a real kind cluster built offline (e2e/kind/build.sh), checked the way a
# user would see it, each check printed with its result:
#
#   nodes NotReady before sinew, with strict reverse-path filtering (rp_filter=1, RHEL's and
#   kind's default), Ready only once sinew's conflist is in place; ClusterNetwork Ready; the
#   DaemonSet and the operator Deployment as real pods (probes pass, leader elected); CoreDNS
#   Ready; all-pairs pod->pod (same node and across nodes), node->pod, pod->Service ClusterIP,
#   pod->DNS name, pod->a host outside the cluster (natOutgoing); IPPool/IPBlockUsage allocations; a
#   live mode switch Auto->VXLAN->Routed keeping a TCP connection; two zoned pools (one per
#   worker, chosen by a namespace annotation) in every mode; a cloud-VPC underlay (pod addresses
#   dropped between the nodes): VXLAN carries every path, Routed is named by `kubectl sinew
#   doctor`; `helm upgrade` rolling the DaemonSet and rewriting the conflist; a worker
#   restarted; failures injected in a node (forwarding off, a foreign conflist, a dangling cni0
#   bridge) named by the agent and `kubectl sinew doctor` and cleared; `helm uninstall` refused
#   at once while pods hold addresses, nothing deleted; then `helm uninstall` leaving every node
#   clean.
#
# SINEW_KIND_NETPOL=1 runs the upstream `[sig-network] Netpol` specs (48 of 51: SCTP traffic
# excluded) after the connectivity checks and the conformance set, once every node reports its
# policy table programmed. NetworkPolicy is on (the default) for every check of every run.
#
# SINEW_KIND_CONFORMANCE=1 adds the upstream sig-network specs of e2e.test v1.37.2 (every
# [Conformance] one, Granular Checks: Services, Conntrack; built by `e2e/tools/build.sh
# conformance`, a cold build takes long), run in parallel by the ginkgo CLI on the chart's
# defaults, right after the connectivity checks (SINEW_KIND_CONFORMANCE_PROCS, 3).
#
# Everything it creates (cluster, outside host, Docker network, the Docker engine and its network
# namespace) is removed on exit, whatever happens; SINEW_KIND_KEEP=1 keeps the cluster and the
# engine for debugging (then: e2e/kind/down.sh).
# Env: KIND_CLUSTER (sinew), SINEW_CACHE (~/.cache/sinew), CARGO_TARGET_DIR (sinew's build).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster=${KIND_CLUSTER:-sinew}
cache=${SINEW_CACHE:-$HOME/.cache/sinew}/kind
ns=sinew-e2e
sys=sinew-system
registry=sinew.local
tag=kind
outside=sinew-kind-outside
export DOCKER_BUILDKIT=0

log() { echo "[kind] $*"; }
die() { echo "[kind] FAILED: $*" >&2; exit 1; }

passed=0 failed=0
results=()
logs=$(mktemp -d /tmp/sinew-kind-logs.XXXXXX)
# check NAME FUNCTION...: runs it in a subshell with errexit (any failing command fails the
# check), prints PASS with its duration and last output line, or FAIL with its duration and last
# 25; full output in $logs.
check() {
  local name=$1 rc file t0=$SECONDS
  shift
  file=$logs/$(printf '%02d' $((passed + failed + 1)))-${1}.log
  set +e
  (set -e; "$@") >"$file" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    passed=$((passed + 1))
    results+=("PASS  $name  [$((SECONDS - t0))s]")
    echo "[kind] PASS  $name  [$((SECONDS - t0))s]  ($(tail -1 "$file"))"
  else
    failed=$((failed + 1))
    results+=("FAIL  $name  [$((SECONDS - t0))s]")
    echo "[kind] FAIL  $name  [$((SECONDS - t0))s]"
    tail -25 "$file" | sed 's/^/      /'
  fi
  return "$rc"
}

summary() {
  echo "[kind] ---- results (full output of each check in $logs) ----"
  printf '[kind] %s\n' "${results[@]}"
  echo "kind: $passed passed, $failed failed"
}

# --- engine, build, tear-down --------------------------------------------------------------

# One run at a time on a machine: runs share the engine, its namespace and the cluster name.
exec 9>/run/lock/sinew-kind.lock
if ! flock -n 9; then
  log "another kind run holds /run/lock/sinew-kind.lock; waiting (up to 30 minutes)"
  flock -w 1800 9 || die "the other kind run did not finish within 30 minutes"
fi
export SINEW_KIND_LOCKED=1

"$here/build.sh" >/dev/null
# shellcheck source=/dev/null
source "$cache/current.env"
bin=$SINEW_KIND_TOOLS_BIN
conformance=${SINEW_KIND_CONFORMANCE:-0}
netpol=${SINEW_KIND_NETPOL:-0}
if [[ $conformance == 1 || $netpol == 1 ]]; then
  e2e_bin=$("$repo/e2e/tools/build.sh" conformance)
fi
eval "$("$here/dockerd.sh" start)"
export DOCKER_HOST SINEW_KIND_NETNS
kubeconfig=$(mktemp /tmp/sinew-kind-kubeconfig.XXXXXX)
export PATH="$bin:$PATH"

teardown() {
  local rc=$?
  if [[ ${SINEW_KIND_KEEP:-} == 1 ]]; then
    log "SINEW_KIND_KEEP=1: cluster $cluster and the engine are left running (e2e/kind/down.sh removes them)"
    log "kubectl: nsenter --net=$SINEW_KIND_NETNS $bin/kubectl --kubeconfig $kubeconfig"
    return
  fi
  log "tear-down"
  if declare -F vpc_undo >/dev/null; then vpc_undo; fi
  kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  docker rm -f -v "$outside" >/dev/null 2>&1 || true
  docker network rm kind >/dev/null 2>&1 || true
  "$here/dockerd.sh" stop || true
  rm -f "$kubeconfig"
  return "$rc"
}
trap teardown EXIT

k() { nsenter --net="$SINEW_KIND_NETNS" kubectl --kubeconfig "$kubeconfig" "$@"; }
h() { nsenter --net="$SINEW_KIND_NETNS" helm --kubeconfig "$kubeconfig" "$@"; }
nodes() { kind get nodes --name "$cluster" | sort; }
on_node() { local n=$1; shift; docker exec "$n" "$@"; }

log "sinew images ($registry/sinew-{operator,node}:$tag, both FROM scratch)"
start=$SECONDS
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sinew/target} "$repo/images/build-binaries.sh" >/dev/null
REGISTRY=$registry TAG=$tag "$repo/images/build.sh" --skip-binaries >/dev/null 2>&1
log "step sinew images: $((SECONDS - start))s"

kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
log "kind create cluster $cluster ($SINEW_KIND_NODE_IMAGE)"
start=$SECONDS
kind create cluster --name "$cluster" --image "$SINEW_KIND_NODE_IMAGE" \
  --config "$here/kind-config.yaml" --kubeconfig "$kubeconfig" --retain >"$logs/kind-create.log" 2>&1 \
  || { cat "$logs/kind-create.log"; die "kind create cluster"; }
log "step kind create cluster: $((SECONDS - start))s"
mapfile -t node_names < <(nodes)
start=$SECONDS
kind load docker-image --name "$cluster" "$registry/sinew-operator:$tag" "$registry/sinew-node:$tag" >/dev/null 2>&1
log "step kind load docker-image: $((SECONDS - start))s"

# --- checks --------------------------------------------------------------------------------

ready_of() { # node -> True/False/Unknown
  k get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
}
has_conflist() { on_node "$1" sh -c 'ls /etc/cni/net.d/*sinew*.conflist' >/dev/null 2>&1; }

c_not_ready_before() {
  local n
  for n in "${node_names[@]}"; do
    # kubeadm's prerequisite, which sinew relies on without checking (README: product defects).
    [[ $(on_node "$n" cat /proc/sys/net/ipv4/ip_forward) == 1 ]] || { echo "$n has net.ipv4.ip_forward=0"; return 1; }
    [[ $(ready_of "$n") != True ]] || { echo "$n is Ready before any CNI"; return 1; }
    ! has_conflist "$n" || { echo "$n has a sinew conflist before install"; return 1; }
    echo "$n NotReady: $(k get node "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}' | cut -c1-120)"
  done
}

# RHEL's default, and kind's (its base image's 10-network-security.conf): every node filters
# strictly on reverse path (rp_filter=1 on all and default) before sinew is installed, so every
# check below runs on strict nodes and sinew must cope (c_cloud_vpc relies on it).
c_rp_filter_strict() {
  local n all def
  for n in "${node_names[@]}"; do
    all=$(on_node "$n" cat /proc/sys/net/ipv4/conf/all/rp_filter)
    def=$(on_node "$n" cat /proc/sys/net/ipv4/conf/default/rp_filter)
    if [[ $all == 1 && $def == 1 ]]; then
      echo "$n: rp_filter all=1 default=1 already"
    else
      on_node "$n" sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.default.rp_filter=1
      echo "$n: rp_filter all=$all default=$def; set to 1"
    fi
    [[ $(on_node "$n" cat /proc/sys/net/ipv4/conf/all/rp_filter) == 1 && $(on_node "$n" cat /proc/sys/net/ipv4/conf/default/rp_filter) == 1 ]]
  done
  echo "${#node_names[@]} nodes with rp_filter=1 (all, default) before sinew"
}

h_install() {
  h upgrade --install sinew "$repo/charts/sinew" --namespace "$sys" --create-namespace \
    --set image.registry="$registry" --set image.tag="$tag" --set image.pullPolicy=Never
}

# Polls every node until all are Ready; fails if one is Ready while its conflist is missing.
c_ready_after_conflist() {
  local n deadline=$((SECONDS + 300)) all
  while ((SECONDS < deadline)); do
    all=true
    for n in "${node_names[@]}"; do
      if [[ $(ready_of "$n") == True ]]; then
        has_conflist "$n" || { echo "$n is Ready without a sinew conflist"; return 1; }
      else
        all=false
      fi
    done
    $all && { echo "all ${#node_names[@]} nodes Ready, each with $(on_node "${node_names[0]}" sh -c 'ls /etc/cni/net.d/*sinew*.conflist')"; return 0; }
    sleep 1
  done
  k get nodes -o wide
  return 1
}

c_clusternetwork_ready() {
  k wait --for=condition=Ready clusternetwork/default --timeout=180s
  k get clusternetwork default -o jsonpath='{.status.nodes.summary}{"\n"}'
}

c_agents_and_operator() {
  k -n "$sys" rollout status ds/sinew-node --timeout=180s
  k -n "$sys" rollout status deploy/sinew-operator --timeout=180s
  local desired ready holder ops
  desired=$(k -n "$sys" get ds sinew-node -o jsonpath='{.status.desiredNumberScheduled}')
  ready=$(k -n "$sys" get ds sinew-node -o jsonpath='{.status.numberReady}')
  [[ $desired == "${#node_names[@]}" && $ready == "$desired" ]] || { echo "sinew-node: $ready/$desired ready"; return 1; }
  ops=$(k -n "$sys" get pods -l app.kubernetes.io/name=sinew-operator \
    -o jsonpath='{range .items[?(@.status.containerStatuses[0].ready==true)]}{.metadata.name}{"\n"}{end}')
  [[ $(wc -l <<<"$ops") == 2 ]] || { echo "ready operator pods: $ops"; return 1; }
  holder=$(k -n "$sys" get lease sinew-operator -o jsonpath='{.spec.holderIdentity}')
  grep -qx "$holder" <<<"$ops" || { echo "lease holder '$holder' is not a ready operator pod ($ops)"; return 1; }
  echo "sinew-node $ready/$desired ready, operator 2/2 ready, leader $holder"
}

c_coredns() {
  k -n kube-system rollout status deploy/coredns --timeout=180s
  echo "coredns $(k -n kube-system get deploy coredns -o jsonpath='{.status.readyReplicas}') ready"
}

workloads() {
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
  local set
  for set in a b; do
    k -n "$ns" apply -f - <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: netexec-$set}
spec:
  selector: {matchLabels: {app: netexec, set: "$set"}}
  template:
    metadata: {labels: {app: netexec, set: "$set"}}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: netexec
          image: $SINEW_KIND_AGNHOST_IMAGE
          imagePullPolicy: Never
          args: ["netexec", "--http-port=8080"]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
EOF
  done
  k -n "$ns" apply -f - <<EOF
apiVersion: v1
kind: Service
metadata: {name: netexec}
spec:
  selector: {app: netexec}
  ports: [{port: 8080, targetPort: 8080}]
EOF
  k -n "$ns" rollout status ds/netexec-a --timeout=180s
  k -n "$ns" rollout status ds/netexec-b --timeout=180s
}

load_pods() {
  mapfile -t pods < <(k -n "$ns" get pods -l app=netexec \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}')
  printf '  %s\n' "${pods[@]}"
}

c_pod_to_pod() {
  local src dst sp si sn dp di dn fails=0 n=0 cross=0
  for src in "${pods[@]}"; do
    read -r sp si sn <<<"$src"
    for dst in "${pods[@]}"; do
      read -r dp di dn <<<"$dst"
      [[ $sp == "$dp" ]] && continue
      n=$((n + 1))
      [[ $sn != "$dn" ]] && cross=$((cross + 1))
      if ! k -n "$ns" exec "$sp" -- /agnhost connect "$di:8080" --timeout=5s; then
        echo "FAIL $sp ($si, $sn) -> $dp ($di, $dn)"
        fails=$((fails + 1))
      fi
    done
  done
  ((fails == 0)) || return 1
  echo "$n pairs ($cross across nodes)"
}

c_node_to_pod() {
  local node p pn pi got fails=0 n=0
  for node in "${node_names[@]}"; do
    for p in "${pods[@]}"; do
      read -r pn pi _ <<<"$p"
      n=$((n + 1))
      got=$(on_node "$node" curl -s --max-time 5 "http://$pi:8080/hostname") || true
      [[ $got == "$pn" ]] || { echo "FAIL $node -> $pn ($pi): '$got'"; fails=$((fails + 1)); }
    done
  done
  ((fails == 0)) || return 1
  echo "$n node->pod requests"
}

c_pod_to_service() {
  local ip p pn
  ip=$(k -n "$ns" get svc netexec -o jsonpath='{.spec.clusterIP}')
  for p in "${pods[@]}"; do
    read -r pn _ _ <<<"$p"
    k -n "$ns" exec "$pn" -- /agnhost connect "$ip:8080" --timeout=5s || { echo "FAIL $pn -> $ip:8080"; return 1; }
  done
  echo "${#pods[@]} pods -> ClusterIP $ip:8080"
}

c_pod_to_dns() {
  local name=netexec.$ns.svc.cluster.local p pn
  for p in "${pods[@]}"; do
    read -r pn _ _ <<<"$p"
    k -n "$ns" exec "$pn" -- /agnhost connect "$name:8080" --timeout=5s || { echo "FAIL $pn -> $name:8080"; return 1; }
  done
  echo "${#pods[@]} pods -> $name:8080"
}

# A host on the kind Docker network, outside the cluster: it has no route to the pod CIDR, so
# an answer means the node masqueraded the pod's address (natOutgoing); /clientip shows which.
c_nat_outgoing() {
  docker rm -f "$outside" >/dev/null 2>&1 || true
  docker run -d --name "$outside" --network kind "$SINEW_KIND_AGNHOST_IMAGE" \
    netexec --http-port=8080 >/dev/null
  local ip p pn pnode got node_ip
  ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$outside")
  for _ in $(seq 20); do
    nsenter --net="$SINEW_KIND_NETNS" curl -s --max-time 1 "http://$ip:8080/healthz" >/dev/null && break
    sleep 0.5
  done
  for p in "${pods[@]}"; do
    read -r pn _ pnode <<<"$p"
    node_ip=$(k get node "$pnode" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
    got=$(k -n "$ns" exec "$pn" -- sh -c "printf 'GET /clientip HTTP/1.0\r\n\r\n' | nc -w 5 $ip 8080 | tail -1") || true
    [[ ${got%:*} == "$node_ip" ]] || { echo "FAIL $pn -> $ip:8080 answered '$got', expected the node's $node_ip"; return 1; }
  done
  echo "${#pods[@]} pods -> outside host $ip, seen as their node's address"
}

c_ipam() {
  k get ippools,ipblocks,ipblockusages -o wide
  local p pi allocated
  allocated=$(k get ipblockusages -o jsonpath='{range .items[*]}{range .status.allocations[*]}{.ip}{"\n"}{end}{end}')
  for p in "${pods[@]}"; do
    read -r _ pi _ <<<"$p"
    grep -qx "$pi" <<<"$allocated" || { echo "pod address $pi is not in any IPBlockUsage's allocations"; return 1; }
  done
  echo "$(wc -l <<<"$allocated") allocations in $(k get ipblocks -o name | wc -l) blocks; every test pod's address among them"
}

# --- live mode switch under a TCP connection ----------------------------------------------

stream_pods() {
  local server_node=${node_names[1]} client_node=${node_names[2]} sip
  k -n "$ns" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: stream-server, labels: {app: stream}}
spec:
  nodeName: $server_node
  terminationGracePeriodSeconds: 1
  containers:
    - name: server
      image: $SINEW_KIND_AGNHOST_IMAGE
      imagePullPolicy: Never
      command: ["sh", "-c", "nc -lk 9000 > /tmp/stream"]
EOF
  k -n "$ns" wait --for=condition=Ready pod/stream-server --timeout=120s
  sip=$(k -n "$ns" get pod stream-server -o jsonpath='{.status.podIP}')
  k -n "$ns" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: stream-client, labels: {app: stream}}
spec:
  nodeName: $client_node
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: $SINEW_KIND_AGNHOST_IMAGE
      imagePullPolicy: Never
      # One connection for the pod's life: if it breaks, nc exits and the container restarts.
      command: ["sh", "-c", "i=0; while :; do i=\$((i+1)); echo \$i; sleep 0.2; done | nc $sip 9000"]
EOF
  k -n "$ns" wait --for=condition=Ready pod/stream-client --timeout=120s
}
stream_lines() { k -n "$ns" exec stream-server -- sh -c 'wc -l < /tmp/stream'; }
client_restarts() { k -n "$ns" get pod stream-client -o jsonpath='{.status.containerStatuses[0].restartCount}'; }

pool=default-ipv4
wait_converged() {
  local deadline=$((SECONDS + 180)) gen obs conv plan
  while ((SECONDS < deadline)); do
    gen=$(k get ippool "$pool" -o jsonpath='{.metadata.generation}')
    obs=$(k get ippool "$pool" -o jsonpath='{.status.observedGeneration}')
    conv=$(k get ippool "$pool" -o jsonpath='{.status.modeConvergence}')
    plan=$(k get ippool "$pool" -o jsonpath='{.status.modePlan}')
    if [[ $gen == "$obs" && -z $plan && $conv == "${#node_names[@]}/${#node_names[@]}" ]]; then
      return 0
    fi
    sleep 1
  done
  k get ippool "$pool" -o yaml
  return 1
}

# The route a node has to another node's pod block: through sinew.vxlan, or straight to the node.
route_to_peer() { # node, peer node
  local cidr
  cidr=$(k get ipblocks -o jsonpath="{range .items[?(@.spec.node==\"$2\")]}{.spec.cidr}{\"\\n\"}{end}" | head -1)
  on_node "$1" ip route show "$cidr"
}

switch_to() { # mode, expected route (device, or "via <peer address>")
  local mode=$1 want=$2 before after restarts0 route
  restarts0=$(client_restarts)
  before=$(stream_lines)
  k patch ippool "$pool" --type merge -p "{\"spec\":{\"mode\":\"$mode\"}}"
  wait_converged
  route=$(route_to_peer "${node_names[1]}" "${node_names[2]}")
  [[ $route == *"$want"* ]] || { echo "after $mode: ${node_names[1]} -> ${node_names[2]} pods: '$route' (expected via $want)"; return 1; }
  sleep 3
  after=$(stream_lines)
  ((after > before)) || { echo "the stream stalled: $before lines before, $after after"; return 1; }
  [[ $(client_restarts) == "$restarts0" ]] || { echo "the client's connection broke (restarts $restarts0 -> $(client_restarts))"; return 1; }
  echo "$mode: route '$route'; stream $before -> $after lines, same connection"
}

c_mode_switch() {
  stream_pods
  local start_mode
  start_mode=$(k get ippool "$pool" -o jsonpath='{.spec.mode}')
  echo "pool $pool starts in $start_mode"
  local peer_ip
  peer_ip=$(k get node "${node_names[2]}" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  switch_to VXLAN "dev sinew.vxlan"
  switch_to Routed "via $peer_ip dev eth0"
}

# --- pools in general: convergence, routes, TCP from pods and nodes ------------------------

# Until POOL's mode is in effect everywhere: observed generation, no plan left, `n/n` converged.
wait_pool_converged() { # pool
  local p=$1 deadline=$((SECONDS + 180)) gen obs conv plan
  while ((SECONDS < deadline)); do
    gen=$(k get ippool "$p" -o jsonpath='{.metadata.generation}')
    obs=$(k get ippool "$p" -o jsonpath='{.status.observedGeneration}')
    conv=$(k get ippool "$p" -o jsonpath='{.status.modeConvergence}')
    plan=$(k get ippool "$p" -o jsonpath='{.status.modePlan}')
    if [[ $gen == "$obs" && -z $plan && $conv =~ ^([0-9]+)/([0-9]+)$ && ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]]; then
      echo "pool $p: mode $(k get ippool "$p" -o jsonpath='{.spec.mode}') converged ($conv)"
      return 0
    fi
    sleep 1
  done
  echo "pool $p did not converge within 180 s:"
  k get ippool "$p" -o jsonpath='{.status}{"\n"}'
  return 1
}
set_pool_mode() { # pool, mode
  k patch ippool "$1" --type merge -p "{\"spec\":{\"mode\":\"$2\"}}" >/dev/null
  wait_pool_converged "$1"
}
node_ip() { k get node "$1" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'; }
# "node<TAB>route" for every node and every block of POOL held by another node: how the node
# reaches that block.
pool_routes() { # pool
  local n cidr owner r
  while read -r cidr owner; do
    for n in "${node_names[@]}"; do
      [[ $n == "$owner" ]] && continue
      r=$(on_node "$n" ip route show "$cidr" | head -1)
      printf '%s\t%s\n' "$n" "${r:-no route} to $cidr [block of $owner]"
    done
  done < <(k get ipblocks -o json | jq -r --arg p "$1" '.items[] | select(.spec.pool == $p) | "\(.spec.cidr) \(.spec.node)"')
}
# Every node has a route to every block of POOL on another node, of the kind MODE uses.
check_pool_routes() { # pool, mode
  local routes bad
  routes=$(pool_routes "$1")
  [[ -n $routes ]] || { echo "pool $1 has no blocks on any node"; return 1; }
  case $2 in
    VXLAN) bad=$(grep -v 'dev sinew.vxlan' <<<"$routes" || true) ;;
    *) bad=$(grep -v 'via .* dev eth0' <<<"$routes" || true) ;;
  esac
  sed "s/^/  $2 route: /" <<<"$routes"
  [[ -z $bad ]] || { echo "routes of pool $1 that are not $2's ($([[ $2 == VXLAN ]] && echo 'dev sinew.vxlan' || echo 'via <peer> dev eth0')):"; echo "$bad"; return 1; }
}
pod_connect() { # namespace, pod, ip:port -> TCP connect from the pod
  k -n "$1" exec "$2" -- /agnhost connect "$3" --timeout=5s >/dev/null 2>&1
}
# From one pod, a TCP connect to each target (ip:port or name:port) in one exec; prints the
# targets that failed (all of them if the exec itself failed, its error on stderr).
pod_connect_each() { # namespace, pod, target...
  local out rc=0
  out=$(k -n "$1" exec "$2" -- sh -c 'for t in "$@"; do /agnhost connect "$t" --timeout=5s >/dev/null 2>&1 || echo "$t"; done' sh "${@:3}" 2>&1) || rc=$?
  if ((rc != 0)); then
    echo "kubectl exec in $1/$2 failed (exit $rc): $out" >&2
    printf '%s\n' "${@:3}"
  elif [[ -n $out ]]; then
    echo "$out"
  fi
}
node_get() { # node, url -> the body, from the node's host network
  on_node "$1" curl -s --max-time 5 "$2" 2>/dev/null || true
}

# --- zoned pools: one pool per worker, chosen by a namespace annotation ----------------------

# Two pools, each with a nodeSelector matching one worker (kubernetes.io/hostname), and a
# namespace for each annotated `sinew.dev/ippool: <pool>`; two agnhost netexec pods in each
# namespace on the pool's worker. In each mode (Routed, then VXLAN, then Auto, switched live on
# both pools) every zone pod reaches every other zone pod (same zone and across), a pod of the
# default pool, and every node (kubelet's port); every node reaches every zone pod, the control
# plane included, which no zone pool selects (every node routes every pool's blocks).
zone_names=(sinew-zone-a sinew-zone-b)
zone_cidrs=(10.245.0.0/24 10.245.1.0/24)
zone_pods=()

zones_create() {
  local i z node
  for i in 0 1; do
    z=${zone_names[i]} node=${node_names[i + 1]}
    k apply -f - <<EOF
apiVersion: sinew.dev/v1alpha1
kind: IPPool
metadata: {name: $z}
spec:
  cidr: ${zone_cidrs[i]}
  blockSize: 27
  mode: Routed
  nodeSelector: {matchLabels: {kubernetes.io/hostname: $node}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: $z
  annotations: {sinew.dev/ippool: $z}
EOF
  done
  for z in "${zone_names[@]}"; do
    k wait --for=condition=Ready "ippool/$z" --timeout=120s
  done
  for i in 0 1; do
    z=${zone_names[i]} node=${node_names[i + 1]}
    for p in 0 1; do
      k -n "$z" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $z-$p, labels: {app: zone}}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  terminationGracePeriodSeconds: 1
  containers:
    - name: netexec
      image: $SINEW_KIND_AGNHOST_IMAGE
      imagePullPolicy: Never
      args: ["netexec", "--http-port=8080"]
      readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
EOF
    done
  done
  for z in "${zone_names[@]}"; do
    k -n "$z" wait --for=condition=Ready pod -l app=zone --timeout=180s
  done
}

ip4_int() { local a b c d; IFS=. read -r a b c d <<<"$1"; echo $(((a << 24) | (b << 16) | (c << 8) | d)); }
in_cidr() { # IPv4 address, IPv4 CIDR
  local len=${2#*/} mask
  mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
  (((($(ip4_int "$1")) & mask) == ($(ip4_int "${2%/*}") & mask)))
}

# "namespace name ip node" of the zone pods; each address must lie in its namespace's pool.
load_zone_pods() {
  local i z line name ip node
  zone_pods=()
  for i in 0 1; do
    z=${zone_names[i]}
    while read -r name ip node; do
      in_cidr "$ip" "${zone_cidrs[i]}" || { echo "pod $z/$name got $ip, outside pool $z (${zone_cidrs[i]}): the namespace annotation was not honoured"; return 1; }
      [[ $node == "${node_names[i + 1]}" ]] || { echo "pod $z/$name runs on $node"; return 1; }
      zone_pods+=("$z $name $ip $node")
    done < <(k -n "$z" get pods -l app=zone -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}')
  done
  printf '  %s\n' "${zone_pods[@]}"
}

# Packets the node's kernel dropped for failing the reverse-path check (TcpExt
# IPReversePathFilter), from the node's own network namespace.
rp_drops() { # node
  on_node "$1" awk '/^TcpExt:/ {if (!n++) {split($0, h); next} for (i = 2; i <= NF; i++) if (h[i] == "IPReversePathFilter") print $i}' /proc/net/netstat
}

zones_connectivity() { # mode
  local mode=$1 src dst sns sp si sn dns dp di dn n ip got cp cpip fails=0 tries=0 targets t
  local -A what=() rp0=()
  for n in "${node_names[@]}"; do rp0[$n]=$(rp_drops "$n"); done
  for dst in "${zone_pods[@]}"; do
    read -r dns dp di dn <<<"$dst"
    what[$di:8080]="pod $dns/$dp ($di, $dn)"
  done
  for n in "${node_names[@]}"; do
    ip=$(node_ip "$n")
    what[$ip:10250]="node $n ($ip:10250, kubelet)"
  done
  # A pod of the default pool on the control plane, which no zone pool selects.
  read -r cp cpip < <(k -n "$ns" get pods -l app=netexec --field-selector "spec.nodeName=${node_names[0]}" \
    -o jsonpath='{.items[0].metadata.name} {.items[0].status.podIP}{"\n"}')
  what[$cpip:8080]="pod $ns/$cp ($cpip, pool $pool, ${node_names[0]})"
  # Every zone pod to every other zone pod, every node and the default-pool pod.
  for src in "${zone_pods[@]}"; do
    read -r sns sp si sn <<<"$src"
    targets=()
    for t in "${!what[@]}"; do [[ $t == "$si:8080" ]] || targets+=("$t"); done
    tries=$((tries + ${#targets[@]}))
    while read -r t; do
      [[ -n $t ]] || continue
      echo "FAIL $mode: pod $sns/$sp ($si, $sn) -> ${what[$t]:-$t}"
      fails=$((fails + 1))
    done < <(pod_connect_each "$sns" "$sp" "${targets[@]}")
  done
  # The default-pool pod to every zone pod.
  targets=()
  for dst in "${zone_pods[@]}"; do read -r _ _ di _ <<<"$dst"; targets+=("$di:8080"); done
  tries=$((tries + ${#targets[@]}))
  while read -r t; do
    [[ -n $t ]] || continue
    echo "FAIL $mode: ${what[$cpip:8080]} -> ${what[$t]:-$t}"
    fails=$((fails + 1))
  done < <(pod_connect_each "$ns" "$cp" "${targets[@]}")
  # Every node (its host network) to every zone pod.
  for n in "${node_names[@]}"; do
    for dst in "${zone_pods[@]}"; do
      read -r dns dp di dn <<<"$dst"
      tries=$((tries + 1))
      got=$(node_get "$n" "http://$di:8080/hostname")
      [[ $got == "$dp" ]] || { echo "FAIL $mode: node $n ($(node_ip "$n")) -> pod $dns/$dp ($di, $dn): '$got'"; fails=$((fails + 1)); }
    done
  done
  echo "pools: $(k get ippools -o jsonpath='{range .items[*]}{.metadata.name}={.spec.mode} {end}')"
  if ((fails)); then
    echo "packets dropped by the nodes' reverse-path filter meanwhile: $(for n in "${node_names[@]}"; do printf '%s %s, ' "$n" $(($(rp_drops "$n") - ${rp0[$n]})); done)"
    echo "kubectl sinew doctor meanwhile: $(doctor_all 2>&1 | grep -E '^(CRITICAL|WARNING|INFO) ' | sort | uniq -c | tr -s ' ' | tr '\n' ';')$(doctor_all 2>&1 | tail -1)"
    echo "$mode: $fails of $tries paths failed; routes to the zone blocks:"
    for z in "${zone_names[@]}"; do pool_routes "$z" | sed 's/^/  /'; done
    return 1
  fi
  echo "$mode: $tries paths (zone pod -> zone pods, nodes and a default-pool pod; default-pool pod -> zone pods; every node -> zone pods)"
}

c_zoned_pools() {
  local z mode fails=0
  zones_create
  load_zone_pods
  echo "blocks: $(k get ipblocks -o json | jq -r '[.items[] | select(.spec.pool | startswith("sinew-zone-")) | "\(.spec.pool) \(.spec.cidr) on \(.spec.node)"] | join(", ")')"
  # A zone pool's blocks live only on the node it selects.
  local stray
  stray=$(k get ipblocks -o json | jq -r --arg a "${zone_names[0]}" --arg na "${node_names[1]}" --arg b "${zone_names[1]}" --arg nb "${node_names[2]}" \
    '.items[] | select((.spec.pool == $a and .spec.node != $na) or (.spec.pool == $b and .spec.node != $nb)) | "\(.spec.pool) \(.spec.cidr) on \(.spec.node)"')
  [[ -z $stray ]] || { echo "zone blocks on nodes their pool does not select: $stray"; return 1; }
  local verdicts=() out
  for mode in Routed VXLAN Auto; do
    out=""
    for z in "${zone_names[@]}"; do
      [[ $(k get ippool "$z" -o jsonpath='{.spec.mode}') == "$mode" ]] || echo "switching $z to $mode (live)"
      set_pool_mode "$z" "$mode"
      # Auto: the nodes share the kind network's subnet, so the pools are routed.
      check_pool_routes "$z" "$([[ $mode == Auto ]] && echo Routed || echo "$mode")" \
        || { fails=$((fails + 1)); out+="$z's routes wrong; "; }
    done
    if zones_connectivity "$mode" >"$logs/zones-$mode.txt"; then
      cat "$logs/zones-$mode.txt"
      verdicts+=("$mode: ${out}$(tail -1 "$logs/zones-$mode.txt" | sed "s/^[A-Za-z]*: //")")
    else
      cat "$logs/zones-$mode.txt"
      fails=$((fails + 1))
      verdicts+=("$mode: ${out}$(grep -E '^[A-Za-z]+: [0-9]+ of [0-9]+ paths failed' "$logs/zones-$mode.txt" | cut -d';' -f1 | sed 's/^[A-Za-z]*: //')")
    fi
  done
  printf '%s\n' "${verdicts[@]}"
  ((fails == 0)) || return 1
  zones_delete
  echo "two zoned pools (${zone_names[0]} on ${node_names[1]}, ${zone_names[1]} on ${node_names[2]}): every path in Routed, VXLAN and Auto; removed"
}

# Namespaces first (their pods give the addresses back), then the pools.
zones_delete() {
  k delete namespace "${zone_names[@]}" --ignore-not-found --wait=true --timeout=180s
  k delete ippool "${zone_names[@]}" --ignore-not-found --wait=true --timeout=180s
  local left
  left=$(k get ipblocks -o json | jq -r '.items[] | select(.spec.pool | startswith("sinew-zone-")) | .metadata.name')
  [[ -z $left ]] || { echo "zone blocks left: $left"; return 1; }
}
zones_undo() { zones_delete >/dev/null 2>&1 || true; }

# --- a cloud VPC underneath: pod addresses dropped on the wire, strict reverse-path filtering ---

# What a cloud VPC's source/destination check does to an overlay-less CNI: the underlay between
# the nodes (the kind Docker network's bridge, in the engine's namespace) drops every frame whose
# IPv4 source or destination is a pod address (any pool's CIDR). The nodes filter strictly on
# reverse path since before sinew was installed (c_rp_filter_strict). In VXLAN mode everything
# must work: pod -> pod and node -> pod across nodes, pod -> Service, pod -> DNS, and the API
# server (host network of the control plane) -> a pod on a worker, the path of a webhook or
# `kubectl port-forward`-less proxying. In Routed mode the pods' packets are dropped, and sinew
# must say so: `kubectl sinew doctor` exits non-zero naming the problem, and the ClusterNetwork's
# status lists it per node. When the underlay stops dropping, the problem clears.
vpc_table=sinew_kind_vpc
vpc_drop() { # CIDRs...
  local set
  set=$(IFS=,; echo "$*")
  nsenter --net="$SINEW_KIND_NETNS" nft -f - <<EOF
table bridge $vpc_table {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ip saddr { $set } counter drop comment "pod address as source"
    ip daddr { $set } counter drop comment "pod address as destination"
  }
}
EOF
}
vpc_dropped() { # packets dropped so far
  nsenter --net="$SINEW_KIND_NETNS" nft list table bridge "$vpc_table" 2>/dev/null \
    | grep -o 'packets [0-9]*' | awk '{s += $2} END {print s + 0}'
}
vpc_undo() { nsenter --net="$SINEW_KIND_NETNS" nft delete table bridge "$vpc_table" >/dev/null 2>&1 || true; }

# Every path the VXLAN half needs; prints each failure with its path.
vpc_paths() {
  local src dst sp si sn dp di dn fails=0 tries=0 got svc dns_name n t targets out coredns kind
  local -A what=() ok=() bad=()
  tally() { # kind, passed?
    if (($2)); then ok[$1]=$((${ok[$1]:-0} + 1)); else bad[$1]=$((${bad[$1]:-0} + 1)); fi
  }
  svc=$(k -n "$ns" get svc netexec -o jsonpath='{.spec.clusterIP}')
  dns_name=netexec.$ns.svc.cluster.local
  coredns=$(k -n kube-system get pods -l k8s-app=kube-dns -o jsonpath='{.items[*].spec.nodeName}')
  for dst in "${pods[@]}"; do
    read -r dp di dn <<<"$dst"
    what[$di:8080]="pod $dp ($di, $dn)"
  done
  what[$dns_name:8080]="DNS name $dns_name:8080 (CoreDNS on $coredns)"
  for src in "${pods[@]}"; do
    read -r sp si sn <<<"$src"
    # pod -> pod across nodes, and pod -> DNS name (CoreDNS, then the Service).
    targets=("$dns_name:8080")
    for dst in "${pods[@]}"; do
      read -r dp di dn <<<"$dst"
      [[ $sn == "$dn" ]] || targets+=("$di:8080")
    done
    tries=$((tries + ${#targets[@]}))
    out=$(pod_connect_each "$ns" "$sp" "${targets[@]}")
    for t in "${targets[@]}"; do
      kind="pod -> pod"
      [[ $t == "$dns_name:8080" ]] && kind="pod -> DNS name"
      if grep -qxF "$t" <<<"$out"; then
        echo "FAIL pod $sp ($si, $sn) -> ${what[$t]:-$t}"
        fails=$((fails + 1))
        tally "$kind" 0
      else
        tally "$kind" 1
      fi
    done
    # pod -> Service ClusterIP: six requests (kube-proxy picks among the backends on every node).
    tries=$((tries + 6))
    out=$(k -n "$ns" exec "$sp" -- sh -c 'for i in 1 2 3 4 5 6; do curl -s --max-time 5 "http://$1/hostname" || printf FAIL; echo; done' sh "$svc:8080" 2>&1) || true
    n=$(grep -c '^netexec-' <<<"$out" || true)
    ok["pod -> Service"]=$((${ok["pod -> Service"]:-0} + n))
    bad["pod -> Service"]=$((${bad["pod -> Service"]:-0} + 6 - n))
    if ((n != 6)); then
      echo "FAIL pod $sp ($si, $sn) -> Service $svc:8080: $((6 - n)) of 6 requests failed; answers: $(tr '\n' ' ' <<<"$out")"
      fails=$((fails + 6 - n))
    fi
  done
  # Each node's host network to the pods on the other nodes.
  for n in "${node_names[@]}"; do
    for dst in "${pods[@]}"; do
      read -r dp di dn <<<"$dst"
      [[ $n == "$dn" ]] && continue
      tries=$((tries + 1))
      got=$(node_get "$n" "http://$di:8080/hostname")
      [[ $got == "$dp" ]] && tally "node -> pod" 1 \
        || { echo "FAIL node $n ($(node_ip "$n")) -> pod $dp ($di, $dn): '$got'"; fails=$((fails + 1)); tally "node -> pod" 0; }
    done
  done
  # The API server, in the control plane's host network, to the pods on the workers: the path of
  # an admission webhook or an aggregated API served by a pod.
  for dst in "${pods[@]}"; do
    read -r dp di dn <<<"$dst"
    [[ $dn == "${node_names[0]}" ]] && continue
    tries=$((tries + 1))
    got=$(k get --raw "/api/v1/namespaces/$ns/pods/$dp:8080/proxy/hostname" 2>&1) || true
    [[ $got == "$dp" ]] && tally "API server -> pod" 1 \
      || { echo "FAIL API server (${node_names[0]}) -> pod $dp ($di, $dn), kubectl get --raw .../pods/$dp:8080/proxy/hostname: '$(head -c 200 <<<"$got")'"; fails=$((fails + 1)); tally "API server -> pod" 0; }
  done
  local summary=""
  for kind in "pod -> pod" "pod -> DNS name" "pod -> Service" "node -> pod" "API server -> pod"; do
    summary+="$kind $((${ok[$kind]:-0}))/$((${ok[$kind]:-0} + ${bad[$kind]:-0})), "
  done
  echo "${summary%, } passed ($fails of $tries failed)"
  ((fails == 0))
}

doctor_all() { nsenter --net="$SINEW_KIND_NETNS" env KUBECONFIG="$kubeconfig" "$repo/images/out/kubectl-sinew" doctor; }
cn_problems() { k get clusternetwork default -o json | jq -r '(.status.problems // [])[] | "\(.node) \(.reason): \(.message)"'; }
vpc_problem_re='PeerUnreachable|RPFilterStrict|Underlay|Unreachable'

c_cloud_vpc() {
  local cidrs mode0 n
  for n in "${node_names[@]}"; do
    [[ $(on_node "$n" cat /proc/sys/net/ipv4/conf/all/rp_filter) == 1 && $(on_node "$n" cat /proc/sys/net/ipv4/conf/default/rp_filter) == 1 ]] \
      || { echo "$n no longer filters strictly on reverse path"; return 1; }
  done
  mapfile -t cidrs < <(k get ippools -o jsonpath='{range .items[*]}{.spec.cidr}{"\n"}{end}' | grep -v ':')
  mode0=$(k get ippool "$pool" -o jsonpath='{.spec.mode}')
  echo "--- VXLAN: the underlay drops pod addresses (${cidrs[*]}), rp_filter=1 on every node"
  set_pool_mode "$pool" VXLAN
  vpc_drop "${cidrs[@]}"
  load_pods >/dev/null
  local vx_ok=true vx_summary
  vpc_paths >"$logs/vpc-vxlan.txt" || vx_ok=false
  cat "$logs/vpc-vxlan.txt"
  vx_summary=$(tail -1 "$logs/vpc-vxlan.txt")
  echo "frames the underlay dropped so far: $(vpc_dropped)"
  echo "kubectl sinew doctor (VXLAN): $(doctor_all 2>&1 | tail -1)"
  echo "--- Routed: the same underlay"
  set_pool_mode "$pool" Routed
  local a b t0 text rc=0 named=false probs
  a=$(k -n "$ns" get pods -l app=netexec --field-selector "spec.nodeName=${node_names[1]}" -o jsonpath='{.items[0].metadata.name}')
  b=$(k -n "$ns" get pods -l app=netexec --field-selector "spec.nodeName=${node_names[2]}" -o jsonpath='{.items[0].status.podIP}')
  if pod_connect "$ns" "$a" "$b:8080"; then
    echo "pod $a -> $b:8080 across nodes still works in Routed mode: the underlay does not drop it"
    return 1
  fi
  echo "pod $a -> $b:8080 across nodes fails in Routed mode, as the underlay drops it ($(vpc_dropped) frames dropped)"
  t0=$(now)
  while :; do
    set +e
    text=$(doctor_all 2>&1)
    rc=$?
    set -e
    if ((rc != 0)) && grep -qE "$vpc_problem_re" <<<"$text"; then named=true; break; fi
    (($(awk -v s="$(since "$t0")" 'BEGIN {print (s > 30)}'))) && break
    sleep 1
  done
  echo "kubectl sinew doctor (Routed), $(since "$t0") s after convergence, exit $rc:"
  echo "$text" | head -30
  probs=$(cn_problems)
  echo "ClusterNetwork default status.problems:"
  echo "${probs:-  (none)}"
  $named || echo "FAIL: kubectl sinew doctor did not name the dropped pod traffic ($vpc_problem_re) with a non-zero exit within 30 s"
  [[ -n $probs ]] || echo "FAIL: the ClusterNetwork's status lists no node problem"
  echo "--- the underlay stops dropping"
  vpc_undo
  local cleared=false
  t0=$(now)
  while (($(awk -v s="$(since "$t0")" 'BEGIN {print (s <= 30)}'))); do
    if doctor_all >/dev/null 2>&1; then cleared=true; break; fi
    sleep 1
  done
  $cleared && echo "doctor reports nothing $(since "$t0") s after the underlay stopped dropping" \
    || { echo "FAIL: doctor still reports problems 30 s after the underlay stopped dropping:"; doctor_all 2>&1 | head -20; }
  local back=true
  pod_connect "$ns" "$a" "$b:8080" || { back=false; echo "FAIL: pod $a -> $b:8080 in Routed mode without the drop"; }
  [[ $mode0 == Routed ]] || set_pool_mode "$pool" "$mode0"
  echo "--- verdict"
  echo "VXLAN over the dropping underlay: $($vx_ok && echo ok || echo FAIL): $vx_summary"
  echo "Routed over it: $($named && echo ok || echo FAIL): kubectl sinew doctor exit $rc$($named && echo ", names $(grep -oE "$vpc_problem_re" <<<"$text" | sort -u | tr '\n' ' ')")"
  echo "Routed over it: $([[ -n $probs ]] && echo ok || echo FAIL): ClusterNetwork status.problems: $(grep -c . <<<"$probs") entries"
  echo "underlay restored: $($cleared && $back && echo ok || echo FAIL): doctor $($cleared && echo clean || echo 'still reporting'), pod -> pod across nodes $($back && echo works || echo fails)"
  $vx_ok && $named && [[ -n $probs ]] && $cleared && $back || return 1
  echo "cloud VPC underlay + rp_filter=1: VXLAN carries every path; Routed is named by doctor and the ClusterNetwork status; clears after"
}

# --- helm upgrade and uninstall ------------------------------------------------------------

c_helm_upgrade() {
  local before after conf
  before=$(k -n "$sys" get pods -l app.kubernetes.io/name=sinew-node -o jsonpath='{.items[*].metadata.uid}')
  # A ClusterNetwork change the agents must apply: chain portmap after sinew in the conflist.
  h upgrade sinew "$repo/charts/sinew" --namespace "$sys" --reuse-values \
    --set 'clusterNetwork.spec.cni.chain[0].type=portmap' \
    --set 'clusterNetwork.spec.cni.chain[0].config.capabilities.portMappings=true'
  local deadline=$((SECONDS + 240))
  while ((SECONDS < deadline)); do
    after=$(k -n "$sys" get pods -l app.kubernetes.io/name=sinew-node -o jsonpath='{.items[*].metadata.uid}')
    if ! grep -qFf <(tr ' ' '\n' <<<"$before") <(tr ' ' '\n' <<<"$after"); then
      break
    fi
    sleep 2
  done
  k -n "$sys" rollout status ds/sinew-node --timeout=180s
  after=$(k -n "$sys" get pods -l app.kubernetes.io/name=sinew-node -o jsonpath='{.items[*].metadata.uid}')
  if grep -qFf <(tr ' ' '\n' <<<"$before") <(tr ' ' '\n' <<<"$after"); then
    echo "some sinew-node pods were not replaced"
    return 1
  fi
  local n
  for n in "${node_names[@]}"; do
    for _ in $(seq 60); do
      conf=$(on_node "$n" sh -c 'cat /etc/cni/net.d/*sinew*.conflist')
      [[ $conf == *'"portmap"'* ]] && break
      sleep 1
    done
    [[ $conf == *'"portmap"'* ]] || { echo "$n conflist was not rewritten: $conf"; return 1; }
  done
  echo "every sinew-node pod replaced; every conflist chains portmap"
}

# --- a worker restarted mid-run ------------------------------------------------------------

# Pods on the pod network (not hostNetwork, not finished): "namespace/name ip node uid", one a line.
network_pods() {
  k get pods -A -o json | jq -r '.items[]
    | select(.spec.hostNetwork != true and .status.podIP != null
             and .status.phase != "Succeeded" and .status.phase != "Failed")
    | "\(.metadata.namespace)/\(.metadata.name) \(.status.podIP) \(.spec.nodeName) \(.metadata.uid)"'
}
# Every block's allocation (its IPBlockUsage): "ip node containerID podUID", one a line.
block_allocations() {
  k get ipblockusages -o json | jq -r '.items[] | .spec.node as $n
    | (.status.allocations // [])[] | "\(.ip) \($n) \(.containerId) \(.podUid // "-")"'
}
# Seconds since the epoch of a pod's first container start (0 if not running).
started_at() { # namespace, pod
  local t
  t=$(k -n "$1" get pod "$2" -o jsonpath='{.status.containerStatuses[0].state.running.startedAt}')
  [[ -n $t ]] && date -d "$t" +%s || echo 0
}
pod_ready() { # namespace, pod
  [[ $(k -n "$1" get pod "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# IPs and allocations agree: no pod address twice, every pod address allocated once to that
# pod on its node, no allocation without a pod (the dead sandboxes' addresses released), and on
# $1 every allocation belongs to a sandbox that is ready there now.
ipam_agrees() { # node
  local pods allocs dup p ip node uid sandboxes
  pods=$(network_pods)
  allocs=$(block_allocations)
  dup=$(awk '{print $2}' <<<"$pods" | sort | uniq -d)
  [[ -z $dup ]] || { echo "pod addresses handed out twice: $dup"; grep -wF "$dup" <<<"$pods"; return 1; }
  dup=$(awk '{print $1}' <<<"$allocs" | sort | uniq -d)
  [[ -z $dup ]] || { echo "addresses allocated twice: $dup"; return 1; }
  while read -r p ip node uid; do
    awk -v ip="$ip" -v n="$node" -v u="$uid" '$1 == ip && $2 == n && $4 == u {f = 1} END {exit !f}' <<<"$allocs" \
      || { echo "$p ($ip on $node, uid $uid) has no matching allocation"; return 1; }
  done <<<"$pods"
  [[ $(wc -l <<<"$allocs") == "$(wc -l <<<"$pods")" ]] \
    || { echo "$(wc -l <<<"$allocs") allocations for $(wc -l <<<"$pods") pods"; diff <(awk '{print $1}' <<<"$allocs" | sort) <(awk '{print $2}' <<<"$pods" | sort); return 1; }
  sandboxes=$(on_node "$1" crictl pods -q --state ready --no-trunc)
  while read -r ip node cid uid; do
    [[ $node == "$1" ]] || continue
    grep -qx "$cid" <<<"$sandboxes" || { echo "$1: allocation $ip is held by sandbox $cid, which is not ready there"; return 1; }
  done <<<"$allocs"
  echo "$(wc -l <<<"$pods") pods on the pod network, as many allocations, no address twice"
}

# The agents sync their blocks' status every few seconds: give them time to agree.
wait_ipam_agrees() { # node, label
  local deadline=$((SECONDS + 120)) file=$logs/ipam-$2-restart.txt
  until ipam_agrees "$1" >"$file" 2>&1; do
    ((SECONDS < deadline)) || { cat "$file"; block_allocations; network_pods; return 1; }
    sleep 3
  done
  echo "$2: $(tail -1 "$file")"
}

# `docker restart` of a worker: its network namespace, /run and every process are new, its disk
# (/var/lib/sinew, /etc/cni, /opt/cni/bin, containerd's state) is kept. The agent must come
# back, the node's pods (restarted in new sandboxes, and a new one) must reach and be reached
# across nodes, and no address may be handed out twice or stay held by a dead sandbox.
c_node_restart() {
  local node=${node_names[2]} t0 deadline p agent victim all_ok ready_pods
  wait_ipam_agrees "$node" before
  echo "before: $(network_pods | awk -v n="$node" '$3 == n' | wc -l) pod-network pods on $node"
  t0=$(date +%s)
  docker restart "$node" >/dev/null
  echo "docker restart $node: $(($(date +%s) - t0))s"
  agent=$(k -n "$sys" get pods -l app.kubernetes.io/name=sinew-node --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
  # Every pod of the node (the agent, kube-proxy, the test pods) runs again, started after the
  # restart, and is Ready.
  deadline=$((SECONDS + 300))
  while :; do
    all_ok=true
    while read -r p; do
      [[ -n $p ]] || continue
      if (($(started_at "${p%/*}" "${p#*/}") < t0)) || ! pod_ready "${p%/*}" "${p#*/}"; then
        all_ok=false
        break
      fi
    done < <(k get pods -A --field-selector "spec.nodeName=$node" -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}')
    $all_ok && break
    ((SECONDS < deadline)) || { echo "pods of $node not all running again after 300s (waiting for $p)"; k get pods -A -o wide --field-selector "spec.nodeName=$node"; return 1; }
    sleep 2
  done
  echo "agent $agent Ready again; every pod on $node restarted and Ready $(($(date +%s) - t0))s after the restart"
  [[ $(ready_of "$node") == True ]] || { echo "$node is not Ready"; return 1; }
  # The node's disk kept node.json, which said "ready" for this kernel boot; the routes, VXLAN
  # and NAT it stood for went with the old network namespace. No pod may get its network there
  # before the agent's first complete pass since the restart (the plugin answers "try again").
  local first_pass since adds early gated
  first_pass=$(k -n "$sys" logs "$agent" --timestamps | grep -m1 'first complete pass' | cut -d' ' -f1)
  [[ -n $first_pass ]] || { echo "agent $agent logged no complete pass since the restart"; return 1; }
  since=$(date -u -d "@$t0" +%Y-%m-%dT%H:%M:%S)
  adds=$(on_node "$node" cat /var/log/sinew/cni.log | awk -v s="$since" '$1 >= s && / ADD /')
  early=$(awk -v p="$first_pass" '$1 < p' <<<"$adds")
  gated=$(k get events -A --field-selector reason=FailedCreatePodSandBox -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -c 'has not completed a pass' || true)
  echo "agent's first complete pass after the restart: $first_pass; $(grep -c . <<<"$adds") pod ADDs since, first at $(head -1 <<<"$adds" | cut -d' ' -f1); $gated sandboxes told to try again before"
  [[ -z $early ]] || { echo "pods got their network before the agent had programmed the node:"; echo "$early"; return 1; }
  # A new pod on the restarted node: the DaemonSet replaces a deleted one.
  victim=$(k -n "$ns" get pods -l app=netexec,set=a --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
  k -n "$ns" delete pod "$victim" --wait=true
  k -n "$ns" rollout status ds/netexec-a --timeout=180s
  k -n "$ns" rollout status ds/netexec-b --timeout=180s
  load_pods
  c_pod_to_pod
  ready_pods=$(k -n "$ns" get pods -l app=netexec --field-selector "spec.nodeName=$node" -o name | wc -l)
  echo "$ready_pods netexec pods on $node (one new) reach and are reached by every other"
  wait_ipam_agrees "$node" after
}

allocated_total() {
  k get ipblockusages -o jsonpath='{range .items[*]}{.status.allocated}{"\n"}{end}' | awk '{s += $1} END {print s + 0}'
}

# --- upstream sig-network specs (e2e.test v1.37.2, run in parallel by the ginkgo CLI) --------

# What the focus selects: every [sig-network] [Conformance] spec, the Granular Checks of Services
# (pod, node and endpoint to Service, NodePorts, session affinity, large requests; not
# conformance) and the Conntrack specs (UDP and TCP conntrack through Services).
conformance_focus=(
  '\[sig-network\] .*\[Conformance\]'
  '\[sig-network\] Networking Granular Checks: Services '
  '\[sig-network\] Conntrack '
)
# Specs the focus selects that cannot run here: each by its full name, then `|` and the reason.
# The run fails if one of these names no longer matches a selected spec.
no_sctp="this machine's kernel is built without SCTP (CONFIG_IP_SCTP is not set; socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT), and kind nodes share the host's kernel"
conformance_excluded=(
  "[sig-network] Networking Granular Checks: Services should function for pod-Service: sctp [Feature:SCTPConnectivity]|$no_sctp"
  "[sig-network] Networking Granular Checks: Services should function for node-Service: sctp [Feature:SCTPConnectivity]|$no_sctp"
  "[sig-network] Networking Granular Checks: Services should function for endpoint-Service: sctp [Feature:SCTPConnectivity]|$no_sctp"
)
conformance_procs=${SINEW_KIND_CONFORMANCE_PROCS:-3}

# Schedulable nodes (no NoSchedule/NoExecute taint, not cordoned): e2e.test's --num-nodes. Without
# it only ginkgo's first process learns the node count, and every spec gated on it is skipped
# elsewhere ("Requires at least 2 nodes (not -1)").
schedulable_nodes() {
  k get nodes -o json | jq '[.items[] | select(.spec.unschedulable != true and
    ([.spec.taints[]? | select(.effect == "NoSchedule" or .effect == "NoExecute")] | length) == 0)] | length'
}
regex_quote() { sed 's/[][\\.*^$()+?{}|]/\\&/g' <<<"$1"; }
# "state<TAB>full name" of every It in a ginkgo JSON report.
spec_states() {
  jq -r '.[].SpecReports[]? | select(.LeafNodeType == "It")
    | [.State, ((.ContainerHierarchyTexts // []) + [.LeafNodeText] | join(" "))] | @tsv' "$1"
}

# Runs one upstream set (SET: `conformance` or `netpol`; its focus and exclusions are the arrays
# ${SET}_focus and ${SET}_excluded), counts passed specs against what the focus selects (a spec
# that was skipped at run time, a node-count guard for instance, counts as not passed), and fails
# unless every selected spec passed.
upstream_set() {
  local set=$1 dir=$logs/$1 t0=$SECONDS nodes_n f e name rc
  local -n set_focus=${set}_focus set_excluded=${set}_excluded
  local focus=() skip=() suite_flags
  mkdir -p "$dir"
  nodes_n=$(schedulable_nodes)
  ((nodes_n >= 2)) || { echo "only $nodes_n schedulable nodes"; return 1; }
  for f in "${set_focus[@]}"; do focus+=(--focus "$f"); done
  suite_flags=(--kubeconfig="$kubeconfig" --provider=skeleton --num-nodes="$nodes_n")
  # What the focus selects: a dry run lists it (nothing runs, the cluster is not touched).
  nsenter --net="$SINEW_KIND_NETNS" "$e2e_bin/ginkgo" run --dry-run --no-color "${focus[@]}" \
    --json-report=selected.json --output-dir="$dir" "$e2e_bin/e2e.test" -- "${suite_flags[@]}" \
    >"$dir/dry-run.log" 2>&1 || { tail -20 "$dir/dry-run.log"; echo "the dry run failed"; return 1; }
  spec_states "$dir/selected.json" | awk -F'\t' '$1 == "passed" {print $2}' | sort >"$dir/focused.txt"
  : >"$dir/excluded.txt"
  for e in "${set_excluded[@]}"; do
    name=${e%%|*}
    grep -qxF "$name" "$dir/focused.txt" || { echo "excluded spec not selected by the focus (renamed upstream?): $name"; return 1; }
    printf '%s\n' "$name" >>"$dir/excluded.txt"
    skip+=(--skip "$(regex_quote "$name")")
  done
  grep -vxFf "$dir/excluded.txt" "$dir/focused.txt" >"$dir/selected.txt" || true
  local selected excluded
  selected=$(wc -l <"$dir/selected.txt")
  excluded=$(wc -l <"$dir/excluded.txt")
  echo "the focus selects $((selected + excluded)) specs; $excluded excluded by name (cannot run here):"
  for e in "${set_excluded[@]}"; do echo "  ${e%%|*}: ${e#*|}"; done
  echo "running $selected specs: ginkgo -p --procs=$conformance_procs, e2e.test --num-nodes=$nodes_n"
  set +e
  nsenter --net="$SINEW_KIND_NETNS" "$e2e_bin/ginkgo" run -p --procs="$conformance_procs" --no-color --silence-skips \
    --timeout=60m "${focus[@]}" "${skip[@]}" --json-report=report.json --output-dir="$dir" \
    "$e2e_bin/e2e.test" -- "${suite_flags[@]}" >"$dir/ginkgo.log" 2>&1
  rc=$?
  set -e
  grep -E '^Ran [0-9]+ of [0-9]+ Specs|^(SUCCESS|FAIL)!' "$dir/ginkgo.log" || true
  [[ -s $dir/report.json ]] || { tail -30 "$dir/ginkgo.log"; echo "ginkgo (exit $rc) wrote no report"; return 1; }
  spec_states "$dir/report.json" | sort -t$'\t' -k2 >"$dir/states.tsv"
  local passed=0 failed=0 state
  while IFS= read -r name; do
    state=$(awk -F'\t' -v n="$name" '$2 == n {print $1; exit}' "$dir/states.tsv")
    if [[ $state == passed ]]; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
      echo "NOT PASSED (${state:-not run}): $name"
      jq -r --arg n "$name" '.[].SpecReports[]? | select(.LeafNodeType == "It")
        | select(((.ContainerHierarchyTexts // []) + [.LeafNodeText] | join(" ")) == $n)
        | "    \(.Failure.Location.FileName // "" | sub(".*/test/e2e/"; "test/e2e/")):\(.Failure.Location.LineNumber // "")  \(.Failure.Message // "" | split("\n") | map(select(. != "")) | .[0:3] | join(" / "))"' \
        "$dir/report.json" | cut -c1-400
    fi
  done <"$dir/selected.txt"
  echo "ginkgo exit $rc, $((SECONDS - t0)) s; report $dir/report.json, output $dir/ginkgo.log"
  echo "$set: $passed passed, $failed failed (of $selected selected; $excluded excluded by name)"
  ((failed == 0 && passed == selected))
}

c_conformance() { upstream_set conformance; }

# The upstream NetworkPolicy suite: every `[sig-network] Netpol` spec but the three that carry
# SCTP traffic (the two that only check SCTP rules are not mistaken for TCP ones run).
netpol_focus=('\[sig-network\] Netpol ')
netpol_excluded=(
  "[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should enforce policy based on Ports [Feature:NetworkPolicy]|$no_sctp"
  "[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector [Feature:NetworkPolicy]|$no_sctp"
  "[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]|$no_sctp"
)

# Policy on (ClusterNetwork spec.networkPolicy: Enabled, the default; set explicitly so that the
# check says so): every agent reports its table programmed, then the upstream Netpol suite runs.
c_netpol() {
  local deadline n
  k patch clusternetwork default --type merge -p '{"spec":{"networkPolicy":"Enabled"}}'
  deadline=$((SECONDS + 300))
  while ((SECONDS < deadline)); do
    n=$(k get nodes -o json | jq '[.items[] | .metadata.annotations["sinew.dev/node-state"] // "{}"
      | fromjson | select(.policy.programmed == true)] | length')
    ((n == ${#node_names[@]})) && break
    sleep 2
  done
  ((n == ${#node_names[@]})) || { echo "policy programmed on $n of ${#node_names[@]} nodes"; return 1; }
  echo "policy programmed on all $n nodes"
  upstream_set netpol
}

# `helm uninstall` while pods still hold pod-network addresses (CoreDNS always does; the test
# pods too): the hook refuses at once, naming them, and deletes nothing; sinew keeps serving.
c_uninstall_refused() {
  local t0=$SECONDS out rc took logs_out p name node ip
  set +e
  out=$(h uninstall sinew --namespace "$sys" --wait --timeout 5m 2>&1)
  rc=$?
  set -e
  took=$((SECONDS - t0))
  echo "helm uninstall (exit $rc, ${took}s): $out"
  ((rc != 0)) || { echo "helm uninstall succeeded while CoreDNS held addresses"; return 1; }
  ((took < 60)) || { echo "the refusal took ${took}s"; return 1; }
  [[ $out == *"job sinew-uninstall failed"* ]] || { echo "helm did not report the hook's failure"; return 1; }
  logs_out=$(k -n "$sys" logs job/sinew-uninstall)
  echo "$logs_out" | tail -12
  grep -q 'Nothing was deleted' <<<"$logs_out" || { echo "the hook's log does not say nothing was deleted"; return 1; }
  grep -q 'CoreDNS too' <<<"$logs_out" || { echo "the hook's log does not say what to do"; return 1; }
  # Every pod on the pod network is named, with its node and address.
  while read -r p ip node _; do
    grep -qF "$p on node $node ($ip)" <<<"$logs_out" || { echo "the hook did not name $p on $node ($ip)"; return 1; }
  done < <(network_pods)
  [[ $(k -n "$sys" get job sinew-uninstall -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}') == PodFailurePolicy ]] \
    || { echo "the Job was not failed by its podFailurePolicy (retried?)"; k -n "$sys" get job sinew-uninstall -o yaml | tail -30; return 1; }
  # Nothing deleted: no pool or ClusterNetwork being deleted, the release's objects all there
  # (Helm marks the release `uninstalling`; the next `helm uninstall` runs the hook again).
  [[ -z $(k get ippools,clusternetworks -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}{end}') ]] \
    || { echo "something is being deleted:"; k get ippools,clusternetworks -o yaml | grep -B3 deletionTimestamp; return 1; }
  k -n "$sys" get deploy/sinew-operator ds/sinew-node >/dev/null
  echo "helm status: $(h status sinew --namespace "$sys" | grep '^STATUS:')"
  k wait --for=condition=Ready clusternetwork/default --timeout=60s
  # And the network still works: a pod reaches a pod on another node and a DNS name.
  local a b
  a=$(k -n "$ns" get pods -l app=netexec --field-selector "spec.nodeName=${node_names[1]}" -o jsonpath='{.items[0].metadata.name}')
  b=$(k -n "$ns" get pods -l app=netexec --field-selector "spec.nodeName=${node_names[2]}" -o jsonpath='{.items[0].status.podIP}')
  k -n "$ns" exec "$a" -- /agnhost connect "$b:8080" --timeout=5s
  k -n "$ns" exec "$a" -- /agnhost connect "netexec.$ns.svc.cluster.local:8080" --timeout=5s
  echo "refused in ${took}s naming $(network_pods | wc -l) pods (CoreDNS among them); nothing deleted, ClusterNetwork Ready, pod -> pod and DNS still work"
}

# --- failure injection on a real node (diagnosis, issue #14) -------------------------------

diag_node() { echo "${node_names[1]}"; }
doctor() { # node -> doctor's text; its exit code is 1 while the node has a problem
  nsenter --net="$SINEW_KIND_NETNS" env KUBECONFIG="$kubeconfig" "$repo/images/out/kubectl-sinew" doctor "$1"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
# How long a node problem may take to show (issue #14: 10 s): the agent checks on every pass,
# and its sentinel wakes a pass within 2 s of a change to links, addresses, routes, rules, the
# CNI configuration directory or a forwarding setting. The times are printed.
diag_limit=10
# Polls `doctor NODE` until its text matches (or, with !, stops matching) REGEX; fails after
# $diag_limit s.
doctor_until() { # node, [!]regex, what
  local node=$1 want=$2 what=$3 t0 text neg=false
  [[ $want == '!'* ]] && { neg=true; want=${want#!}; }
  t0=$(now)
  while :; do
    text=$(doctor "$node" 2>&1 || true)
    if $neg; then ! grep -qE "$want" <<<"$text" && break; else grep -qE "$want" <<<"$text" && break; fi
    if (($(awk -v s="$(since "$t0")" -v l=$diag_limit 'BEGIN {print (s > l)}'))); then
      echo "$what: not within $diag_limit s; kubectl sinew doctor $node says:"; echo "$text"; return 1
    fi
    sleep 0.3
  done
  echo "$what: $(since "$t0") s"
}
agent_on() { k -n "$sys" get pods -l app.kubernetes.io/name=sinew-node --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'; }

# (a) forwarding turned off on the node: the agent turns it back on and says so.
c_diag_forwarding() {
  local node t0 since_ts agent
  node=$(diag_node)
  agent=$(agent_on "$node")
  since_ts=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  t0=$(now)
  on_node "$node" sysctl -w net.ipv4.ip_forward=0
  until [[ $(on_node "$node" cat /proc/sys/net/ipv4/ip_forward) == 1 ]]; do
    (($(awk -v s="$(since "$t0")" -v l=$diag_limit 'BEGIN {print (s > l)}'))) && { echo "$node: net.ipv4.ip_forward still 0 after $diag_limit s"; return 1; }
    sleep 0.2
  done
  local back; back=$(since "$t0")
  echo "$node: net.ipv4.ip_forward back to 1 after $back s"
  k -n "$sys" logs "$agent" --since-time="$since_ts" | grep 'node setting applied' | grep 'net/ipv4/ip_forward' \
    || { echo "the agent logged no repair"; return 1; }
  local ev
  for _ in $(seq 10); do
    ev=$(k get events -A --field-selector "involvedObject.name=$node,reason=ForwardingOff" -o jsonpath='{range .items[*]}{.type} {.message}{"\n"}{end}' | tail -1)
    [[ -n $ev ]] && break
    sleep 1
  done
  [[ -n $ev ]] || { echo "no ForwardingOff Event on Node $node"; return 1; }
  echo "Event: $ev"
  echo "forwarding off on $node: back on after $back s, Event ForwardingOff and the agent's log say so"
}

# (b) another vendor's conflist that sorts before sinew's.
c_diag_conflist() {
  local node
  node=$(diag_node)
  on_node "$node" sh -c 'echo "{\"cniVersion\":\"1.0.0\",\"name\":\"cbr0\",\"plugins\":[{\"type\":\"flannel\",\"delegate\":{\"hairpinMode\":true,\"isDefaultGateway\":true}},{\"type\":\"portmap\",\"capabilities\":{\"portMappings\":true}}]}" > /etc/cni/net.d/00-flannel.conflist'
  doctor_until "$node" 'ConflistShadowed' "ConflistShadowed named by kubectl sinew doctor"
  doctor "$node" | grep -A4 ConflistShadowed || true
  on_node "$node" rm -f /etc/cni/net.d/00-flannel.conflist
  doctor_until "$node" '!ConflistShadowed' "ConflistShadowed cleared"
}

# (c) a dangling cni0 bridge of another CNI with an address (and its route) in the pool.
c_diag_bridge() {
  local node
  node=$(diag_node)
  on_node "$node" ip link add cni0 type bridge
  on_node "$node" ip addr add 10.244.255.129/25 dev cni0
  on_node "$node" ip link set cni0 up
  doctor_until "$node" 'ForeignInterfaces' "ForeignInterfaces named"
  doctor_until "$node" 'RouteConflict' "RouteConflict named"
  doctor "$node" | grep -E -A3 'ForeignInterfaces|RouteConflict' || true
  on_node "$node" ip link delete cni0
  doctor_until "$node" '!ForeignInterfaces|RouteConflict' "both cleared"
  doctor "$node" | tail -3
}

# Whatever a failed injection check left behind.
diag_undo() {
  local node
  node=$(diag_node)
  on_node "$node" sh -c 'rm -f /etc/cni/net.d/00-flannel.conflist; ip link delete cni0 2>/dev/null; sysctl -qw net.ipv4.ip_forward=1' || true
}

c_uninstall_clean() {
  # The chart's documented order (the hook refuses otherwise, see c_uninstall_refused): every
  # pod on the pod network goes first: the test namespace and CoreDNS's pods.
  k delete namespace "$ns" --wait=true --timeout=180s
  k -n kube-system scale deploy coredns --replicas=0
  k -n kube-system wait --for=delete pod -l k8s-app=kube-dns --timeout=120s
  local deadline=$((SECONDS + 120))
  until [[ $(allocated_total) == 0 ]]; do
    ((SECONDS < deadline)) || { k get ipblocks -o yaml; echo "addresses still allocated"; return 1; }
    sleep 2
  done
  h uninstall sinew --namespace "$sys" --wait --timeout 5m
  local n left
  for n in "${node_names[@]}"; do
    left=$(on_node "$n" sh -c '
      ls /etc/cni/net.d/*sinew* 2>/dev/null
      ls /opt/cni/bin/sinew 2>/dev/null
      ip -o link show sinew.vxlan 2>/dev/null
      nft list table inet sinew >/dev/null 2>&1 && echo "nft table inet sinew"
      nft list table inet sinew-policy >/dev/null 2>&1 && echo "nft table inet sinew-policy"
      ip route show | grep -E "sinew|10\.244\." ' || true)
    [[ -z $left ]] || { echo "$n still has: $left"; return 1; }
  done
  echo "${#node_names[@]} nodes clean: no conflist, plugin, sinew.vxlan, inet sinew or sinew-policy table, or pod routes"
}

# --- run ------------------------------------------------------------------------------------

check "nodes NotReady before sinew (no conflist)" c_not_ready_before || true
check "nodes filter strictly on reverse path before sinew (rp_filter=1 on all and default)" c_rp_filter_strict || true
if check "helm install charts/sinew" h_install; then
  check "nodes Ready only once sinew's conflist is in place" c_ready_after_conflist || true
  check "ClusterNetwork default Ready" c_clusternetwork_ready || true
  check "sinew-node DaemonSet and operator Deployment ready (probes, leader)" c_agents_and_operator || true
  check "CoreDNS Running and Ready" c_coredns || true
  have_workloads=false
  if check "test workloads (agnhost netexec, 2 per node, Service)" workloads; then
    have_workloads=true
    load_pods
    check "pod -> pod, all pairs" c_pod_to_pod || true
    check "node -> pod" c_node_to_pod || true
    check "pod -> Service ClusterIP" c_pod_to_service || true
    check "pod -> DNS name" c_pod_to_dns || true
    check "pod -> outside host (natOutgoing)" c_nat_outgoing || true
    check "IPPools and IPBlocks show the allocations" c_ipam || true
    if [[ $conformance == 1 ]]; then
      # On the chart's defaults (Auto pool, no chained plugin: hostPort is sinew's own), before
      # anything below changes them.
      check "upstream sig-network specs: [Conformance], Granular Checks: Services, Conntrack (e2e.test v1.37.2)" c_conformance || true
    fi
    if [[ $netpol == 1 ]]; then
      check "NetworkPolicy programmed on every node, then the upstream [sig-network] Netpol specs (e2e.test v1.37.2, SCTP traffic excluded)" c_netpol || true
    fi
    check "live mode switch Auto -> VXLAN -> Routed keeps a TCP connection" c_mode_switch || true
    check "zoned pools (one per worker, by namespace annotation): every path in Routed, VXLAN and Auto" c_zoned_pools || true
    zones_undo
    check "cloud VPC underlay (pod addresses dropped, rp_filter=1): VXLAN carries every path, Routed is named by doctor" c_cloud_vpc || true
    vpc_undo
  fi
  check "helm upgrade rolls the DaemonSet and rewrites the conflist" c_helm_upgrade || true
  if $have_workloads; then
    check "worker restarted (docker restart): agent back, its pods reachable, no address twice" c_node_restart || true
  fi
  check "diagnosis: ip_forward=0 on a node is turned back on, Event ForwardingOff" c_diag_forwarding || true
  diag_undo
  check "diagnosis: a foreign 00-flannel.conflist is named ConflistShadowed, cleared when removed" c_diag_conflist || true
  diag_undo
  check "diagnosis: a dangling cni0 bridge in the pool is named ForeignInterfaces and RouteConflict, cleared when removed" c_diag_bridge || true
  diag_undo
  if $have_workloads; then
    check "helm uninstall with pods holding addresses (CoreDNS) is refused at once, nothing deleted" c_uninstall_refused || true
  fi
  check "helm uninstall leaves every node clean" c_uninstall_clean || true
fi
summary
((failed == 0))
