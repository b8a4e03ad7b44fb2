-- Hot-reload load test service (tests/integration/test_reload.py,
-- test_reload_under_load).  The test copies this directory to a temp dir and
-- bumps the version there, alternately
--   * by rewriting the VERSION line below (a --watch save), and
--   * by writing "version=N" to version.txt next to this file, then SIGHUP
--     (a .txt change must not trigger --watch).
-- The higher of the two wins.  The response format depends on the version.
--
--   "REQ <conn> <seq>"  -> one of (n = requests so far on this connection,
--                          counted in conn.state):
--                             version % 3 == 0:  "v<V> #<n> REQ <conn> <seq>"
--                             version % 3 == 1:  "RESP|v<V>|<n>|REQ <conn> <seq>"
--                             version % 3 == 2:  "[<V>] REQ <conn> <seq> (#<n>)"
--   "STATS"             -> "STATS w=<worker> reloads=<n> failed=<n>"
local ringline = require "ringline"

local VERSION = 1 -- @VERSION

local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local f = io.open(dir .. "/version.txt", "r")
if f then
  local n = tonumber((f:read("*a") or ""):match("version=(%d+)"))
  f:close()
  if n and n > VERSION then VERSION = n end
end

local STYLE = VERSION % 3
local fmt = string.format

local function answer(conn, line)
  if line == "STATS" then
    local s = ringline.stats()
    conn:send(fmt("STATS w=%d reloads=%d failed=%d\n", ringline.worker_id(),
                  s.reloads, s.reloads_failed))
    return
  end
  local st = conn.state
  st.n = st.n + 1
  if STYLE == 0 then
    conn:send(fmt("v%d #%d %s\n", VERSION, st.n, line))
  elseif STYLE == 1 then
    conn:send(fmt("RESP|v%d|%d|%s\n", VERSION, st.n, line))
  else
    conn:send(fmt("[%d] %s (#%d)\n", VERSION, line, st.n))
  end
end

return {
  listen = "tcp://127.0.0.1:7420",

  on_open = function(conn)
    conn.state.n = 0
  end,

  on_data = function(conn, data)
    local total, pos = #data, 1
    while pos <= total do
      local nl = data:find("\n", pos)
      if not nl then break end
      answer(conn, data:tostring(pos, nl - 1))
      pos = nl + 1
    end
    return pos - 1
  end,
}
