#!/usr/bin/env bash
# `make bench-kind`: sinew beside Flannel on real kind clusters built offline (e2e/kind/build.sh).
# A benchmark, not a test: it prints a table and, with --write-docs, writes it into
# docs/benchmarks.md ("Real nodes: kind, sinew beside Flannel").
#
# In one run, two fresh clusters made the same way (1 control plane + 2 workers,
# disableDefaultCNI, podSubnet 10.244.0.0/16) on the same engine, up at the same time:
#   bench-sinew    the chart, installed as e2e/kind/run.sh installs it (pool default-ipv4, mode
#                  Auto);
#   bench-flannel  flanneld v0.27.4 (e2e/tools/flannel, VXLAN backend) as a DaemonSet with the
#                  reference bridge + host-local (e2e/kind/flannel/flannel.yaml).
# The measurements alternate between them (sinew, flannel, sinew, ...), so that whatever else
# the machine runs weighs on both alike; each cluster idles while the other is measured.
#   - a Deployment of pause containers (the node image's registry.k8s.io/pause) spread over the
#     two workers, scaled 0 -> $PODS, until every pod is Ready; $ROUNDS rounds each (scaled back
#     to 0 and every pod gone in between). Pods Ready per second: $PODS / (last pod Ready - the
#     scale request), median of the rounds. Pod creation -> Ready: p50 and p99 over every pod of
#     every round, timed on the client side: a `kubectl get -w` started before the scale request
#     stamps each line with the machine's clock when it arrives ($EPOCHREALTIME, microseconds);
#     a pod is created when it is first seen and Ready when first seen with Ready=True. The
#     API's own timestamps (creationTimestamp, the Ready condition's lastTransitionTime; whole
#     seconds) are reported beside them.
#   - pod -> pod TCP across the workers: iperf 2 (Debian's, in the agnhost image) from a pod on
#     one worker to a pod on the other, one connection, $SINEW_BENCH_IPERF_SECONDS s,
#     $SINEW_BENCH_IPERF_RUNS runs each side, interleaved, median.
#     For sinew twice: in the pool's default mode (Auto: both workers are on one subnet, so
#     routed, no encapsulation) and in VXLAN, which is what Flannel's VXLAN backend does.
#   - NetworkPolicy (sinew only; its own section of docs/benchmarks.md): pod -> pod TCP and new
#     connections per second across the workers (iperf 2 --connect-only, $SINEW_BENCH_CONNECTS
#     connections a run, timed inside the client pod) with policy Disabled (the path without
#     sinew's policy table) and Enabled with no policy, alternating; then with
#     $SINEW_BENCH_POLICIES policies in the cluster; then with none again (the no-policy figure
#     is the median of both blocks) (they select 20 other pods; one pair of them allows the client's
#     egress and the server's ingress, so both ends are judged); then, with those policies in,
#     created -> enforced on both workers: a deny-all-ingress policy selecting a target pod on
#     each worker is created and deleted $SINEW_BENCH_POLICY_ROUNDS times while a prober pod on
#     the other worker connects every 20 ms (0.1 s timeout); the time from the create request
#     to the first refused connection on both (and from the delete request to the first
#     connection passing again on both), p50 and p99.
#
# usage: e2e/kind/bench.sh [--write-docs]
# Env: SINEW_BENCH_PARTS (pods,tcp,policy: which measurements; --write-docs writes the main
#      section when pods and tcp ran on both sides, the policy section when policy ran),
#      SINEW_BENCH_POLICIES (1000), SINEW_BENCH_POLICY_ROUNDS (40), SINEW_BENCH_CONNECTS (3000),
#      SINEW_BENCH_PODS (60), SINEW_BENCH_ROUNDS (3), SINEW_BENCH_IPERF_SECONDS (10),
#      SINEW_BENCH_IPERF_RUNS (5), SINEW_BENCH_ONLY (sinew|flannel: one side only; no docs of the main section), SINEW_CACHE (~/.cache/sinew), CARGO_TARGET_DIR (sinew's build), SINEW_KIND_KEEP=1 (keep
#      both clusters and the engine; KIND_CLUSTER=bench-sinew e2e/kind/down.sh, then
#      KIND_CLUSTER=bench-flannel, remove them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${SINEW_CACHE:-$HOME/.cache/sinew}/kind
registry=sinew.local
tag=kind
pods_wanted=${SINEW_BENCH_PODS:-60}
rounds=${SINEW_BENCH_ROUNDS:-3}
iperf_seconds=${SINEW_BENCH_IPERF_SECONDS:-10}
iperf_runs=${SINEW_BENCH_IPERF_RUNS:-5}
only=${SINEW_BENCH_ONLY:-}
parts=${SINEW_BENCH_PARTS:-pods,tcp,policy}
policies_wanted=${SINEW_BENCH_POLICIES:-1000}
policy_rounds=${SINEW_BENCH_POLICY_ROUNDS:-40}
connects=${SINEW_BENCH_CONNECTS:-3000}
pod_cidr=10.244.0.0/16
bns=bench
write_docs=false
for arg in "$@"; do
  case $arg in
    --write-docs) write_docs=true ;;
    *) echo "usage: $0 [--write-docs]" >&2; exit 2 ;;
  esac
done
export DOCKER_BUILDKIT=0

log() { echo "[bench-kind] $*" >&2; }
has() { [[ ",$parts," == *",$1,"* ]]; }
die() { echo "[bench-kind] FAILED: $*" >&2; exit 1; }

# One kind build or run at a time on a machine (the same lock as run.sh and build.sh).
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
flannel_bin=$("$repo/e2e/tools/build.sh" flannel)
flannel_version=$(awk '$1 == "require" && $2 == "github.com/flannel-io/flannel" {print $3}' "$repo/e2e/tools/flannel/go.mod")
eval "$("$here/dockerd.sh" start)"
export DOCKER_HOST SINEW_KIND_NETNS
out=$(mktemp -d /tmp/sinew-bench-kind.XXXXXX)
export PATH="$bin:$PATH"
watch_pid=""

sides=(sinew flannel)
[[ -n $only ]] && sides=("$only")

teardown() {
  local rc=$? side
  if [[ -n $watch_pid ]]; then stop_watch; fi
  if [[ ${SINEW_KIND_KEEP:-} == 1 ]]; then
    log "SINEW_KIND_KEEP=1: clusters bench-{sinew,flannel} and the engine are left running; kubeconfigs in $out"
    return
  fi
  log "tear-down"
  for side in "${sides[@]}"; do
    kind delete cluster --name "bench-$side" >/dev/null 2>&1 || true
  done
  docker network rm kind >/dev/null 2>&1 || true
  "$here/dockerd.sh" stop || true
  return "$rc"
}
trap teardown EXIT

# Every kubectl and helm call names its side's cluster: $side is set by the caller.
kc() { echo "$out/kubeconfig-$side"; }
k() { nsenter --net="$SINEW_KIND_NETNS" kubectl --kubeconfig "$(kc)" "$@"; }
h() { nsenter --net="$SINEW_KIND_NETNS" helm --kubeconfig "$(kc)" "$@"; }
declare -A worker0 worker1

# --- images ---------------------------------------------------------------------------------

if [[ $only != flannel ]]; then
  log "sinew images ($registry/sinew-{operator,node}:$tag)"
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sinew/target} "$repo/images/build-binaries.sh" >/dev/null
  REGISTRY=$registry TAG=$tag "$repo/images/build.sh" --skip-binaries >/dev/null 2>&1
fi
flannel_image=$registry/flannel:$flannel_version
if [[ $only != sinew ]]; then
  log "flannel image $flannel_image (flanneld from $flannel_bin, on $SINEW_KIND_SLIM_IMAGE)"
  ctx=$(mktemp -d "$out/flannel-image.XXXXXX")
  cp "$flannel_bin/flanneld" "$ctx/"
  printf '%s\n' "FROM $SINEW_KIND_SLIM_IMAGE" "COPY flanneld /usr/local/bin/flanneld" \
    'ENTRYPOINT ["/usr/local/bin/flanneld"]' >"$ctx/Dockerfile"
  docker build -q -t "$flannel_image" "$ctx" >/dev/null 2>"$out/flannel-image.log" || { cat "$out/flannel-image.log" >&2; die "docker build $flannel_image"; }
  rm -rf "$ctx"
fi

# --- a cluster ------------------------------------------------------------------------------

create_cluster() { # images to load... (for $side)
  local name=bench-$side start=$SECONDS workers
  kind delete cluster --name "$name" >/dev/null 2>&1 || true
  kind create cluster --name "$name" --image "$SINEW_KIND_NODE_IMAGE" \
    --config "$here/kind-config.yaml" --kubeconfig "$(kc)" >"$out/kind-create-$side.log" 2>&1 \
    || { cat "$out/kind-create-$side.log" >&2; die "kind create cluster $name"; }
  kind load docker-image --name "$name" "$@" >/dev/null 2>&1
  log "cluster $name up and images loaded in $((SECONDS - start))s"
  mapfile -t workers < <(kind get nodes --name "$name" | grep -v control-plane | sort)
  ((${#workers[@]} == 2)) || die "$name: expected 2 workers, got: ${workers[*]}"
  worker0[$side]=${workers[0]}
  worker1[$side]=${workers[1]}
}

wait_network() {
  k wait --for=condition=Ready nodes --all --timeout=300s >/dev/null
  k -n kube-system rollout status deploy/coredns --timeout=300s >/dev/null
}

install_sinew() {
  h upgrade --install sinew "$repo/charts/sinew" --namespace sinew-system --create-namespace \
    --set image.registry="$registry" --set image.tag="$tag" --set image.pullPolicy=Never >/dev/null
  k wait --for=condition=Ready clusternetwork/default --timeout=300s >/dev/null
  k -n sinew-system rollout status ds/sinew-node --timeout=300s >/dev/null
  wait_network
}

install_flannel() {
  sed -e "s|__IMAGE__|$flannel_image|g" -e "s|__NETWORK__|$pod_cidr|g" "$here/flannel/flannel.yaml" | k apply -f - >/dev/null
  k -n kube-flannel rollout status ds/flannel --timeout=300s >/dev/null
  wait_network
}

# --- pods Ready per second, creation -> Ready ------------------------------------------------

deployment() {
  k create namespace "$bns" --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n "$bns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: bench}
spec:
  replicas: 0
  selector: {matchLabels: {app: bench}}
  template:
    metadata: {labels: {app: bench}}
    spec:
      terminationGracePeriodSeconds: 0
      # Only the workers; as many on each as the scheduler can balance.
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
           nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: bench}}}
      containers:
        - name: pause
          image: $pause_image
          imagePullPolicy: Never
EOF
}

# Lines "<client time> <pod> <Ready status>" for every update the watch sees. Under heavy load
# the API server may end a watch: it is started again at once (its first lines then list the
# pods as they are), and a "<time> #restart" line says so.
start_watch() { # file
  local file=$1
  watch_stop=$out/watch.stop
  rm -f "$watch_stop"
  (
    while [[ ! -e $watch_stop ]]; do
      nsenter --net="$SINEW_KIND_NETNS" kubectl --kubeconfig "$(kc)" -n "$bns" get pods -l app=bench -w \
        -o jsonpath='{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' \
        2>>"$file.err" &
      echo $! >"$out/watch.pid"
      wait $! || true
      [[ -e $watch_stop ]] || echo "#restart"
    done
  ) > >(while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$file") &
  watch_pid=$!
}

stop_watch() {
  touch "$watch_stop"
  kill "$(cat "$out/watch.pid")" 2>/dev/null || true
  wait "$watch_pid" 2>/dev/null || true
  watch_pid=""
}

ready_count() { # watch file
  awk '$2 !~ /^#/ && $3 == "True" {r[$2] = 1} END {print length(r)}' "$1" 2>/dev/null || echo 0
}

# CPU seconds used so far by the containers of a namespace on every node of the cluster
# (crictl stats: the containers running now). For $side.
cpu_seconds() { # namespace...
  local node filter
  filter=$(printf '"%s",' "$@")
  for node in $(kind get nodes --name "bench-$side"); do
    docker exec "$node" crictl stats -o json 2>/dev/null \
      | jq --argjson ns "[${filter%,}]" '[.stats[] | select(.attributes.labels["io.kubernetes.pod.namespace"] as $n | $ns | index($n))
          | (.cpu.usageCoreNanoSeconds.value // "0") | tonumber] | add // 0' || echo 0
  done | awk '{s += $1} END {printf "%.3f\n", s / 1e9}'
}
provider_namespace() { [[ $side == sinew ]] && echo sinew-system || echo kube-flannel; }

# shellcheck disable=SC2129 # several writers append to the samples
scale_round() { # round (for $side)
  local round=$1 file t0 deadline
  file=$out/$side-watch-$round.txt
  local cpu0 api0
  cpu0=$(cpu_seconds "$(provider_namespace)")
  api0=$(cpu_seconds kube-system)
  start_watch "$file"
  sleep 2
  t0=$EPOCHREALTIME
  k -n "$bns" scale deploy/bench --replicas="$pods_wanted" >/dev/null
  deadline=$((SECONDS + 600))
  until (($(ready_count "$file") >= pods_wanted)); do
    ((SECONDS < deadline)) || { k -n "$bns" get pods -o wide >&2; die "$side round $round: not every pod Ready within 600s"; }
    sleep 0.2
  done
  stop_watch
  sleep 0.5
  {
    echo "restarts $side $round $(grep -c ' #restart' "$file")"
    echo "cpu $side $round $(awk -v a="$cpu0" -v b="$(cpu_seconds "$(provider_namespace)")" 'BEGIN {printf "%.3f", b - a}')"
    echo "cpusys $side $round $(awk -v a="$api0" -v b="$(cpu_seconds kube-system)" 'BEGIN {printf "%.3f", b - a}')"
  } >>"$out/samples.txt"
  # Client-side: per pod, first seen (created) and first seen Ready.
  awk -v t0="$t0" -v side="$side" -v round="$round" '
    $2 ~ /^#/ {next}
    !($2 in first) {first[$2] = $1}
    $3 == "True" && !($2 in ready) {ready[$2] = $1}
    END {
      last = 0
      for (p in ready) { print "lat", side, round, ready[p] - first[p]; if (ready[p] > last) last = ready[p] }
      printf "rate %s %s %.3f %d\n", side, round, length(ready) / (last - t0), length(ready)
    }' "$file" >>"$out/samples.txt"
  # The API's timestamps (whole seconds), for comparison.
  k -n "$bns" get pods -l app=bench -o json | jq -r --arg side "$side" --arg round "$round" '.items[]
    | (.metadata.creationTimestamp | fromdate) as $c
    | ((.status.conditions // [])[] | select(.type == "Ready" and .status == "True") | .lastTransitionTime | fromdate) as $r
    | "apilat \($side) \($round) \($r - $c)"' >>"$out/samples.txt"
  local per_node
  per_node=$(k -n "$bns" get pods -l app=bench -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort | uniq -c | awk '{printf "%s %s  ", $2, $1}')
  echo "load $side $round $(cut -d' ' -f1 /proc/loadavg)" >>"$out/samples.txt"
  log "$side round $round (load average $(cut -d' ' -f1 /proc/loadavg)): $(awk -v s="$side" -v r="$round" '$1 ~ /^(rate|cpu|cpusys|restarts)$/ && $2 == s && $3 == r {printf "%s %s  ", $1, $4}' "$out/samples.txt")($per_node)"
  k -n "$bns" scale deploy/bench --replicas=0 >/dev/null
  k -n "$bns" wait --for=delete pod -l app=bench --timeout=300s >/dev/null 2>&1 || true
  # Let the DELs and the agents settle before the next round.
  sleep 10
}

# --- pod -> pod TCP across the workers ----------------------------------------------------------

iperf_pods() {
  local w node
  for w in 0 1; do
    node=${worker0[$side]}
    ((w == 1)) && node=${worker1[$side]}
    k -n "$bns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: iperf-$w}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 0
  containers:
    - name: iperf
      image: $SINEW_KIND_AGNHOST_IMAGE
      imagePullPolicy: Never
      command: ["iperf", "-s"]
EOF
  done
  k -n "$bns" wait --for=condition=Ready pod/iperf-0 pod/iperf-1 --timeout=120s >/dev/null
}

# One iperf run iperf-1 -> iperf-0 (for $side): "tcp <label> <Mbit/s>" into the samples.
iperf_run() { # label
  local sip mbits
  sip=$(k -n "$bns" get pod iperf-0 -o jsonpath='{.status.podIP}')
  mbits=$(k -n "$bns" exec iperf-1 -- iperf -c "$sip" -t "$iperf_seconds" -f m 2>&1 \
    | tee -a "$out/iperf-$1.txt" | awk '/Mbits\/sec/ {v = $(NF - 1)} END {print v}')
  [[ -n $mbits ]] || die "iperf $1: no result (output in $out/iperf-$1.txt)"
  echo "tcp $1 $mbits" >>"$out/samples.txt"
  log "iperf $1: $mbits Mbit/s"
}

sinew_mode() { # mode: patch the pool and wait for every node to converge on it
  local deadline=$((SECONDS + 180)) gen obs conv plan
  k patch ippool default-ipv4 --type merge -p "{\"spec\":{\"mode\":\"$1\"}}" >/dev/null
  while ((SECONDS < deadline)); do
    gen=$(k get ippool default-ipv4 -o jsonpath='{.metadata.generation}')
    obs=$(k get ippool default-ipv4 -o jsonpath='{.status.observedGeneration}')
    conv=$(k get ippool default-ipv4 -o jsonpath='{.status.modeConvergence}')
    plan=$(k get ippool default-ipv4 -o jsonpath='{.status.modePlan}')
    [[ $gen == "$obs" && -z $plan && $conv == 3/3 ]] && { sleep 2; return 0; }
    sleep 1
  done
  die "pool default-ipv4 did not converge on $1"
}

# The route worker 1 has to worker 0's pods (evidence of the datapath measured).
route_between_workers() {
  local ip
  ip=$(k -n "$bns" get pod iperf-0 -o jsonpath='{.status.podIP}')
  docker exec "${worker1[$side]}" ip route get "$ip" | head -1
}

# --- NetworkPolicy (sinew only) -----------------------------------------------------------------

# A pod of the agnhost image on a worker: name, worker index, labels (flow map), command (flow seq).
agnhost_pod() {
  local node=${worker0[$side]}
  (($2 == 1)) && node=${worker1[$side]}
  k -n "$bns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, labels: $3}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 0
  containers:
    - name: c
      image: $SINEW_KIND_AGNHOST_IMAGE
      imagePullPolicy: Never
      command: $4
EOF
}

# Whether worker $1 (index) holds table inet sinew-policy.
has_policy_table() {
  local node=${worker0[$side]}
  (($1 == 1)) && node=${worker1[$side]}
  docker exec "$node" nft list table inet sinew-policy >/dev/null 2>&1
}

policy_switch() { # Enabled|Disabled: wait until both workers hold the table, or neither
  local deadline=$((SECONDS + 120)) w held
  k patch clusternetwork default --type merge -p "{\"spec\":{\"networkPolicy\":\"$1\"}}" >/dev/null
  while ((SECONDS < deadline)); do
    held=0
    for w in 0 1; do has_policy_table "$w" && held=$((held + 1)); done
    if [[ $1 == Enabled && $held == 2 || $1 == Disabled && $held == 0 ]]; then
      sleep 2
      return 0
    fi
    sleep 0.5
  done
  die "networkPolicy $1: the workers' tables did not follow"
}

# One connection-rate run iperf-1 -> iperf-0: "conn <label> <connections/s>" into the samples,
# and each connection's connect time ("ct <label> <ms>", iperf's own `ct=`) into ct-samples:
# a connect stalled by a dropped SYN (iperf's accept queue overflowing: about a second) costs
# a run most of its rate but moves the connect times' median by nothing.
connect_run() { # label
  local sip rate
  sip=$(k -n "$bns" get pod iperf-0 -o jsonpath='{.status.podIP}')
  # shellcheck disable=SC2016 # expanded in the pod
  k -n "$bns" exec iperf-1 -- bash -c 's=$EPOCHREALTIME; iperf -c "$1" --connect-only="$2" 2>&1 | grep " connected with "; echo "took $s $EPOCHREALTIME"' _ "$sip" "$connects" >"$out/connect-$1.txt"
  rate=$(awk '/ connected with / {n++} $1 == "took" {t = $3 - $2} END { if (n > 0 && t > 0) printf "%.0f", n / t }' "$out/connect-$1.txt")
  [[ -n $rate ]] || die "iperf --connect-only $1: no connection made"
  echo "conn $1 $rate" >>"$out/samples.txt"
  sed -n 's/.*(ct=\([0-9.]*\) ms).*/\1/p' "$out/connect-$1.txt" | awk -v l="$1" '{print "ct", l, $1}' >>"$out/ct-samples.txt"
  log "connections $1: $rate/s"
}

# ctstat LABEL p50|p99: over every connection's connect time of that label (ms).
ctstat() {
  awk -v l="$1" '$2 == l {print $3}' "$out/ct-samples.txt" | quantile "$2"
}

# The policies that select other pods (20 pause pods over both workers), and the pair that
# allows iperf-1 -> iperf-0 (the client's egress, the server's ingress).
policy_load() {
  local i node
  for i in $(seq 0 19); do
    node=${worker0[$side]}
    ((i % 2)) && node=${worker1[$side]}
    k -n "$bns" run "other-$i" --image="$pause_image" --image-pull-policy=Never --labels="app=other-$i" \
      --overrides="{\"spec\":{\"nodeName\":\"$node\",\"terminationGracePeriodSeconds\":0}}" >/dev/null
  done
  {
    for i in $(seq 1 "$((policies_wanted - 2))"); do
      cat <<EOF
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other-$i}
spec:
  podSelector: {matchLabels: {app: other-$((i % 20))}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: {matchLabels: {app: other-$(((i + 7) % 20))}}
        - namespaceSelector: {matchLabels: {team: t$((i % 50))}}
        - ipBlock: {cidr: 10.$((i % 200)).0.0/16, except: [10.$((i % 200)).$((i % 250)).0/24]}
      ports: [{protocol: TCP, port: $((8000 + i % 500))}, {protocol: UDP, port: $((9000 + i)), endPort: $((9010 + i))}]
  egress:
    - to: [{podSelector: {matchLabels: {app: other-$(((i + 3) % 20))}}}]
      ports: [{protocol: TCP, port: $((7000 + i % 300))}]
EOF
    done
    cat <<EOF
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: iperf-server-from-client}
spec:
  podSelector: {matchLabels: {app: iperf-server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: iperf-client}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: iperf-client-to-server}
spec:
  podSelector: {matchLabels: {app: iperf-client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: iperf-server}}}]}]
EOF
  } >"$out/policies.yaml"
  k -n "$bns" apply --server-side -f "$out/policies.yaml" >/dev/null
  k -n "$bns" wait --for=condition=Ready pod -l 'app in (other-0,other-19)' --timeout=120s >/dev/null
  log "$(k -n "$bns" get networkpolicies --no-headers | wc -l) policies in namespace $bns"
}

# The time of a prober's first line after time $2 whose outcome is $3 (ok|no), or nothing.
first_after() { # pod, time, outcome
  k -n "$bns" logs "$1" | awk -v t="$2" -v s="$3" '$1 > t && $2 == s {print $1; exit}'
}

# Creates (or deletes) the deny policy and waits until both probers see it: prints the seconds
# from the request to the later of the two.
enforce_round() { # create|delete
  local t0 deadline a b want=no
  [[ $1 == delete ]] && want=ok
  t0=$EPOCHREALTIME
  if [[ $1 == create ]]; then
    k -n "$bns" apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-targets}
spec: {podSelector: {matchLabels: {role: target}}, policyTypes: [Ingress]}
EOF
  else
    k -n "$bns" delete networkpolicy deny-targets >/dev/null
  fi
  deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    a=$(first_after prober-0 "$t0" "$want")
    b=$(first_after prober-1 "$t0" "$want")
    if [[ -n $a && -n $b ]]; then
      awk -v a="$a" -v b="$b" -v t="$t0" 'BEGIN {m = a > b ? a : b; printf "%.3f\n", m - t}'
      return 0
    fi
    sleep 0.5
  done
  die "policy $1: the probers did not see it within 30 s"
}

policy_part() {
  local i probe
  k -n "$bns" label pod iperf-0 app=iperf-server --overwrite >/dev/null
  k -n "$bns" label pod iperf-1 app=iperf-client --overwrite >/dev/null
  # Policy off and on alternate (switching is a few seconds); the block with the policies in
  # comes between two blocks without (A-B-A: a drift of the machine shows).
  for _ in $(seq "$iperf_runs"); do
    policy_switch Disabled
    iperf_run policy-disabled
    connect_run policy-disabled
    policy_switch Enabled
    iperf_run policy-enabled-0
    connect_run policy-enabled-0
  done
  policy_load
  sleep 5
  for _ in $(seq "$iperf_runs"); do
    iperf_run "policy-$policies_wanted"
    connect_run "policy-$policies_wanted"
  done
  k delete --raw "/apis/networking.k8s.io/v1/namespaces/$bns/networkpolicies" >/dev/null # one request (deletecollection)
  sleep 5
  for _ in $(seq "$iperf_runs"); do
    iperf_run policy-enabled-0
    connect_run policy-enabled-0
  done
  k -n "$bns" apply --server-side -f "$out/policies.yaml" >/dev/null
  sleep 5
  # Created -> enforced, with those policies in: each prober connects to the target on the
  # other worker every 20 ms and prints each change of outcome, stamped with the machine's
  # clock (the pods share it).
  # shellcheck disable=SC2016 # expanded in the pod
  probe='last=; while :; do t=$EPOCHREALTIME; if timeout 0.1 bash -c "exec 3<>/dev/tcp/$0/5001" 2>/dev/null; then r=ok; else r=no; fi; [[ $r == "$last" ]] || echo "$t $r"; last=$r; sleep 0.02; done'
  agnhost_pod target-0 0 '{role: target}' '["iperf", "-s"]'
  agnhost_pod target-1 1 '{role: target}' '["iperf", "-s"]'
  k -n "$bns" wait --for=condition=Ready pod/target-0 pod/target-1 --timeout=120s >/dev/null
  agnhost_pod prober-0 0 '{role: prober}' "[\"bash\", \"-c\", $(jq -n --arg p "$probe" '$p'), \"$(k -n "$bns" get pod target-1 -o jsonpath='{.status.podIP}')\"]"
  agnhost_pod prober-1 1 '{role: prober}' "[\"bash\", \"-c\", $(jq -n --arg p "$probe" '$p'), \"$(k -n "$bns" get pod target-0 -o jsonpath='{.status.podIP}')\"]"
  k -n "$bns" wait --for=condition=Ready pod/prober-0 pod/prober-1 --timeout=120s >/dev/null
  sleep 2
  for i in $(seq "$policy_rounds"); do
    echo "enforce $(enforce_round create)" >>"$out/policy-samples.txt"
    sleep 1
    echo "release $(enforce_round delete)" >>"$out/policy-samples.txt"
    sleep 1
    log "policy round $i: $(tail -2 "$out/policy-samples.txt" | tr '\n' ' ')"
  done
  k delete --raw "/apis/networking.k8s.io/v1/namespaces/$bns/networkpolicies" >/dev/null # one request (deletecollection)
}

pause_image=$(docker run --rm --entrypoint cat "$SINEW_KIND_NODE_IMAGE" /etc/containerd/config.toml \
  | sed -n 's/.*sandbox_image = "\(.*\)"/\1/p')
[[ -n $pause_image ]] || die "no sandbox_image in the node image's containerd config"
: >"$out/samples.txt"

for side in "${sides[@]}"; do
  start=$SECONDS
  case $side in
    sinew)
      create_cluster "$registry/sinew-operator:$tag" "$registry/sinew-node:$tag"
      install_sinew
      ;;
    flannel)
      create_cluster "$flannel_image"
      install_flannel
      ;;
    *) die "unknown side $side" ;;
  esac
  deployment
  iperf_pods
  log "$side installed, nodes and CoreDNS Ready ($((SECONDS - start))s); route ${worker1[$side]} -> iperf-0: $(route_between_workers)"
done

if has pods; then
  for round in $(seq "$rounds"); do
    for side in "${sides[@]}"; do
      scale_round "$round"
    done
  done
fi
if has tcp; then
  for _ in $(seq "$iperf_runs"); do
    for side in "${sides[@]}"; do
      iperf_run "$side"
    done
  done
fi
: >"$out/policy-samples.txt"
: >"$out/ct-samples.txt"
with_sinew=false
[[ " ${sides[*]} " == *" sinew "* ]] && with_sinew=true
if has policy && $with_sinew; then
  side=sinew
  policy_part
fi
if has tcp && $with_sinew; then
  side=sinew
  sinew_mode VXLAN
  log "sinew VXLAN: route ${worker1[sinew]} -> iperf-0: $(route_between_workers)"
  for _ in $(seq "$iperf_runs"); do
    for side in "${sides[@]}"; do
      label=$side-2
      [[ $side == sinew ]] && label=sinew-vxlan
      iperf_run "$label"
    done
  done
fi

# --- the table ------------------------------------------------------------------------------

# quantile p50|median|p99: of the numbers on standard input ("-" when there are none).
quantile() {
  sort -g | awk -v w="$1" '
    {v[NR] = $1}
    END {
      if (NR == 0) { print "-"; exit }
      if (w == "p50" || w == "median") i = int((NR + 1) / 2)
      else { i = int(NR * 0.99 + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR }
      print v[i]
    }'
}

# stat KIND SIDE p50|p99|median: over the samples of that kind and side.
stat() {
  local kind=$1 side=$2 what=$3 col=4
  [[ $kind == tcp || $kind == conn ]] && col=3
  awk -v k="$kind" -v s="$side" -v c="$col" '$1 == k && $2 == s {print $c}' "$out/samples.txt" | quantile "$what"
}
ms() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.0f", v * 1000 }'; }
num2() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f", v }'; }
num() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.1f", v }'; }

row() { # label, sinew value, flannel value
  printf '| %s | %s | %s |\n' "$1" "$2" "$3"
}
table() {
  echo "| metric | sinew | flannel |"
  echo "|---|---:|---:|"
  row "pods Ready per second (0 -> $pods_wanted, median of $rounds)" "$(num2 "$(stat rate sinew median)")" "$(num2 "$(stat rate flannel median)")"
  row "creation -> Ready p50 (ms, client watch)" "$(ms "$(stat lat sinew p50)")" "$(ms "$(stat lat flannel p50)")"
  row "creation -> Ready p99 (ms, client watch)" "$(ms "$(stat lat sinew p99)")" "$(ms "$(stat lat flannel p99)")"
  row "creation -> Ready p50 / p99 (s, API timestamps)" "$(stat apilat sinew p50) / $(stat apilat sinew p99)" "$(stat apilat flannel p50) / $(stat apilat flannel p99)"
  row "pod -> pod TCP across workers (Mbit/s, default modes, median of $iperf_runs)" "$(num "$(stat tcp sinew median)") (Auto: routed)" "$(num "$(stat tcp flannel median)") (VXLAN)"
  row "pod -> pod TCP across workers (Mbit/s, both VXLAN, median of the next $iperf_runs)" "$(num "$(stat tcp sinew-vxlan median)")" "$(num "$(stat tcp flannel-2 median)")"
  row "CPU s of the network provider's pods per round (sinew-system / kube-flannel), median" "$(stat cpu sinew median)" "$(stat cpu flannel median)"
  row "CPU s of kube-system's pods per round (API server, etcd, ...), median" "$(stat cpusys sinew median)" "$(stat cpusys flannel median)"
  row "watches the API server ended during the rounds (restarted at once)" "$(awk '$1 == "restarts" && $2 == "sinew" {s += $4} END {print s + 0}' "$out/samples.txt")" "$(awk '$1 == "restarts" && $2 == "flannel" {s += $4} END {print s + 0}' "$out/samples.txt")"
  row "machine load average (1 min) at the end of the rounds, median" "$(stat load sinew median)" "$(stat load flannel median)"
}

# pstat KIND p50|p99: over the NetworkPolicy change samples of that kind.
pstat() {
  awk -v k="$1" '$1 == k {print $2}' "$out/policy-samples.txt" | quantile "$2"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

policy_table() {
  local t_off t_0 t_n c_off c_0 c_n
  t_off=$(stat tcp policy-disabled median) t_0=$(stat tcp policy-enabled-0 median) t_n=$(stat tcp "policy-$policies_wanted" median)
  c_off=$(stat conn policy-disabled median) c_0=$(stat conn policy-enabled-0 median) c_n=$(stat conn "policy-$policies_wanted" median)
  echo "| pod -> pod across workers, median of the runs | policy Disabled | Enabled, no policy | Enabled, $policies_wanted policies | $policies_wanted policies / none | $policies_wanted policies / Disabled |"
  echo "|---|---:|---:|---:|---:|---:|"
  echo "| TCP (Mbit/s, one connection, ${iperf_seconds} s) | $(num "$t_off") | $(num "$t_0") | $(num "$t_n") | $(ratio "$t_n" "$t_0") | $(ratio "$t_n" "$t_off") |"
  local k_off k_0 k_n
  k_off=$(ctstat policy-disabled p50) k_0=$(ctstat policy-enabled-0 p50) k_n=$(ctstat "policy-$policies_wanted" p50)
  echo "| new connections per second ($connects a run, wall clock) | $c_off | $c_0 | $c_n | $(ratio "$c_n" "$c_0") | $(ratio "$c_n" "$c_off") |"
  echo "| connect time, every connection: p50 (ms) | $k_off | $k_0 | $k_n | $(ratio "$k_0" "$k_n") | $(ratio "$k_off" "$k_n") |"
  echo "| connect time, every connection: p99 (ms) | $(ctstat policy-disabled p99) | $(ctstat policy-enabled-0 p99) | $(ctstat "policy-$policies_wanted" p99) | | |"
  echo
  echo "| NetworkPolicy change, $policies_wanted policies in the cluster, $policy_rounds rounds | p50 (ms) | p99 (ms) |"
  echo "|---|---:|---:|"
  echo "| created -> enforced on both workers (first refused connection) | $(ms "$(pstat enforce p50)") | $(ms "$(pstat enforce p99)") |"
  echo "| deleted -> passing again on both workers (first connection through) | $(ms "$(pstat release p50)") | $(ms "$(pstat release p99)") |"
}

machine="$(nproc) cores, $(awk '/^model name/ {sub(/^[^:]*: /, ""); print; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r), $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release)"
main_ran=false
if has pods && has tcp; then main_ran=true; fi
policy_ran=false
if has policy && $with_sinew; then policy_ran=true; fi
echo
echo "machine: $machine"
if $main_ran; then
  echo
  echo "kind: sinew beside Flannel $flannel_version ($pods_wanted pods, $rounds rounds; samples in $out/samples.txt)"
  echo
  table | tee "$out/table.md"
fi
if $policy_ran; then
  echo
  echo "kind: sinew NetworkPolicy (samples in $out/samples.txt and $out/policy-samples.txt)"
  echo
  policy_table | tee "$out/policy-table.md"
fi

# Replaces the part of docs/benchmarks.md between the markers of $1 (a make target) with the
# file $3, or appends it under the heading $2.
write_section() { # target, heading, file
  local docs=$repo/docs/benchmarks.md begin end
  # shellcheck disable=SC2016 # backquotes are Markdown here
  begin="<!-- begin: written by \`make $1\` (e2e/kind/bench.sh --write-docs); notes after the end marker are kept -->"
  end="<!-- end: written by \`make $1\` -->"
  {
    echo "$begin"
    cat "$3"
    echo "$end"
  } >"$3.marked"
  if grep -qF "$begin" "$docs"; then
    awk -v b="$begin" -v e="$end" -v f="$3.marked" '
      $0 == b {while ((getline l < f) > 0) print l; skip = 1; next}
      skip && $0 == e {skip = 0; next}
      !skip {print}' "$docs" >"$docs.tmp"
  else
    { cat "$docs"; echo; echo "## $2"; echo; cat "$3.marked"; } >"$docs.tmp"
  fi
  mv "$docs.tmp" "$docs"
  log "wrote the section \"$2\" of $docs"
}

run_line() {
  echo "Run on $(date -u +%Y-%m-%d), commit $(git -C "$repo" rev-parse --short HEAD), kind v0.33.0 nodes with Kubernetes v1.37.2 built"
  echo "offline (e2e/kind/README.md); machine: $machine."
}

if $write_docs && $main_ran; then
  [[ -z $only ]] || die "--write-docs needs both sides (SINEW_BENCH_ONLY is set)"
  {
    echo "Command (root): \`make bench-kind\`, i.e. \`e2e/kind/bench.sh --write-docs\`"
    echo "(\`SINEW_BENCH_PODS\`, \`SINEW_BENCH_ROUNDS\`, \`SINEW_BENCH_IPERF_SECONDS\`, \`SINEW_BENCH_IPERF_RUNS\`)."
    echo
    run_line
    echo "Both clusters are up at once and the rounds alternate between them; they share those"
    echo "cores with each other, the measuring client and whatever else the machine runs (see the"
    echo "load row)."
    echo
    table
    echo
  } >"$out/section.md"
  write_section bench-kind "Real nodes: kind, sinew beside Flannel" "$out/section.md"
fi
if $write_docs && $policy_ran; then
  {
    echo "Command (root): \`make bench-kind-policy\`, i.e. \`SINEW_BENCH_ONLY=sinew SINEW_BENCH_PARTS=policy e2e/kind/bench.sh --write-docs\`"
    echo "(also part of \`make bench-kind\`; \`SINEW_BENCH_POLICIES\`, \`SINEW_BENCH_POLICY_ROUNDS\`, \`SINEW_BENCH_CONNECTS\`)."
    echo
    run_line
    echo "The pool's default mode (Auto: both workers on one subnet, so routed). One cluster: policy"
    echo "Disabled and Enabled alternate ($iperf_runs runs each), then $iperf_runs runs with the policies in, then"
    echo "$iperf_runs more without (the \"no policy\" column is the median of its ${iperf_runs}+${iperf_runs} runs). Targets (issue #22): with $policies_wanted policies, at least 0.95 of the"
    echo "no-policy TCP figure and 0.90 of its connection rate; created -> enforced p99 under 1 s."
    echo "The connect-time ratios are inverted (none / with policies), so that like the others a"
    echo "figure under 1 means slower with the policies. A prober connects every 20 ms with a 0.1 s"
    echo "timeout, so \"enforced\" is resolved to about"
    echo "20 ms and \"passing again\" to about 120 ms."
    echo
    policy_table
    echo
  } >"$out/policy-section.md"
  write_section bench-kind-policy "Real nodes: NetworkPolicy on kind" "$out/policy-section.md"
fi
