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
#
# usage: e2e/kind/bench.sh [--write-docs]
# Env: SINEW_BENCH_PODS (60), SINEW_BENCH_ROUNDS (3), SINEW_BENCH_IPERF_SECONDS (10),
#      SINEW_BENCH_IPERF_RUNS (5), SINEW_BENCH_ONLY (sinew|flannel: one side only, no docs), SINEW_CACHE (~/.cache/sinew), CARGO_TARGET_DIR (sinew's build), SINEW_KIND_KEEP=1 (keep
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
log "flannel image $flannel_image (flanneld from $flannel_bin, on $SINEW_KIND_SLIM_IMAGE)"
ctx=$(mktemp -d "$out/flannel-image.XXXXXX")
cp "$flannel_bin/flanneld" "$ctx/"
printf '%s\n' "FROM $SINEW_KIND_SLIM_IMAGE" "COPY flanneld /usr/local/bin/flanneld" \
  'ENTRYPOINT ["/usr/local/bin/flanneld"]' >"$ctx/Dockerfile"
docker build -q -t "$flannel_image" "$ctx" >/dev/null 2>"$out/flannel-image.log" || { cat "$out/flannel-image.log" >&2; die "docker build $flannel_image"; }
rm -rf "$ctx"

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

for round in $(seq "$rounds"); do
  for side in "${sides[@]}"; do
    scale_round "$round"
  done
done
for _ in $(seq "$iperf_runs"); do
  for side in "${sides[@]}"; do
    iperf_run "$side"
  done
done
if [[ " ${sides[*]} " == *" sinew "* ]]; then
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

# stat KIND SIDE p50|p99|median: over the samples of that kind and side.
stat() {
  local kind=$1 side=$2 what=$3 col=4
  [[ $kind == tcp ]] && col=3
  awk -v k="$kind" -v s="$side" -v c="$col" '$1 == k && $2 == s {print $c}' "$out/samples.txt" | sort -g | awk -v w="$what" '
    {v[NR] = $1}
    END {
      if (NR == 0) { print "-"; exit }
      if (w == "p50" || w == "median") i = int((NR + 1) / 2)
      else { i = int(NR * 0.99 + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR }
      print v[i]
    }'
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

machine="$(nproc) cores, $(awk '/^model name/ {sub(/^[^:]*: /, ""); print; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r), $(sed -n 's/^PRETTY_NAME="\(.*\)"/\1/p' /etc/os-release)"
echo
echo "kind: sinew beside Flannel $flannel_version ($pods_wanted pods, $rounds rounds; samples in $out/samples.txt)"
echo "machine: $machine"
echo
table | tee "$out/table.md"

if $write_docs; then
  [[ -z $only ]] || die "--write-docs needs both sides (SINEW_BENCH_ONLY is set)"
  docs=$repo/docs/benchmarks.md
  # shellcheck disable=SC2016 # backquotes are Markdown here
  begin='<!-- begin: written by `make bench-kind` (e2e/kind/bench.sh --write-docs); notes after the end marker are kept -->'
  # shellcheck disable=SC2016
  end='<!-- end: written by `make bench-kind` -->'
  section=$out/section.md
  {
    echo "$begin"
    echo "Command (root): \`make bench-kind\`, i.e. \`e2e/kind/bench.sh --write-docs\`"
    echo "(\`SINEW_BENCH_PODS\`, \`SINEW_BENCH_ROUNDS\`, \`SINEW_BENCH_IPERF_SECONDS\`, \`SINEW_BENCH_IPERF_RUNS\`)."
    echo
    echo "Run on $(date -u +%Y-%m-%d), commit $(git -C "$repo" rev-parse --short HEAD), kind v0.33.0 nodes with Kubernetes v1.37.2 built"
    echo "offline (e2e/kind/README.md); machine: $machine. Both clusters are up at once and the"
    echo "rounds alternate between them; they share those cores with each other, the measuring client"
    echo "and whatever else the machine runs (see the load row)."
    echo
    table
    echo
    echo "$end"
  } >"$section"
  if grep -qF "$begin" "$docs"; then
    awk -v b="$begin" -v e="$end" -v f="$section" '
      $0 == b {while ((getline l < f) > 0) print l; skip = 1; next}
      skip && $0 == e {skip = 0; next}
      !skip {print}' "$docs" >"$docs.tmp"
  else
    { cat "$docs"; echo; echo "## Real nodes: kind, sinew beside Flannel"; echo; cat "$section"; } >"$docs.tmp"
  fi
  mv "$docs.tmp" "$docs"
  log "wrote the section of $docs"
fi
