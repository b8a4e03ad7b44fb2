-- Test script: outbound connects by host name, driven by a line protocol
-- (tests/integration/test_resolve.py).  Run with --workers 1.
--   connect ADDR [TIMEOUT_MS] -> "started N" at once (N names the outbound
--                                connection), or "error TEXT"; then, as they
--                                happen: "open N", "data N TEXT",
--                                "close N REASON"
--   send N TEXT               -> TEXT .. "\n" queued on connection N: "sent N"
--   close N, abort N          -> conn:close() / conn:abort(): "closing N"
--   ping TEXT                 -> "pong TEXT" (answered in the same handler)
-- Every line goes back to the client that started the connection.  A
-- reload keeps the outbound connections (reload(old) takes them over).
local ringline = require "ringline"

local S = { outbound = {}, seq = 0 }   -- outbound: N -> conn

local function say(client, line)
  if not client.closed then client:send(line .. "\n") end
end

local function start(client, addr, timeout)
  S.seq = S.seq + 1
  local n = S.seq
  local c, err = ringline.connect(addr, {
    on_open = function() say(client, "open " .. n) end,
    on_data = function(_, d)
      local consumed = 0
      for line, stop in tostring(d):gmatch("([^\n]*)\n()") do
        say(client, "data " .. n .. " " .. line)
        consumed = stop - 1
      end
      return consumed
    end,
    on_close = function(_, reason)
      S.outbound[n] = nil
      say(client, "close " .. n .. " " .. tostring(reason))
    end,
  }, timeout and { timeout = timeout } or nil)
  if not c then return say(client, "error " .. tostring(err)) end
  S.outbound[n] = c
  say(client, "started " .. n)
end

local function handle(client, line)
  local cmd, rest = line:match("^(%S+)%s*(.*)$")
  if cmd == "connect" then
    local addr, timeout = rest:match("^(%S+)%s*(%d*)$")
    start(client, addr, tonumber(timeout))
  elseif cmd == "send" then
    local n, text = rest:match("^(%d+) (.*)$")
    local c = S.outbound[tonumber(n)]
    if c then c:send(text .. "\n") end
    say(client, "sent " .. n)
  elseif cmd == "close" or cmd == "abort" then
    local c = S.outbound[tonumber(rest)]
    if c then c[cmd](c) end
    say(client, "closing " .. rest)
  elseif cmd == "ping" then
    say(client, "pong " .. rest)
  else
    say(client, "unknown " .. line)
  end
end

return {
  state = S,
  reload = function(old) S = old.state end,

  on_data = function(client, data)
    local s = tostring(data)
    local consumed = 0
    for line, stop in s:gmatch("([^\n]*)\n()") do
      handle(client, line)
      consumed = stop - 1
    end
    return consumed
  end,
}
