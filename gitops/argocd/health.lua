-- Argo CD health check of the sinew.dev/v1alpha1 custom resources ClusterNetwork and IPPool.
-- One script for both kinds: register it (docs/gitops/argocd-cm-health.yaml) as
--   resource.customizations.health.sinew.dev_ClusterNetwork
--   resource.customizations.health.sinew.dev_IPPool
-- Argo CD runs it with gopher-lua (Lua 5.1) and the resource as the global `obj`; it returns
-- `hs` with `status` (Healthy | Progressing | Degraded | Suspended) and `message`.
-- Argo CD opens only the base, table, package and a reduced os library (no string, no math),
-- so this script uses base functions only (type, tostring, ipairs, `..`), and nothing newer
-- than Lua 5.1 (no goto, no //, no utf8).
--
-- The operator (operator/src/network.rs, operator/src/pool/status.rs) writes kstatus-style
-- conditions: Reconciling (rolling out), Stalled (cannot make progress), Ready, and on an
-- IPPool also Exhausted (from 90 % use: reason NearlyExhausted, then Exhausted when full);
-- status.observedGeneration and each condition's observedGeneration name the spec
-- generation they describe. The rules, first match wins:
--
--   1. No status, or status.observedGeneration < metadata.generation
--        -> Progressing "waiting for the operator to observe generation N ...".
--      A condition whose own observedGeneration is older than metadata.generation is stale
--      and treated as absent.
--   2. Stalled=True                                    -> Degraded "<reason>: <message>".
--   3. Ready=False with a conflict reason (OverlappingPools, OverlapsServiceCIDR,
--      OverlapsNodeAddresses, RoutedAcrossSubnets, ForeignConflistWins), even without a
--      Stalled condition                              -> Degraded.
--   4. IPPool: Exhausted=True with reason Exhausted (every address handed out) and
--      Ready=False                                     -> Degraded: new pods get no address
--      and the pool is not serving normally.
--   5. Reconciling=True                                -> Progressing "<reason>: <message>".
--   6. Ready=True                                      -> Healthy with Ready's message. An
--      IPPool whose Exhausted is True stays Healthy (it still serves; using up addresses is
--      a capacity matter, not a failed reconcile) and the message carries a warning about
--      (near) exhaustion. A disabled IPPool (spec.disabled, draining on purpose) stays
--      Healthy too, with a note; Suspended is never returned: nothing here is paused.
--   7. Ready=False or Unknown (NodesNotReady, NoNodes, ModeRollingOut, Draining, ...)
--                                                      -> Progressing "<reason>: <message>".
--   8. Otherwise (conditions without Ready)            -> Progressing.
--
-- Compared with kstatus (sigs.k8s.io/cli-utils, what Flux uses; checked by gitops/check.sh
-- against gitops/testdata), Failed~Degraded, InProgress~Progressing, Current~Healthy, with
-- these deliberate differences:
--   * No status yet: kstatus says Current (it cannot tell a resource that never reports
--     status from one not yet seen); this script says Progressing until the operator
--     reports, so an Application is not Healthy before sinew has looked at its resources.
--   * Stalled=True together with Reconciling=True: kstatus takes whichever comes first in
--     status.conditions, and the operator lists Reconciling before Stalled, so kstatus says
--     InProgress; this script says Degraded (a conflict is not fixed by waiting).
--   * Rule 3 (Ready=False with a conflict reason, no Stalled): kstatus InProgress.
--   * Rule 4 (exhausted and not Ready): kstatus InProgress.
--   * Stale per-condition observedGeneration: kstatus ignores it; here it means Progressing.
--   * Deletion: kstatus says Terminating; Argo CD itself reports "Pending deletion"
--     (Progressing) before running any script, and this script says Progressing too.

local conflict_reasons = {
  OverlappingPools = true,
  OverlapsServiceCIDR = true,
  OverlapsNodeAddresses = true,
  RoutedAcrossSubnets = true,
  ForeignConflistWins = true,
}

-- A generation as text (gopher-lua prints whole numbers without a fraction).
local function num(n)
  return tostring(n)
end

local function say(c)
  local reason = c.reason
  local message = c.message
  if type(reason) ~= "string" or reason == "" then
    reason = c.type
  end
  if type(message) ~= "string" or message == "" then
    return reason
  end
  return reason .. ": " .. message
end

local hs = {}
local meta = obj.metadata
if type(meta) ~= "table" then
  meta = {}
end
local spec = obj.spec
if type(spec) ~= "table" then
  spec = {}
end
local generation = meta.generation
if type(generation) ~= "number" then
  generation = nil
end
local st = obj.status
if type(st) ~= "table" then
  st = nil
end

local function waiting(detail)
  local m
  if generation ~= nil then
    m = "waiting for the operator to observe generation " .. num(generation)
  else
    m = "waiting for the operator to report status"
  end
  if detail ~= nil then
    m = m .. " (" .. detail .. ")"
  end
  hs.status = "Progressing"
  hs.message = m
  return hs
end

if st == nil then
  return waiting("no status yet")
end
local observed = st.observedGeneration
if type(observed) ~= "number" then
  observed = nil
end
if generation ~= nil and observed ~= nil and observed < generation then
  return waiting("status describes generation " .. num(observed))
end

-- The current (not stale) conditions by type.
local cond = {}
local seen_any = false
if type(st.conditions) == "table" then
  for _, c in ipairs(st.conditions) do
    if type(c) == "table" and type(c.type) == "string" then
      seen_any = true
      local og = c.observedGeneration
      local stale = generation ~= nil and type(og) == "number" and og < generation
      if not stale then
        cond[c.type] = c
      end
    end
  end
end
if observed == nil and cond.Ready == nil and cond.Stalled == nil and cond.Reconciling == nil then
  if seen_any then
    return waiting("its conditions describe an older generation")
  end
  return waiting("no conditions yet")
end

local function is(t, value)
  return cond[t] ~= nil and cond[t].status == value
end

local deleting = meta.deletionTimestamp ~= nil

if is("Stalled", "True") then
  hs.status = "Degraded"
  hs.message = say(cond.Stalled)
  return hs
end

if is("Ready", "False") and conflict_reasons[cond.Ready.reason] then
  hs.status = "Degraded"
  hs.message = say(cond.Ready)
  return hs
end

if obj.kind == "IPPool" and not deleting and is("Exhausted", "True")
    and cond.Exhausted.reason == "Exhausted" and is("Ready", "False") then
  hs.status = "Degraded"
  hs.message = "pool exhausted and not Ready: " .. say(cond.Exhausted) .. "; " .. say(cond.Ready)
  return hs
end

if is("Reconciling", "True") then
  hs.status = "Progressing"
  hs.message = say(cond.Reconciling)
  return hs
end

if is("Ready", "True") and not deleting then
  local m = cond.Ready.message
  if type(m) ~= "string" or m == "" then
    m = "Ready"
  end
  if obj.kind == "IPPool" then
    if is("Exhausted", "True") then
      local what = "nearly exhausted"
      if cond.Exhausted.reason == "Exhausted" then
        what = "exhausted"
      end
      m = m .. "; warning: pool " .. what .. " (" .. say(cond.Exhausted) .. ")"
    end
    if spec.disabled == true then
      m = m .. "; disabled: no new addresses are handed out from this pool"
    end
  end
  hs.status = "Healthy"
  hs.message = m
  return hs
end

if cond.Ready ~= nil then
  hs.status = "Progressing"
  if deleting then
    hs.message = "being deleted: " .. say(cond.Ready)
  else
    hs.message = say(cond.Ready)
  end
  return hs
end

hs.status = "Progressing"
hs.message = "waiting for the Ready condition"
return hs
