-- ringline.service: load a service script and check the table it returns.
local guard = require "ringline.guard"

local M = {}

local HANDLERS = { "init", "on_open", "on_data", "on_close", "on_eof",
  "on_drain", "reload", "on_connect" }

local function fail(path, fmt, ...)
  error(("script %s: " .. fmt):format(path, ...), 0)
end

function M.validate(svc, path)
  if type(svc) ~= "table" then
    fail(path, "must return a service table, it returned %s", type(svc))
  end
  for _, name in ipairs(HANDLERS) do
    local f = svc[name]
    if f ~= nil and type(f) ~= "function" then
      fail(path, "%s must be a function, it is a %s", name, type(f))
    end
  end
  if svc.on_data == nil and svc.on_connect == nil then
    fail(path, "the service table has no on_data function (nor on_connect)")
  end
  if svc.on_data ~= nil and svc.on_connect ~= nil then
    fail(path, "on_data and on_connect are two ways to read: give one")
  end
  local l = svc.listen
  if l ~= nil and type(l) ~= "string" then
    if type(l) ~= "table" then
      fail(path, "listen must be a string or a list of strings")
    end
    for i, a in ipairs(l) do
      if type(a) ~= "string" then
        fail(path, "listen[%d] must be a string", i)
      end
    end
  end
  local m = svc.max_unconsumed
  if m ~= nil and (type(m) ~= "number" or m < 1 or m % 1 ~= 0) then
    fail(path, "max_unconsumed must be a positive whole number of bytes")
  end
  local pf = svc.prefetch
  if pf ~= nil and (type(pf) ~= "string" or #pf == 0) then
    fail(path, "prefetch must be a non-empty string (the bytes before a key)")
  end
  return svc
end

-- Compile and run the script's top level; return its service table.
-- Errors name the script and, where Lua knows it, the line.
function M.load(path)
  -- Compiled with runaway checks (ringline.guard), in every state.
  local chunk, err = guard.loadfile(path)
  if not chunk then error("script " .. err, 0) end
  local ok, svc = pcall(chunk)
  if not ok then
    -- One log line: require's "error loading module" spans two.
    error(("script %s: %s"):format(path, (tostring(svc):gsub("\n%s*", " "))), 0)
  end
  return M.validate(svc, path)
end

return M
