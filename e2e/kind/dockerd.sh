#!/usr/bin/env bash
# A Docker engine owned by the kind scripts, in its own network namespace, so that neither
# dockerd nor kind touch the host's links, routes or firewall, and nothing it runs has a route
# off the machine.
#
#   e2e/kind/dockerd.sh start   start it (no-op if it answers), print `export DOCKER_HOST=...`
#   e2e/kind/dockerd.sh stop    stop it, unmount what it left, delete the namespace
#   e2e/kind/dockerd.sh env     print `export DOCKER_HOST=...` (and the netns) without starting
#
# Clients (docker, kind, kubectl, helm) reach the engine through DOCKER_HOST; whatever must reach
# the node containers' addresses (kubectl, helm, curl) runs under `nsenter --net=$SINEW_KIND_NETNS`.
# Env: SINEW_KIND_NETNS_NAME (sinew-kind), SINEW_CACHE (~/.cache/sinew).
set -euo pipefail

# fd 9 is the kind scripts' lock (run.sh, build.sh): dockerd outlives them and must not hold it.
exec 9>&-

name=${SINEW_KIND_NETNS_NAME:-sinew-kind}
cache=${SINEW_CACHE:-$HOME/.cache/sinew}/kind
netns=/run/netns/$name
run=/run/$name
sock=$run/docker.sock
data=$cache/docker
log() { echo "[dockerd] $*" >&2; }

print_env() {
  echo "export DOCKER_HOST=unix://$sock SINEW_KIND_NETNS=$netns"
}

answers() { DOCKER_HOST=unix://$sock docker version >/dev/null 2>&1; }

# This machine's capability bounding set may lack CAP_SYS_RESOURCE (a VM whose PID 1 is not a
# normal init). Docker asks for every capability for --privileged (kind's nodes), and runc then
# fails with "unable to apply caps". A wrapper around runc drops that one capability from what
# Docker asks for. A machine whose bounding set has it gets plain runc.
needs_runc_wrapper() {
  local bnd
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  # CAP_SYS_RESOURCE is capability 24.
  (((16#$bnd >> 24) & 1)) && return 1
  return 0
}

write_runc_wrapper() {
  local wrapper=$1
  cat >"$wrapper.tmp" <<'EOF'
#!/usr/bin/env bash
# Written by e2e/kind/dockerd.sh: runc, minus CAP_SYS_RESOURCE (absent from this machine's
# capability bounding set) in what dockerd asks for, so `docker run --privileged` works.
set -euo pipefail
drop() { # JSON file whose capability lists (a bundle's config.json or an exec process) to filter
  local f=$1 key=$2
  [[ -f $f ]] || return 0
  jq "($key // {}) |= with_entries(.value |= map(select(. != \"CAP_SYS_RESOURCE\")))" "$f" >"$f.sinew-tmp"
  mv "$f.sinew-tmp" "$f"
}
args=("$@")
cmd="" bundle="" process=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    create | run | exec) [[ -z $cmd ]] && cmd=${args[i]} ;;
    --bundle | -b) bundle=${args[i + 1]:-} ;;
    --bundle=*) bundle=${args[i]#--bundle=} ;;
    --process | -p) process=${args[i + 1]:-} ;;
    --process=*) process=${args[i]#--process=} ;;
  esac
done
case $cmd in
  create | run) drop "${bundle:-.}/config.json" .process.capabilities ;;
  exec) [[ -n $process ]] && drop "$process" .capabilities ;;
esac
exec /usr/sbin/runc "$@"
EOF
  chmod 0755 "$wrapper.tmp"
  mv "$wrapper.tmp" "$wrapper"
}

start() {
  if answers; then
    print_env
    return
  fi
  command -v dockerd >/dev/null || { log "dockerd is missing (apt-get install docker.io)"; exit 1; }
  mkdir -p "$run" "$data"
  if [[ ! -e $netns ]]; then
    ip netns add "$name"
  fi
  # Loopback only: no route leaves this namespace. Docker adds its bridges (and their NAT) here.
  ip -n "$name" link set lo up
  local runtime=()
  if needs_runc_wrapper; then
    write_runc_wrapper "$run/runc-wrapper"
    runtime=(--add-runtime "sinew-runc=$run/runc-wrapper" --default-runtime sinew-runc)
    log "the capability bounding set lacks CAP_SYS_RESOURCE: runc is wrapped ($run/runc-wrapper)"
  fi
  # nsenter --net, not `ip netns exec`: the latter remounts /sys, which hides the cgroup mounts
  # dockerd needs. Its own containerd lives under $run as well.
  log "starting dockerd in netns $name (data $data, log $run/dockerd.log)"
  nsenter --net="$netns" setsid dockerd \
    --host "unix://$sock" \
    --data-root "$data" \
    --exec-root "$run/exec" \
    --pidfile "$run/dockerd.pid" \
    "${runtime[@]}" \
    >"$run/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do
    answers && { print_env; return; }
    sleep 1
  done
  log "dockerd did not answer within 60s; its log:"
  tail -30 "$run/dockerd.log" >&2
  exit 1
}

stop() {
  if [[ -f $run/dockerd.pid ]]; then
    local pid
    pid=$(cat "$run/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd ($pid)"
      kill "$pid"
      for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
      done
      kill -0 "$pid" 2>/dev/null && { log "dockerd ($pid) still runs after 60s"; exit 1; }
    fi
    rm -f "$run/dockerd.pid"
  fi
  # Whatever dockerd left mounted under its directories (it unmounts on a clean stop).
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v a="$data" -v b="$run" '$2 ~ "^"a || $2 ~ "^"b {print $2}' /proc/self/mounts | sort -r)
  if [[ -e $netns ]]; then
    ip netns delete "$name"
  fi
  log "stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  *) sed -n '2,12p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
