-- runaway.lua: an echo service with handlers that never return, for the
-- --handler-timeout tests (tests/integration/test_safety.py).
--
-- "spin\n": a compiled `while true do end`; "count\n": a loop that counts;
-- "swallow\n": a loop inside the script's own pcall, run again and again;
-- "grow\n": allocates without bound; "block\n": waits forever in a C
-- function (poll), where no check can stop it; "stats\n": this worker's
-- counters.  Anything else is echoed.
local ffi = require "ffi"
local ringline = require "ringline"

pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")

local function spin() while true do end end

local function count()
  local x = 0
  for i = 1, 1e15 do x = x + i end
  return x
end

local function swallow()
  while true do pcall(spin) end
end

local function grow()
  local t = {}
  local i = 0
  while true do
    i = i + 1
    t[i] = string.rep("x", 1000) .. i
  end
end

local function block() ffi.C.poll(nil, 0, -1) end

local commands = { ["spin\n"] = spin, ["count\n"] = count,
                   ["swallow\n"] = swallow, ["grow\n"] = grow,
                   ["block\n"] = block }

return {
  listen = "tcp://127.0.0.1:7000",

  init = function()
    if os.getenv("RUNAWAY_TIMER") then
      ringline.every(50, function() spin() end)
    end
    if os.getenv("RUNAWAY_INIT") then spin() end
    if os.getenv("RUNAWAY_INIT_GROW") then grow() end
  end,

  on_data = function(conn, data)
    local s = data:tostring()
    local f = commands[s]
    if f then f() return #data end
    if s == "stats\n" then
      local st = ringline.stats()
      conn:send(("timeouts=%d errors=%d memory=%d memory_errors=%d\n"):format(
        st.handler_timeouts, st.handler_errors, st.lua_memory,
        st.lua_memory_errors))
      return #data
    end
    conn:send(data)
    return #data
  end,
}
