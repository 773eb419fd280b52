#!/usr/bin/env bash
# Checks the GitOps health rules against the fixtures in gitops/testdata:
#   1. the Argo CD health script (gitops/argocd/health.lua), run by gitops/argocd/run_tests.lua
#      with lua5.4 and lua-cjson, must give each fixture's "argocd" status and message;
#   2. upstream kstatus (sigs.k8s.io/cli-utils, what Flux and kpt use), through the kstatus
#      tool built by e2e/tools/build.sh, must give each fixture's "kstatus" status;
#   3. both copies of health.lua in docs/gitops/argocd-cm-health.yaml must equal the script.
#
# usage: gitops/check.sh <tools bin directory>     e.g. gitops/check.sh "$(e2e/tools/build.sh)"
# needs: lua5.4, lua-cjson (apt-get install lua5.4 lua-cjson), and jq or python3.
# Exits 1 on any mismatch, 2 on a usage or setup error.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
fixtures=${SINEW_GITOPS_FIXTURES:-$here/testdata}

if (($# != 1)); then
  echo "usage: $0 <tools bin directory (printed by e2e/tools/build.sh)>" >&2
  exit 2
fi
kstatus=$1/kstatus
if [[ ! -x $kstatus ]]; then
  echo "$kstatus not found: build it with e2e/tools/build.sh" >&2
  exit 2
fi
if ! command -v lua5.4 >/dev/null 2>&1; then
  echo "lua5.4 not found (apt-get install lua5.4 lua-cjson)" >&2
  exit 2
fi

shopt -s nullglob
files=("$fixtures"/*.json)
if ((${#files[@]} == 0)); then
  echo "no fixtures in $fixtures" >&2
  exit 2
fi

# The expected kstatus of a fixture.
expected_kstatus() {
  if command -v jq >/dev/null 2>&1; then
    jq -r '.kstatus // ""' "$1"
  else
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("kstatus", ""))' "$1"
  fi
}

failed=0

echo "== Argo CD health script (lua5.4 $here/argocd/run_tests.lua)"
if ! lua5.4 "$here/argocd/run_tests.lua" "$fixtures"; then
  failed=1
fi

echo "== kstatus ($kstatus)"
results=$("$kstatus" "${files[@]}") || {
  echo "kstatus failed" >&2
  exit 1
}
mismatches=0
while IFS=$'\t' read -r file got message; do
  want=$(expected_kstatus "$file")
  name=$(basename "$file")
  if [[ $got == "$want" ]]; then
    printf 'ok   %s\t%s\t%s\n' "$name" "$got" "$message"
  else
    printf 'FAIL %s: kstatus %s, want %s (message: %s)\n' "$name" "$got" "$want" "$message"
    mismatches=$((mismatches + 1))
  fi
done <<<"$results"
echo "${#files[@]} fixtures, $mismatches kstatus mismatches"
((mismatches == 0)) || failed=1

echo "== copies of health.lua in docs/gitops/argocd-cm-health.yaml"
cm=$root/docs/gitops/argocd-cm-health.yaml
for kind in ClusterNetwork IPPool; do
  key="resource.customizations.health.sinew.dev_$kind:"
  # The block scalar under the key, its 4-space indentation removed.
  if awk -v key="$key" '
      $1 == key { on = 1; next }
      on && /^    / { sub(/^    /, ""); print; next }
      on && /^$/ { print; next }
      on { exit }
    ' "$cm" | diff -q - "$here/argocd/health.lua" >/dev/null; then
    echo "ok   $key"
  else
    echo "FAIL $key differs from gitops/argocd/health.lua (or is missing)"
    failed=1
  fi
done

exit "$failed"
