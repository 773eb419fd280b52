-- Runs health.lua (next to this file) over every fixture of a directory and compares the
-- result with the fixture's "argocd" expectation: the same status, and a message containing
-- "message_contains". One line per fixture; exits 1 on any mismatch.
--
-- usage: lua5.4 gitops/argocd/run_tests.lua gitops/testdata
-- needs: lua5.4 and lua-cjson (Debian: apt-get install lua5.4 lua-cjson)
--
-- health.lua is written for Argo CD's Lua 5.1 (gopher-lua); it runs unchanged on 5.4 because
-- it uses only what both have. It is loaded as a chunk with its own environment whose `obj`
-- is the fixture's object, as Argo CD sets it, and which, like Argo CD's, has no string or
-- math library (a script using them fails here as it would in Argo CD).

local cjson = require("cjson")

local dir = arg[1]
if dir == nil then
  io.stderr:write("usage: lua5.4 run_tests.lua <fixture directory>\n")
  os.exit(2)
end

local here = (arg[0]:match("^(.*)/[^/]*$")) or "."
local script = here .. "/health.lua"

-- Shapes decoded JSON the way Argo CD hands it to the script: null becomes nil (cjson gives
-- cjson.null), and whole numbers print without a fraction (cjson gives 5.0 on Lua 5.4; gopher-lua
-- prints 5).
local function argo_value(v)
  if v == cjson.null then
    return nil
  end
  if math.type(v) == "float" and math.tointeger(v) then
    return math.tointeger(v)
  end
  if type(v) == "table" then
    for k, x in pairs(v) do
      v[k] = argo_value(x)
    end
  end
  return v
end

local function read(path)
  local f, err = io.open(path, "r")
  if not f then
    return nil, err
  end
  local text = f:read("a")
  f:close()
  return text
end

local function fixtures(d)
  local names = {}
  local p = io.popen('ls -1 "' .. d .. '"')
  for name in p:lines() do
    if name:match("%.json$") then
      names[#names + 1] = name
    end
  end
  p:close()
  table.sort(names)
  return names
end

local function health(object)
  local env = {
    obj = object,
    type = type, tostring = tostring, tonumber = tonumber, pairs = pairs, ipairs = ipairs,
    next = next, select = select, error = error, pcall = pcall, unpack = table.unpack,
    setmetatable = setmetatable, getmetatable = getmetatable, rawget = rawget, rawset = rawset,
    table = table,
  }
  local chunk, err = loadfile(script, "t", env)
  if not chunk then
    error("loading " .. script .. ": " .. err)
  end
  local ok, hs = pcall(chunk)
  if not ok then
    error("health.lua failed: " .. tostring(hs))
  end
  return hs
end

local failures, total = 0, 0
for _, name in ipairs(fixtures(dir)) do
  total = total + 1
  local path = dir .. "/" .. name
  local line
  local text, err = read(path)
  local ok, doc = false, err
  if text then
    ok, doc = pcall(cjson.decode, text)
  end
  if not ok then
    line = "FAIL " .. name .. ": unreadable fixture: " .. tostring(doc)
  else
    doc = argo_value(doc)
    local want = doc.argocd or {}
    local good, hs = pcall(health, doc.object)
    if not good then
      line = "FAIL " .. name .. ": " .. tostring(hs)
    elseif type(hs) ~= "table" then
      line = "FAIL " .. name .. ": health.lua returned " .. type(hs)
    else
      local problems = {}
      if hs.status ~= want.status then
        problems[#problems + 1] = "status " .. tostring(hs.status) .. ", want " .. tostring(want.status)
      end
      local msg = hs.message or ""
      if want.message_contains and not msg:find(want.message_contains, 1, true) then
        problems[#problems + 1] = "message lacks " .. string.format("%q", want.message_contains)
      end
      if #problems == 0 then
        line = "ok   " .. name .. "\t" .. hs.status .. "\t" .. msg
      else
        line = "FAIL " .. name .. ": " .. table.concat(problems, "; ") .. " (message: " .. msg .. ")"
      end
    end
  end
  if line:sub(1, 4) == "FAIL" then
    failures = failures + 1
  end
  print(line)
end

if total == 0 then
  print("no fixtures in " .. dir)
  os.exit(1)
end
print(string.format("%d fixtures, %d failed", total, failures))
if failures > 0 then
  os.exit(1)
end
